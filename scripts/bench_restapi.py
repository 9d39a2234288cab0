"""REST API latency as users get it: through Ray Serve, on a big organization's ledger.

    .venv/bin/python scripts/bench_restapi.py [--days 90] [--namespaces 1000] [--pods 20] [--requests 20] [--reload]

1. The dataset, loaded once and reused by later runs while it still fits the arguments and
   the rows the ledger builds today (``--reload``: load it anyway). One organization (a
   user with a password) with 3 clusters, one cloud account each, in MongoDB database
   ``bench_restapi``; NAMESPACES namespaces spread over the clusters, PODS pods each, 20
   nodes per cluster; DAYS days of ledger through today in ClickHouse database
   ``bench_restapi``. One day of each account is built as the tenant actor builds it — a
   ``kubecost_metrics`` answer with a series for every gauge the ledger reads
   (``ledger.LEDGER_METRICS``) through ``ledger.daily_costs`` and ``ledger.corrections``,
   so the day has every row the actor writes (clusters and their cost components, nodes,
   namespaces with ``__idle__`` and ``__management__``, pods) — then ClickHouse repeats it
   over DAYS days (INSERT … SELECT); the last 2 days are corrected with −1/+1 rows left
   uncollapsed, as an actor's open days are. Costs are synthetic: pods a formula of their
   index, namespaces, idle, nodes and cluster components the sums of what they hold, all
   times a factor of the day. The expense routes read the ledger and the accounts alone
   (serve_apps/restapi/expenses.py): no resource documents or TSDB samples are loaded.
2. Deploys cluster_config/serve_config.yaml as the tests do, with its defaults: the only
   settings added name the bench's databases. Beside it, the same FastAPI app in a uvicorn
   subprocess (no Ray) on the same stores: the anchor for what Serve adds.
3. Times REQUESTS requests (after 2 warm-ups) of clean_expenses and breakdown_expenses over
   7, 30 and 90 days, with and without filters, with a user's bearer token as the dashboard
   sends it, alternating the two servers; prints p50/p95 of both and Serve ÷ uvicorn as
   Markdown. Target: p50 ≤ 200 ms at 90 days through Serve. Stops if someone else (a test
   session) redeploys Serve meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from asynch import Connection  # noqa: E402

from devstack import stack  # noqa: E402
from k8scost import ledger  # noqa: E402
from k8scost.promql import (  # noqa: E402
    CLUSTER_COST_COMPONENTS, CLUSTER_COST_METRICS, IDLE_METRIC, NAMESPACE_METRIC, NODE_METRIC, POD_METRIC,
)
from k8scost.settings import StoreSettings, from_env  # noqa: E402
from k8scost.stores.accounts import Account, AccountStore  # noqa: E402
from k8scost.stores.clickhouse import ExpenseStore  # noqa: E402
from k8scost.stores.mongo import connect  # noqa: E402
from k8scost.stores.organizations import OrganizationStore  # noqa: E402

DATABASE = "bench_restapi"
DAY = 86_400
CLUSTERS = 3
NODES_PER_CLUSTER = 20
EMAIL, PASSWORD = "bench@example.com", "bench-password"
MANAGEMENT_METRIC = CLUSTER_COST_COMPONENTS["management_cost"]
MANAGEMENT_FEE = 0.10 * 24  # USD a cluster-day, as EKS and GKE charge
# Columns of the day template: an expense row without its day and sign.
TEMPLATE = ("cloud_account_id", "resource_id", "cost", "k8s_cluster", "k8s_namespace", "k8s_node", "k8s_service",
            "resource_type", "resource_name")


def dsn(database: str) -> str:
    return from_env(StoreSettings).clickhouse_url.rsplit("/", 1)[0] + "/" + database


# Where the bench's data lives: the only settings the REST servers get beyond their defaults.
STORES_ENV = {"CLICKHOUSE_URL": dsn(DATABASE), "MONGODB_DATABASE": DATABASE}


async def clickhouse(query: str, rows: list[tuple] | None = None, database: str = DATABASE) -> list[tuple]:
    """One statement on a connection of its own (DDL and bulk loads: not the API's read path)."""
    async with Connection(dsn=dsn(database)) as conn:
        async with conn.cursor() as cursor:
            if rows:
                cursor.set_settings({"insert_block_size": len(rows)})  # one block, one part
            await cursor.execute(query, rows)
            return await cursor.fetchall() if cursor.description else []


def namespaces_of(count: int, cluster_index: int) -> list[str]:
    """The cluster's share of ``count`` namespaces."""
    return [f"ns-{n:04d}" for n in range(cluster_index, count, CLUSTERS)]


def day_answer(cluster: str, namespaces: list[str], pods: int, day_end: int) -> dict[str, Any]:
    """Metroculus's ``kubecost_metrics`` answer (step one day) for one day of ``cluster``, as the actor reads it."""
    results: dict[str, list[dict[str, Any]]] = {metric: [] for metric in ledger.LEDGER_METRICS}

    def add(metric: str, cost: float, **labels: str) -> None:
        results[metric].append({"metric": {"cluster": cluster, **labels}, "values": [[day_end, repr(cost)]]})

    nodes = [f"{cluster}-node-{k:02d}" for k in range(NODES_PER_CLUSTER)]
    node_costs = dict.fromkeys(nodes, 0.0)
    for n, namespace in enumerate(namespaces):
        namespace_cost = 0.0
        for p in range(pods):
            cost = (1 + (n * pods + p) % 97) * 0.001
            node = nodes[(n * pods + p) % len(nodes)]
            add(POD_METRIC, cost, namespace=namespace, pod=f"{namespace}-pod-{p:02d}", node=node,
                controller=f"svc-{p % 5}", controller_kind="deployment")
            namespace_cost += cost
            node_costs[node] += cost
        add(NAMESPACE_METRIC, namespace_cost, namespace=namespace)
    allocated = sum(node_costs.values())
    idle = allocated / 10
    add(IDLE_METRIC, idle)
    for node, cost in node_costs.items():
        add(NODE_METRIC, cost + idle / len(nodes), node=node)
    shared = len(CLUSTER_COST_METRICS) - 1  # the components but the fee share what the nodes cost
    for metric in CLUSTER_COST_METRICS:
        add(metric, MANAGEMENT_FEE if metric == MANAGEMENT_METRIC else (allocated + idle) / shared)
    return {"step": DAY, "metrics": {metric: {"data": {"result": series}} for metric, series in results.items()}}


def day_rows(account: Account, namespaces: list[str], pods: int, start: int) -> list[tuple]:
    """The rows the tenant actor writes for the first day of ``account``, as TEMPLATE tuples."""
    day = ledger.day_start(start)
    daily = ledger.daily_costs(account.id, [day_answer(account.name, namespaces, pods, start + DAY)], [day])
    rows, _ = ledger.corrections(account.id, {}, daily)
    return [tuple(getattr(row, column) for column in TEMPLATE) for row in rows]


async def reusable(args: argparse.Namespace) -> dict[str, Any] | None:
    """The loaded dataset, if it has these arguments' shape and the rows the ledger builds today."""
    [(found,)] = await clickhouse(
        f"SELECT count() FROM system.tables WHERE database = '{DATABASE}' AND name = 'dataset'", database="default"
    )
    if not found:
        return None
    [(days, namespaces, pods, end)] = await clickhouse("SELECT days, namespaces, pods, end FROM dataset")
    if (days, namespaces, pods) != (args.days, args.namespaces, args.pods):
        return None
    db = connect(from_env(StoreSettings, mongodb_database=DATABASE))
    organization, _ = await OrganizationStore(db).ensure_user("bench", EMAIL, PASSWORD, "Bench")
    accounts = sorted(await AccountStore(db).list(organization.id), key=lambda account: account.name)
    if [account.name for account in accounts] != [f"cluster-{c + 1}" for c in range(CLUSTERS)]:
        return None
    start = end - days * DAY
    built = {row for c, account in enumerate(accounts)
             for row in day_rows(account, namespaces_of(namespaces, c), pods, start)}
    if built != set(await clickhouse(f"SELECT {', '.join(TEMPLATE)} FROM day_template")):
        return None
    return {"organization_id": organization.id, "end": end}


async def load(args: argparse.Namespace) -> dict[str, Any]:
    """The dataset, from nothing; the table ``dataset``, written last, marks it complete."""
    stores = from_env(StoreSettings, clickhouse_url=dsn(DATABASE), mongodb_database=DATABASE)
    await clickhouse(f"DROP DATABASE IF EXISTS {DATABASE}", database="default")
    await clickhouse(f"CREATE DATABASE {DATABASE}", database="default")
    db = connect(stores)
    await db.client.drop_database(DATABASE)
    organization, _ = await OrganizationStore(db).ensure_user("bench", EMAIL, PASSWORD, "Bench")
    expenses = ExpenseStore(stores)
    await expenses.migrate()
    await expenses.close()
    await clickhouse(
        "CREATE TABLE day_template (cloud_account_id String, resource_id String, cost Float64, "
        "k8s_cluster Nullable(String), k8s_namespace Nullable(String), k8s_node Nullable(String), "
        "k8s_service Nullable(String), resource_type String, resource_name String) ENGINE = Log"
    )
    end = int(time.time()) // DAY * DAY + DAY  # through today
    start = end - args.days * DAY
    started = time.perf_counter()
    accounts = AccountStore(db)
    for c in range(CLUSTERS):
        account, _ = await accounts.create(organization.id, f"cluster-{c + 1}")
        rows = day_rows(account, namespaces_of(args.namespaces, c), args.pods, start)
        await clickhouse("INSERT INTO day_template VALUES", rows)
    [(count,)] = await clickhouse("SELECT count() FROM day_template")
    print(f"a day: {count:,} ledger rows, built in {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    await clickhouse(
        f"""
        INSERT INTO expenses (cloud_account_id, resource_id, date, cost, sign, k8s_cluster, k8s_namespace,
                              k8s_node, k8s_service, resource_type, resource_name)
        SELECT cloud_account_id, resource_id, toDateTime({start} + day_index * {DAY}),
               cost * (1 + (day_index % 7) / 10), 1, k8s_cluster, k8s_namespace, k8s_node, k8s_service,
               resource_type, resource_name
        FROM day_template CROSS JOIN (SELECT number AS day_index FROM system.numbers LIMIT {args.days})
        """
    )
    # The open days corrected: −1 repeating each row, +1 with a new cost; not merged away.
    for sign, factor in ((-1, 1.0), (1, 1.1)):
        await clickhouse(
            f"""
            INSERT INTO expenses (cloud_account_id, resource_id, date, cost, sign, k8s_cluster, k8s_namespace,
                                  k8s_node, k8s_service, resource_type, resource_name)
            SELECT cloud_account_id, resource_id, date, cost * {factor}, {sign}, k8s_cluster, k8s_namespace,
                   k8s_node, k8s_service, resource_type, resource_name
            FROM expenses WHERE sign = 1 AND date >= toDateTime({end - 2 * DAY}) AND cost > 0
              AND resource_id IN (SELECT resource_id FROM expenses WHERE date = toDateTime({end - DAY}) AND sign = 1
                                  GROUP BY resource_id HAVING count() = 1)
            """
        )
    [(count,)] = await clickhouse("SELECT count() FROM expenses")
    print(f"ledger: {count:,} rows over {args.days} days in {time.perf_counter() - started:.0f} s", flush=True)
    await clickhouse("CREATE TABLE dataset (days UInt32, namespaces UInt32, pods UInt32, end UInt32) ENGINE = Log")
    await clickhouse("INSERT INTO dataset VALUES", [(args.days, args.namespaces, args.pods, end)])
    return {"organization_id": organization.id, "end": end}


def serve_uvicorn(port: int) -> subprocess.Popen[bytes]:
    """The REST app without Ray, on the bench's stores."""
    code = (
        "import uvicorn; from serve_apps.restapi.api import RestApiConfig, create_api; "
        f"uvicorn.run(create_api(RestApiConfig.from_env()), host='127.0.0.1', port={port}, log_level='warning', access_log=False)"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **STORES_ENV})


