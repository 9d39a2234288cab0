"""The usage families end to end: one list (k8scost/usage_series.py) behind the shipped customer
configuration, the onboarding answer and the ingress; the simulator's exporters relabelled as
that configuration says pass the ingress untouched; labels off the list and tenants over their
series limit are refused and counted.

The last tests run the ingress's Serve class in-process (``func_or_class``, no Ray) on a fresh
MongoDB database, forwarding to the shared TSDB under fresh tenants.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
import yaml

from devstack.simulator import PV, Cluster, Container, Estate, Namespace, Node, Pod, create_app
from devstack.simulator.customer import REMOTE_WRITE_TEMPLATE, prometheus_config, write_relabel
from devstack.simulator.usage import UsageExporters
from devstack.stack import free_port, wait_for
from k8scost.settings import IngressSettings, StoreSettings, from_env
from k8scost.stores.accounts import Account, AccountStore, Credentials
from k8scost.stores.mongo import connect
from k8scost.usage_series import USAGE_FAMILIES, forwarded_labels, write_relabel_configs
from serve_apps.ingress import app as ingress_app
from serve_apps.ingress import metrics as ingress_metrics
from serve_apps.ingress.remote_write import Limits, TenantPolice, WriteRejected, decode, encode
from serve_apps.restapi.onboarding import remote_write_yaml
from tests import helpers
from tests.test_exporter import PROMTOOL
from tests.test_seed_conformance import asgi, remote_write

GIB = 1024**3
HIGH_CARDINALITY = {"id", "image", "name", "uid"}
Series = tuple[dict[str, str], list[tuple[int, float]]]


# --- one list -------------------------------------------------------------------------------


def test_the_shipped_file_and_the_onboarding_block_relabel_as_the_domain_says() -> None:
    [shipped] = yaml.safe_load(REMOTE_WRITE_TEMPLATE.read_text())["remote_write"]
    assert shipped["write_relabel_configs"] == write_relabel_configs()
    account = Account("acct-1", "org-1", "prod", "kubernetes_cnr", 0, 0)
    for password in ("s3cret", None):
        [block] = yaml.safe_load(remote_write_yaml(account, "https://saas.example/storage/api/v2/write", password))["remote_write"]
        assert block["write_relabel_configs"] == write_relabel_configs()
        assert block["queue_config"] == shipped["queue_config"]


def test_the_onboarding_block_passes_promtool(tmp_path: Path) -> None:
    account = Account("acct-1", "org-1", "prod", "kubernetes_cnr", 0, 0)
    config = tmp_path / "prometheus.yml"
    config.write_text(remote_write_yaml(account, "https://saas.example/storage/api/v2/write", "s3cret"))
    result = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_no_high_cardinality_label_is_forwarded_or_allowed() -> None:
    assert not HIGH_CARDINALITY & set(forwarded_labels())
    for family in USAGE_FAMILIES.values():
        assert not HIGH_CARDINALITY & family.allowed_labels
        assert family.allowed_labels <= set(forwarded_labels()) | {"tenant_id"}


# --- the simulator's exporters through the shipped relabelling -------------------------------


def estate(t0: float) -> Estate:
    """Every usage family has a series: web-0 holds a local and an EBS volume, api is annotated."""
    node = Node("n1", 4.0, 16 * GIB, 0.03, 0.004, "i-1", "m5.xlarge")
    web = [Container("app", 1.0, 2 * GIB, 0.5, 1 * GIB, cpu_limit_cores=1.5, ram_limit_bytes=2 * GIB,
                     restarts=[(t0 + 60, "OOMKilled")]),
           Container("istio-proxy", 0.1, 0.125 * GIB, 0.05, 0.1 * GIB)]
    volumes = [PV("local-pv-1", 10 * GIB, 0.0001, "/mnt/disks/ssd0"), PV("pvc-0b1c", 20 * GIB, 0.0001)]
    pods = [Pod("web-0", "n1", "statefulset", "web", t0, None, web, volumes),
            Pod("api-5d8f7-x2k4q", "n1", "deployment", "api", t0, None, [Container("api", 0.5, GIB, 0.2, 0.5 * GIB)],
                annotations={"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"})]
    return Estate(3, [Cluster("c1", 0.1, [node], [Namespace("apps", {}, pods)])])


def scraped(t: float, t0: float) -> list[dict[str, str]]:
    """Every series the simulator's three exporters expose at t, labels as scraped (with ``job``)."""
    return [{**labels, "job": USAGE_FAMILIES[labels["__name__"]].source, "instance": "sim:9003", "value": repr(value)}
            for labels, value in UsageExporters(estate(t0), "c1").series(t)]


