"""Simulator → exporter → the customer's real Prometheus → ingress → TSDB, end to end."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import ray

from actors.tenant import TenantConfig
from devstack.simulator import generate_estate, ground_truth
from devstack.simulator.customer import CustomerCluster
from devstack.simulator.spec import to_json
from devstack.simulator.usage import UsageExporters
from k8scost import raylocal
from k8scost import ledger
from k8scost.settings import LedgerSettings, StoreSettings, from_env
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.usage_series import USAGE_FAMILIES

from tests import helpers

pytestmark = pytest.mark.services

NAMESPACE_RATE = "cloudtuner_kubecost_namespace_total_cost"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory):
    """An estate whose history ended days ago: every rate is steady now, so exact to check."""
    estate = generate_estate(11, clusters=2, namespaces_per_cluster=4, pods_per_namespace=3,
                             start=time.time() - 10 * 86400, span_seconds=3600, usage_variation=0.0)
    path = tmp_path_factory.mktemp("estate") / "estate.json"
    path.write_text(to_json(estate))
    return estate, path


@pytest.fixture(scope="module")
def customer(serve_apps: str, accounts, estate, tmp_path_factory: pytest.TempPathFactory):
    """The first cluster of the estate, sending as a fresh account, with a spoofed tenant label."""
    account, credentials = accounts.create()
    cluster = CustomerCluster(
        cluster=estate[0].clusters[0].name, estate_file=estate[1], account_id=account.id,
        password=credentials.password, write_url=helpers.WRITE_URL,
        workdir=tmp_path_factory.mktemp("customer"), spoof_tenant="victim-tenant",
    ).start()
    yield cluster
    cluster.stop()


def namespace_rates(tenant: str, cluster: str) -> dict[str, float]:
    result = helpers.tsdb_query(f'{NAMESPACE_RATE}{{tenant_id="{tenant}",cluster="{cluster}"}}')
    return {r["metric"]["namespace"]: float(r["value"][1]) for r in result}


def test_tsdb_holds_the_simulators_rates_under_the_enforced_tenant(customer: CustomerCluster, estate) -> None:
    estate, _ = estate
    cluster = estate.clusters[0]
    now = time.time()
    expected = {ns.name: ground_truth(estate, now - 3600, now, cluster=cluster.name, namespace=ns.name).total
                for ns in cluster.namespaces}
    got = helpers.wait_for(
        "every namespace rate in the TSDB",
        lambda: (rates := namespace_rates(customer.account_id, cluster.name)).keys() >= expected.keys() and rates,
        timeout=60,
    )
    for namespace, rate in expected.items():
        # The simulator prints costs to 5 decimals, over 55 of 60 minutes.
        assert got[namespace] == pytest.approx(rate, rel=1e-6, abs=2e-5), namespace
    # Pods: one series per running pod, summing to the namespaces.
    pods = helpers.tsdb_query(f'sum by (namespace) (cloudtuner_kubecost_pod_total_cost{{tenant_id="{customer.account_id}"}})')
    for r in pods:
        assert float(r["value"][1]) == pytest.approx(got[r["metric"]["namespace"]], rel=1e-4, abs=1e-4)
    # The spoofed label reached nobody: no series anywhere carries it.
    assert helpers.tsdb_query('{tenant_id="victim-tenant"}') == []
    others = f'cloudtuner_.+|kubecost_.+|{"|".join(USAGE_FAMILIES)}'
    assert helpers.tsdb_query(f'count({{tenant_id="{customer.account_id}", __name__!~"{others}"}})') == []


def test_usage_series_land_under_the_enforced_tenant_with_the_models_values(customer: CustomerCluster, estate) -> None:
    """The simulator's cAdvisor, scraped every 15 s by the customer's Prometheus with the shipped
    relabelling: one working-set series per running container, the model's value, no ``id``."""
    estate, _ = estate
    cluster = estate.clusters[0]
    exporters = UsageExporters(estate, cluster.name)
    now = time.time()
    # The estate's changes ended days ago: every container's memory is constant now.
    expected = {(ns.name, pod.name, c.name): truth.ram_bytes
                for ns in cluster.namespaces for pod in ns.pods for c in pod.containers
                if (truth := exporters.container(ns.name, pod, c, now)) is not None}
    query = f'container_memory_working_set_bytes{{tenant_id="{customer.account_id}"}}'

    def landed() -> dict[tuple[str, str, str], float] | None:
        result = helpers.tsdb_query(query)
        assert not [r["metric"] for r in result if {"id", "image", "name"} & set(r["metric"])]
        got = {(r["metric"]["namespace"], r["metric"]["pod"], r["metric"]["container"]): float(r["value"][1])
               for r in result}
        return got if got.keys() == expected.keys() else None

    assert helpers.wait_for("every container's working set", landed, timeout=60) == expected