def serve_deployment() -> tuple[float | None, dict[str, str]]:
    """When the REST application was last deployed, and the settings it was given."""
    answer = httpx.get(f"{stack.RAY_DASHBOARD}/api/serve/applications/", timeout=10)
    answer.raise_for_status()
    app = answer.json().get("applications", {}).get("restapi", {})
    env = (app.get("deployed_app_config") or {}).get("runtime_env", {}).get("env_vars", {})
    return app.get("last_deployed_time_s"), env


def check_ours(deployment: tuple[float | None, dict[str, str]]) -> None:
    """Fail if Serve no longer runs the bench's deployment: a test session's deploy points the REST API at
    other databases, whose empty answers would pass for fast ones."""
    if deployment[1] != STORES_ENV or serve_deployment() != deployment:
        raise RuntimeError("Serve was redeployed by someone else (a test session?): rerun when it is left alone; "
                           "the dataset is reused")


def signed_in(base_url: str) -> httpx.Client:
    """A client carrying a user's bearer token, as the dashboard sends it."""
    answer = httpx.post(f"{base_url}/v2/tokens", json={"email": EMAIL, "password": PASSWORD}, timeout=30)
    answer.raise_for_status()
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {answer.json()['token']}"}, timeout=120)


def cases(end: int, days: int) -> list[tuple[int, str, str, dict[str, Any]]]:
    """(span in days, path, label, params)."""
    out = []
    some = namespaces_of(10, 0)  # 4 namespaces, all in cluster-1
    for span in (7, 30, 90):
        if span > days:
            continue
        base = {"start_date": end - span * DAY, "end_date": end}
        out += [
            (span, "clean_expenses", "no filter (namespaces)", base),
            (span, "clean_expenses", "pods of cluster-1, 4 namespaces", {**base, "resource_type": "K8s Pod", "k8s_cluster": "cluster-1", "k8s_namespace": some}),
            (span, "clean_expenses", "all pods, limit 5000", {**base, "resource_type": "K8s Pod"}),
            (span, "breakdown_expenses", "by namespace, no filter", {**base, "breakdown_by": "k8s_namespace"}),
            (span, "breakdown_expenses", "by service, pods of cluster-1, 4 namespaces", {**base, "breakdown_by": "k8s_service", "k8s_cluster": "cluster-1", "k8s_namespace": some}),
        ]
    return out