def relabelled(t: float, t0: float) -> list[Series]:
    """What the customer Prometheus sends of the scrape at t, by the shipped configuration."""
    out = []
    for labels in scraped(t, t0):
        value = float(labels.pop("value"))
        kept = write_relabel(labels, write_relabel_configs())
        if kept is not None:
            out.append((kept, [(int(t * 1000), value)]))
    return out


def test_the_relabelled_exporters_are_distinct_and_pass_the_police_untouched() -> None:
    t0 = 1_790_000_000.0
    sent = relabelled(t0 + 120, t0)
    label_sets = [tuple(sorted(labels.items())) for labels, _ in sent]
    assert len(set(label_sets)) == len(label_sets)  # dropping id, image and name merged nothing
    assert {labels["__name__"] for labels, _ in sent} == set(USAGE_FAMILIES)
    assert not any(HIGH_CARDINALITY & set(labels) for labels, _ in sent)
    # cAdvisor's pod cgroups went: every container_* series names its container.
    assert all(labels.get("container") for labels, _ in sent if labels["__name__"].startswith("container_"))
    police = TenantPolice("tenant-a", Limits())
    out = police.police(encode(sent), int(t0 + 120) * 1000)
    assert not out.dropped and out.over_limit == 0
    def canonical(series: list[Series]) -> list[tuple[tuple[tuple[str, str], ...], list[tuple[int, float]]]]:
        return sorted((tuple(sorted(labels.items())), samples) for labels, samples in series)

    assert canonical(decode(out.body)) == canonical([({**labels, "tenant_id": "tenant-a"}, samples)
                                                     for labels, samples in sent])


def test_unrelabelled_exporters_are_refused_by_label_and_counted() -> None:
    """A customer without the relabelling: every series carrying id, image, name or uid is
    dropped whole (counted per sample), the others pass."""
    t0 = 1_790_000_000.0
    raw = [(labels, [(int(t0 + 120) * 1000, float(labels.pop("value")))]) for labels in scraped(t0 + 120, t0)]
    police = TenantPolice("tenant-a", Limits())
    out = police.police(encode(raw), int(t0 + 120) * 1000)
    refused = [labels for labels, _ in raw if HIGH_CARDINALITY & set(labels)]
    # kube_persistentvolume_info's CSI and local_fs labels are on no list either (the relabelling drops them).
    off_list = [labels for labels, _ in raw if {"csi_driver", "csi_volume_handle", "local_fs"} & set(labels)]
    assert refused and off_list and out.dropped == {"label_not_allowed": len(refused) + len(off_list)}
    assert {labels["__name__"] for labels, _ in decode(out.body)} == {
        name for name in USAGE_FAMILIES if name in ("kube_node_status_allocatable", "node_cpu_seconds_total",
                                                   "node_memory_MemAvailable_bytes", "kube_node_labels",
                                                   "kube_persistentvolumeclaim_info")}


# --- the active-series limit, in the police --------------------------------------------------


def usage(pod: str, at_ms: int, value: float = 1.0, **extra: str) -> Series:
    labels = {"__name__": "container_memory_working_set_bytes", "namespace": "apps", "pod": pod, "container": "c", **extra}
    return labels, [(at_ms, value)]


def test_a_tenant_past_its_series_limit_keeps_its_series_and_gets_no_new_one() -> None:
    now_ms = 1_790_000_000_000
    limits = Limits(max_series=3, active_series_seconds=600)
    police = TenantPolice("a", limits)
    first = police.police(encode([usage(f"p{i}", now_ms) for i in range(3)]), now_ms)
    assert (first.over_limit, police.active_series, first.dropped) == (0, 3, {})
    # Known series pass; of the new ones none does, even one that differs only by tenant_id.
    body = encode([usage("p0", now_ms + 15_000, 2.0), usage("p3", now_ms + 15_000), usage("p4", now_ms + 15_000),
                   usage("p1", now_ms + 15_000, 3.0, tenant_id="spoof")])
    second = police.police(body, now_ms + 15_000)
    assert second.over_limit == 2 and second.dropped == {"series_limit": 2}
    assert [(labels["pod"], samples[0][1]) for labels, samples in decode(second.body)] == [("p0", 2.0), ("p1", 3.0)]
    # A body refused whole (a sample an hour ahead) adds none of its series.
    roomy = TenantPolice("c", limits)
    with pytest.raises(WriteRejected):
        roomy.police(encode([usage("p9", now_ms), usage("p8", now_ms + 3_600_000)]), now_ms)
    assert roomy.active_series == 0
    # Another tenant has its own count: the new series that a could not add are b's.
    other = TenantPolice("b", limits).police(encode([usage("p3", now_ms), usage("p4", now_ms)]), now_ms)
    assert other.over_limit == 0 and other.series == 2
    # p2, quiet for longer than the window, stops counting (p0 and p1 wrote 15 s later): one new series fits.
    later = now_ms + 600_001
    third = police.police(encode([usage("p0", later), usage("p5", later), usage("p6", later)]), later)
    assert third.over_limit == 1 and police.active_series == 3
    assert [labels["pod"] for labels, _ in decode(third.body)] == ["p0", "p5"]