def test_wrong_password_lands_nothing(serve_apps: str, accounts, estate, tmp_path: Path) -> None:
    estate, path = estate
    account, _ = accounts.create()
    intruder = CustomerCluster(
        cluster=estate.clusters[1].name, estate_file=path, account_id=account.id, password="not-the-password",
        write_url=helpers.WRITE_URL, workdir=tmp_path,
    ).start()
    try:
        # The customer Prometheus reports its failed sends; wait until it has tried a few times.
        def failed_sends() -> float:
            text = httpx.get(f"{intruder.prometheus_url}/metrics").text
            return sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("prometheus_remote_storage_samples_failed_total"))
        helpers.wait_for("the customer Prometheus to be refused", lambda: failed_sends() >= 10, timeout=60)
        assert helpers.tsdb_query(f'{{cluster="{estate.clusters[1].name}"}}') == []
        assert helpers.tsdb_query(f'{{tenant_id="{account.id}"}}') == []
    finally:
        intruder.stop()


def test_tsdb_outage_loses_no_sample(customer: CustomerCluster) -> None:
    series = f'kubecost_cluster_cpu_cost{{tenant_id="{customer.account_id}"}}'
    helpers.wait_for("the cluster series", lambda: helpers.tsdb_query(series), timeout=60)
    outage_start = time.time()
    helpers.services("stop", "tsdb")
    time.sleep(30)
    helpers.services("start", "tsdb")
    outage_end = time.time()
    # Once the customer's Prometheus has caught up, our TSDB holds every sample it scraped
    # during the outage: count them on both sides over the same window.
    window = f"[{int(outage_end - outage_start) + 2}s]"
    at = outage_end + 1

    def counts() -> tuple[float, float]:
        ours = helpers.tsdb_query(f"count_over_time({series}{window})", at=at)
        theirs = httpx.get(f"{customer.prometheus_url}/api/v1/query",
                           params={"query": f"count_over_time(kubecost_cluster_cpu_cost{window})", "time": at}).json()
        return (float(ours[0]["value"][1]) if ours else 0.0, float(theirs["data"]["result"][0]["value"][1]))

    def delivered() -> tuple[float, float]:
        ours, theirs = counts()
        if ours != theirs:
            raise AssertionError(f"ours {ours:.0f}, theirs {theirs:.0f}")  # what a timeout reports
        return ours, theirs

    time.sleep(2)
    # Bounded by the sender's retries (2 s apart at most), not by this machine's speed: the
    # restarted Receive replays a WAL as large as whatever ran before, on cores other work shares.
    ours, theirs = helpers.wait_for("the backlog to be delivered", delivered, timeout=300)
    assert theirs >= 25  # one sample a second, for the 30 s outage
    assert ours == theirs


def test_live_costs_reach_the_ledger(customer: CustomerCluster, accounts) -> None:
    """The whole live chain: what the customer's Prometheus sent is in today's ledger."""
    helpers.wait_for("a minute of live samples", lambda: float(helpers.tsdb_query(
        f'count_over_time(kubecost_cluster_cpu_cost{{tenant_id="{customer.account_id}"}}[2m])')[0]["value"][1]) >= 30,
        timeout=120, interval=2)
    raylocal.connect(helpers.RAY_ADDRESS, "ingestion-tests")
    try:
        # No lag: the live data is minutes old; the day's rates are read as they are.
        config = TenantConfig(from_env(LedgerSettings, cycle_seconds=3600.0, rate_lag_seconds=0),
                              from_env(StoreSettings), "test-secret")
        account = accounts.get(customer.account_id)
        actor = helpers.HostedTenant(account.id, account.organization_id, config)
        today = ledger.day_start(time.time())
        ray.get(actor.cycle([today]))  # its own first cycle may have written the day already
        costs = asyncio.new_event_loop().run_until_complete(
            ExpenseStore(from_env(StoreSettings)).daily_costs(account.id, today, today + timedelta(days=1), by="k8s_namespace"))
        namespaces = {ns for (ns, _) in costs if ns}
        assert namespaces >= {r["metric"]["namespace"] for r in helpers.tsdb_query(
            f'cloudtuner_kubecost_namespace_total_cost{{tenant_id="{account.id}"}}')}
        assert all(cost > 0 for cost in costs.values())
        ray.kill(actor.host)
    finally:
        ray.shutdown()