@dataclasses.dataclass
class Timing:
    times: list[float] = dataclasses.field(default_factory=list)
    size: int = 0

    def ms(self, q: int) -> float:
        """The q-th percentile, in ms."""
        values = self.times
        return 1000 * (statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0])


def measure(clients: dict[str, httpx.Client], url: str, params: dict[str, Any], requests: int) -> dict[str, Timing]:
    """REQUESTS timed requests (after 2 warm-ups) to each server in turn: a load swing on the shared cores hits both."""
    timings = {name: Timing() for name in clients}
    for i in range(requests + 2):
        for name, client in clients.items():
            started = time.perf_counter()
            answer = client.get(url, params=params)
            elapsed = time.perf_counter() - started
            answer.raise_for_status()
            if i >= 2:
                timings[name].times.append(elapsed)
                timings[name].size = len(answer.content)
    return timings


def code_version() -> str:
    """The commit, and whether the working tree differs from it: the replicas import the tree."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    commit = git("log", "-1", "--format=%h").strip()
    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return commit + (f" + uncommitted changes in {len(changed)} files" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--reload", action="store_true", help="load the dataset even if the loaded one fits")
    args = parser.parse_args()
    run_started = time.perf_counter()
    stack.services("start", "clickhouse", "mongodb", "ray")
    seeded = None if args.reload else asyncio.run(reusable(args))
    print("dataset: " + ("reused" if seeded else "loading"), flush=True)
    seeded = seeded or asyncio.run(load(args))
    dataset_seconds = time.perf_counter() - run_started

    started = time.perf_counter()
    stack.deploy_serve(STORES_ENV)
    deployment = serve_deployment()
    port = stack.free_port()
    server = serve_uvicorn(port)
    try:
        stack.wait_until_answers(f"http://127.0.0.1:{port}/openapi.json", timeout=60, process=server)
        check_ours(deployment)
        clients = {"Serve": signed_in(f"{stack.SERVE_URL}/restapi"),
                   "uvicorn": signed_in(f"http://127.0.0.1:{port}")}
        print(f"Serve deployed (its defaults, stores {DATABASE}) and uvicorn up in "
              f"{time.perf_counter() - started:.0f} s; code {code_version()}", flush=True)
        started = time.perf_counter()
        rows = [
            "| endpoint | days | case | Serve p50 ms | Serve p95 ms | uvicorn p50 ms | uvicorn p95 ms "
            "| Serve ÷ uvicorn p50 | body KB |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        verdicts = []
        for span, path, label, params in cases(seeded["end"], args.days):
            try:
                url = f"/v2/organizations/{seeded['organization_id']}/{path}"
                timings = measure(clients, url, params, args.requests)
            finally:
                check_ours(deployment)  # first: a failed request may be a foreign deploy's doing
            serve, direct = timings["Serve"], timings["uvicorn"]
            rows.append(f"| {path} | {span} | {label} | {serve.ms(50):.0f} | {serve.ms(95):.0f} | "
                        f"{direct.ms(50):.0f} | {direct.ms(95):.0f} | {serve.ms(50) / direct.ms(50):.2f} | "
                        f"{serve.size / 1024:.0f} |")
            print(rows[-1], flush=True)
            if span == 90:
                met = "met" if serve.ms(50) <= 200 else "not met"
                verdicts.append(f"- {path}, {label}: {serve.ms(50):.0f} ms: {met}")
        print("\n" + "\n".join(rows))
        print("\ntarget p50 ≤ 200 ms at 90 days through Serve:")
        print("\n".join(verdicts) if verdicts else f"- not measured (--days {args.days})")
        print(f"\nrun: {time.perf_counter() - run_started:.0f} s (dataset {dataset_seconds:.0f} s, "
              f"requests {time.perf_counter() - started:.0f} s)")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