# --- in-process ingress → the shared TSDB ----------------------------------------------------


class Recorder:
    """Stands in for a Ray metric: what was counted, by tags."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[tuple[str, str], ...]] = Counter()

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.counts[tuple(sorted((tags or {}).items()))] += value

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.counts[tuple(sorted((tags or {}).items()))] = value

    def get(self, **tags: str) -> float:
        return sum(v for key, v in self.counts.items() if set(tags.items()) <= set(key))


class Ingress:
    def __init__(self, http: httpx.AsyncClient, samples: Recorder, tenants: list[Credentials], limit: int) -> None:
        self.http, self.samples, self.tenants, self.limit = http, samples, tenants, limit

    async def write(self, credentials: Credentials, series: list[Series]) -> httpx.Response:
        return await remote_write(self.http, encode(series), (credentials.account_id, credentials.password),
                                  credentials.account_id)


T0 = time.time() - 600  # the simulated pods started ten minutes ago
SCRAPE = int(time.time()) - 60  # the scrapes sent: a minute ago and 15 s later
SERIES = len(relabelled(SCRAPE, T0))


@pytest_asyncio.fixture(loop_scope="session")
async def ingress(real_services: None, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Ingress]:
    database = f"test_usage_{uuid.uuid4().hex[:12]}"
    stores = from_env(StoreSettings, mongodb_database=database)
    accounts = AccountStore(connect(stores))
    tenants = [(await accounts.create("org-usage", name))[1] for name in ("a", "b")]
    samples = Recorder()
    monkeypatch.setattr(ingress_metrics, "SAMPLES", samples)
    monkeypatch.setattr(ingress_metrics, "ACTIVE_SERIES", Recorder())
    monkeypatch.setattr(ingress_metrics, "REQUESTS", Recorder())
    monkeypatch.setenv("MONGODB_DATABASE", database)
    monkeypatch.setenv("INGRESS_MAX_SERIES_PER_TENANT", str(SERIES))  # one scrape of the cluster fills it
    replica = ingress_app.RemoteWriteIngress.func_or_class()
    assert replica.settings.max_series_per_tenant == SERIES
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi(replica)), base_url="http://ingress.test")
    try:
        yield Ingress(http, samples, tenants, SERIES)
    finally:
        await http.aclose()
        await replica.tsdb.aclose()
        await connect(stores).client.drop_database(database)


def tsdb(query: str, at: float) -> list[dict[str, Any]]:
    return helpers.tsdb_query(query, at)


@pytest.mark.services
@pytest.mark.asyncio(loop_scope="session")
async def test_usage_series_land_stamped_and_a_tenant_over_its_limit_gets_400(ingress: Ingress) -> None:
    a, b = ingress.tenants
    sent = relabelled(SCRAPE, T0)
    # The scrape, with a forged tenant_id on one series and the unrelabelled cAdvisor series of one container.
    forged = [({**labels, "tenant_id": b.account_id} if i == 0 else labels, samples) for i, (labels, samples) in enumerate(sent)]
    raw = [(labels, [(SCRAPE * 1000, float(labels.pop("value")))]) for labels in scraped(SCRAPE, T0)
           if labels["__name__"] == "container_cpu_usage_seconds_total" and labels.get("container") == "api"]
    answer = await ingress.write(a, forged + raw)
    assert answer.status_code == 204, answer.text
    assert ingress.samples.get(tenant=a.account_id, outcome="accepted") == SERIES
    assert ingress.samples.get(tenant=a.account_id, outcome="dropped", reason="label_not_allowed") == len(raw) == 1

    # Every family landed under the writer, the values sent, without the high-cardinality labels.
    every = f'{{__name__=~"{"|".join(USAGE_FAMILIES)}", tenant_id="{a.account_id}"}}'
    assert await landed(every, SCRAPE + 1, expected(sent, a)) == expected(sent, a)
    assert tsdb(f'container_cpu_usage_seconds_total{{tenant_id="{b.account_id}"}}', SCRAPE + 1) == []

    # 15 s later: the same series and two new containers' (a tenant at its limit) → 400, the known
    # series stored, the new ones refused and counted; the sender is told why.
    later = SCRAPE + 15
    again = [(labels, [(later * 1000, 1e6 + i)]) for i, (labels, _) in enumerate(sent)]
    new = [usage(f"new-{i}", later * 1000, 7.0) for i in range(2)]
    answer = await ingress.write(a, again + new)
    assert answer.status_code == 400, answer.text
    assert "series limit" in answer.text and f"limit of {SERIES}" in answer.text and "2 new series refused" in answer.text
    assert ingress.samples.get(tenant=a.account_id, outcome="rejected", reason="series_limit") == 2
    assert ingress.samples.get(tenant=a.account_id, outcome="accepted") == 2 * SERIES
    assert await landed(every, later + 1, expected(again, a)) == expected(again, a)
    assert tsdb(f'container_memory_working_set_bytes{{tenant_id="{a.account_id}", pod=~"new-.*"}}', later + 1) == []

    # Tenant b is not affected: its new series land.
    answer = await ingress.write(b, new)
    assert answer.status_code == 204, answer.text
    theirs = f'container_memory_working_set_bytes{{tenant_id="{b.account_id}"}}'
    assert await landed(theirs, later + 1, expected(new, b)) == expected(new, b)


def expected(series: list[Series], tenant: Credentials) -> dict[tuple[tuple[str, str], ...], float]:
    """Label set (the tenant stamped) → value, as the TSDB should answer the last sample of each."""
    return {tuple(sorted({**labels, "tenant_id": tenant.account_id}.items())): samples[-1][1] for labels, samples in series}


async def landed(query: str, at: float, want: dict[tuple[tuple[str, str], ...], float]) -> dict[tuple[tuple[str, str], ...], float]:
    """The TSDB's answer as label set → value, once it is ``want`` or after 10 s (it takes a moment)."""
    deadline = time.monotonic() + 10
    while True:
        got = {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in tsdb(query, at)}
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


# --- a real Prometheus with the shipped configuration ----------------------------------------


class Receiver(ThreadingHTTPServer):
    """A remote-write receiver that keeps every series it is sent."""

    def __init__(self) -> None:
        self.series: list[Series] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                outer.series.extend(decode(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)


def test_prometheus_sends_the_curated_families_as_the_ingress_wants_them(tmp_path: Path) -> None:
    """Prometheus 2.42 scraping the simulator's three exporters every second with the shipped
    configuration (devstack/simulator/customer.py's, as the demo's) sends every usage family,
    without cAdvisor's pod cgroups nor any label off the list: the police drops nothing."""
    t0 = time.time() - 600
    simulator = uvicorn.Server(uvicorn.Config(create_app(estate(t0), "c1"), host="127.0.0.1", port=free_port(),
                                              log_level="warning"))
    receiver = Receiver()
    threads = [threading.Thread(target=simulator.run, daemon=True),
               threading.Thread(target=receiver.serve_forever, daemon=True)]
    for thread in threads:
        thread.start()
    target = f"127.0.0.1:{simulator.config.port}"
    (tmp_path / "password").write_text("s3cret")
    config = prometheus_config(account_id="acct-1", password_file=tmp_path / "password",
                               write_url=f"http://127.0.0.1:{receiver.server_port}/write", exporter_target=target,
                               scrape_interval=1.0, usage_target=target, usage_interval=1.0)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{free_port()}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        sent = wait_for("every usage family sent", lambda: (
            receiver.series if set(USAGE_FAMILIES) <= {labels["__name__"] for labels, _ in receiver.series} else None),
            timeout=60, interval=0.5)
    finally:
        prometheus.terminate()
        prometheus.wait(15)
        simulator.should_exit = True
        receiver.shutdown()
    usage_series = [(labels, samples) for labels, samples in sent if labels["__name__"] in USAGE_FAMILIES]
    assert not any(HIGH_CARDINALITY & set(labels) for labels, _ in usage_series)
    assert all(labels.get("container") for labels, _ in usage_series if labels["__name__"].startswith("container_"))
    for labels, _ in usage_series:
        assert set(labels) <= USAGE_FAMILIES[labels["__name__"]].allowed_labels, labels
    # Scraped series the exporters have and the relabelling keeps: the same label sets.
    want = {tuple(sorted(labels.items())) for labels, _ in relabelled(time.time(), t0)}
    got = {tuple(sorted((k, v) for k, v in labels.items() if k not in ("job", "instance"))) for labels, _ in usage_series}
    assert got == {tuple((k, v) for k, v in key if k not in ("job", "instance")) for key in want}
    police = TenantPolice("acct-1", Limits())
    out = police.police(encode(usage_series), int(time.time() * 1000))
    assert not out.dropped and out.series == len(usage_series)
