"""The main command on local defaults: simulated customer clusters flowing into the cost ledger.

    .venv/bin/python scripts/demo.py [--clusters 3] [--history-days 42] [--seed 42]
                                     [--scrape-interval 5] [--cycle-seconds 30] [--once]
    .venv/bin/python scripts/demo.py stop

Starts the real servers and a local Ray (scripts/services.sh), deploys every Serve
application of cluster_config/serve_config.yaml, gives each simulated cluster its own
cloud account (two organizations), replays the clusters' past days into the TSDB, and
runs per cluster a Kubecost simulator, the allocation-exporter and a real Prometheus
remote-writing through the ingress. The tenant supervisor then runs one actor per
account, which turns the TSDB's rates into the per-day ledger (MongoDB + ClickHouse),
and the backfill job (jobs/backfill.py) writes the replayed days through those actors.
Once the history is in the ledger, every recommendation job runs through `ray job submit`,
as the RayCronJobs run them: the rightsizing job, then the optimizations job once per
module (each account of the demo, every module's items: the dashboard's Rightsizing and
Recommendations tabs have data from the first run). It prints what landed, the
per-namespace daily costs, each organization's recommendations as the REST API answers
them, the URLs and the sign-ins, then again every minute. Ctrl-C, or `demo.py stop` from another shell, stops everything the
demo started, by PID: the simulated clusters, the tenant hosts, and Ray and the servers
if they were not running before. `--once` prints once and leaves the servers, Ray and the
dashboard up. State (accounts, estate, loaded history, PIDs) lives in .data/demo/, so a
second run reuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
# devstack.stack pins Ray to loopback, which Ray reads when it is imported.
from devstack import stack
import ray

from actors.supervisor import SUPERVISOR_NAME, TenantSupervisor
from actors.tenant import TenantConfig
from devstack.simulator.customer import CustomerCluster
from devstack.simulator.history import write_blocks
from devstack.simulator.spec import Estate, from_json, generate_estate, to_json
from jobs.optimizations import Options
from k8scost import raylocal
from k8scost import ledger
from k8scost.settings import DAY, LedgerSettings, StoreSettings, from_env
from k8scost.stores.accounts import AccountStore, Credentials
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.organizations import OrganizationStore
from k8scost.stores.mongo import connect
from k8scost.stores.optimizations import Module
from k8scost.stores.resources import ResourceStore

DEMO_DIR = stack.ROOT / ".data" / "demo"
# The history replayed by default: the anomaly module's baseline (7 × weeks days) before each
# of the days it looks at, so a first run flags anomalies rather than "insufficient history".
# Replayed as TSDB blocks (stack.load_blocks), never remote-written: neither the TSDB's
# out-of-order window (30 days) nor INGRESS_MAX_PAST_SECONDS bounds it, the raw retention does.
HISTORY_DAYS = 7 * Options().anomalies.weeks + Options().anomaly_days
# What the running demo started: its customer processes (by process group) and the servers.
RUNNING_FILE = DEMO_DIR / "running.json"
SERVICES = ("clickhouse", "mongodb", "tsdb", "ray")
# The demo's users (organization, email, password, name): printed at the end to sign in.
DEMO_USERS = (
    ("Acme", "alice@acme.example", "acme-demo-password", "Alice"),
    ("Globex", "bob@globex.example", "globex-demo-password", "Bob"),
)


def load_estate(seed: int, clusters: int, days: int) -> tuple[Estate, Path]:
    """The demo estate: ``days`` of history up to now, reused by later runs with the same shape."""
    path = DEMO_DIR / f"estate-seed{seed}-clusters{clusters}-days{days}.json"
    if path.exists():
        return from_json(path.read_text()), path
    history = max(days, 1) * DAY
    estate = generate_estate(seed, clusters=clusters, namespaces_per_cluster=5, pods_per_namespace=6,
                             start=time.time() - history, span_seconds=history + 7 * DAY)
    path.write_text(to_json(estate))
    return estate, path


async def accounts_for(clusters: list[str]) -> dict[str, Credentials]:
    """One cloud account per cluster, reused while it lives and its saved password opens it.

    The first clusters belong to the first demo user's organization, the last to the second's.
    """
    db = connect(from_env(StoreSettings))
    users = OrganizationStore(db)
    await users.ensure_indexes()
    organizations = [(await users.ensure_user(*user))[0].id for user in DEMO_USERS]
    store = AccountStore(db)
    await store.ensure_indexes()
    saved_file = DEMO_DIR / "accounts.json"
    saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
    result = {}
    for cluster in clusters:
        organization = organizations[1] if cluster == clusters[-1] and len(clusters) > 1 else organizations[0]
        if cluster in saved:
            account = await store.get(saved[cluster]["account_id"])
            if account is not None and account.organization_id == organization and not account.deleted_at:
                result[cluster] = Credentials(**saved[cluster])
                continue
        _, result[cluster] = await store.create(organization, cluster)
    saved_file.write_text(json.dumps({c: vars(cred) for c, cred in result.items()}, indent=2))
    return result


def load_history(estate: Estate, estate_file: Path, tenants: dict[str, str], days: int) -> None:
    """Replay the last ``days`` days up to now into the TSDB, once per estate and accounts."""
    marker = DEMO_DIR / f"history-{estate_file.stem}.json"
    if marker.exists() and json.loads(marker.read_text()) == tenants:
        return
    now = time.time()
    start = ledger.day_start(now).timestamp() - days * DAY - 3600  # the exporter looks back an hour
    print(f"replaying {days} days of history into the TSDB ...", flush=True)
    with tempfile.TemporaryDirectory(dir=stack.DATA) as blocks:  # uploaded to the TSDB's bucket, then gone
        write_blocks(estate, tenants, start, now - now % 300, Path(blocks))
        stack.load_blocks(Path(blocks))
    marker.write_text(json.dumps(tenants))


def start_supervisor(cycle_seconds: float) -> None:
    """The tenant supervisor, detached: it outlives the demo, like in production."""
    config = TenantConfig.from_env()
    config = TenantConfig(
        # A few tenants need little spreading, and the demo waits for every first cycle.
        from_env(LedgerSettings, cycle_seconds=cycle_seconds, reconcile_seconds=5.0, start_spread_seconds=3.0),
        config.stores, config.cluster_secret,
    )
    raylocal.connect(stack.RAY_ADDRESS, config.ledger.ray_namespace)
    try:  # a supervisor of an earlier run carries its settings: replace it
        ray.kill(ray.get_actor(SUPERVISOR_NAME), no_restart=True)
    except ValueError:
        pass
    TenantSupervisor.options(name=SUPERVISOR_NAME, lifetime="detached").remote(config)


async def ledger_summary(credentials: dict[str, Credentials], days: int) -> str:
    """Per cluster, each namespace's cost over the last ``days`` days and today, and its last days one by one."""
    stores = from_env(StoreSettings)
    expenses, resources = ExpenseStore(stores), ResourceStore(connect(stores))
    today = ledger.day_start(time.time())
    first = today - timedelta(days=days)
    shown = [today - timedelta(days=k) for k in range(min(days, 6), -1, -1)]
    lines = []
    for cluster, cred in credentials.items():
        namespaces = {doc["_id"]: doc["k8s_namespace"]
                      for doc in await resources.find(cred.account_id, resource_type="K8s Namespace")}
        costs = await expenses.daily_costs(cred.account_id, first, today + timedelta(days=1))
        lines.append(f"cluster {cluster}  (account {cred.account_id})")
        lines.append("  " + f"{'namespace':<28}" + f"{days + 1} days".rjust(12)
                     + "".join(f"{d:%m-%d}".rjust(10) for d in shown))
        for rid, namespace in [("", "(all: the cluster)"), *sorted(namespaces.items(), key=lambda item: item[1])]:
            ids = [rid] if rid else list(namespaces)
            total = sum(cost for (key, _), cost in costs.items() if key in ids)
            row = [sum(costs.get((key, day), 0.0) for key in ids) for day in shown]
            lines.append("  " + f"{namespace:<28}" + f"{total:12.2f}" + "".join(f"{cost:10.2f}" for cost in row))
    await expenses.close()
    return "\n".join(lines)


def landed_summary(customers: list[CustomerCluster]) -> str:
    """What the TSDB holds per cluster: series under the enforced tenant, and current cost rates."""
    lines = []
    for customer in customers:
        tenant = customer.account_id
        selector = f'tenant_id="{tenant}",cluster="{customer.cluster}"'
        series = _scalar(f'count({{{selector}}})')
        total = _scalar(f'sum(kubecost_cluster_cpu_cost{{{selector}}}) + sum(kubecost_cluster_memory_cost{{{selector}}})'
                        f' + sum(kubecost_cluster_storage_cost{{{selector}}})')
        lines.append(f"cluster {customer.cluster}  (account {tenant})")
        lines.append(f"  series in the TSDB: {series:.0f}   cluster cost rate: ${total:.4f}/h")
        for result in sorted(_query(f'cloudtuner_kubecost_namespace_total_cost{{{selector}}}'),
                             key=lambda r: -float(r["value"][1])):
            lines.append(f"    {result['metric']['namespace']:<28} ${float(result['value'][1]):9.4f}/h")
    return "\n".join(lines)


def backfill(credentials: dict[str, Credentials], days: int) -> None:
    """The replayed days before today, written by the backfill job through each tenant's actor."""
    today = ledger.day_start(time.time())
    command = [sys.executable, "-m", "jobs.backfill", "--start", (today - timedelta(days=days)).date().isoformat(),
               "--end", today.date().isoformat()]
    for cred in credentials.values():
        command += ["--cloud-account-id", cred.account_id]
    print(f"backfilling {days} days of {len(credentials)} clusters: {' '.join(command[1:])}", flush=True)
    env = {**os.environ, "RAY_ADDRESS": stack.RAY_ADDRESS}
    subprocess.run(command, cwd=stack.ROOT, env=env, check=True)


def recommendation_jobs(credentials: dict[str, Credentials]) -> list[str]:
    """Every recommendation job over the demo's accounts, through `ray job submit` as the
    RayCronJobs run them: the rightsizing job first (the optimizations modules read its
    results), then the optimizations job once per module. Returns the jobs that failed: the
    demo goes on (the costs do not depend on them), and says which."""
    accounts = [arg for cred in credentials.values() for arg in ("--cloud-account-id", cred.account_id)]
    # The stores the demo writes, whatever environment the running Ray was started with.
    stores = from_env(StoreSettings)
    runtime_env = {"env_vars": {f.metadata["env"]: str(getattr(stores, f.name)) for f in dataclasses.fields(stores)}}
    jobs = [["jobs.rightsizing"], *(["jobs.optimizations", "--module", str(module)] for module in Module)]
    failed = []
    for job in jobs:
        command = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", stack.RAY_DASHBOARD,
                   "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", *job, *accounts]
        print(f"running {' '.join(job)} over {len(credentials)} accounts: ray job submit ...", flush=True)
        done = subprocess.run(command, cwd=stack.ROOT)
        if done.returncode != 0:
            failed.append(f"{' '.join(job)} (exit {done.returncode})")
            print(f"{' '.join(job)} failed (exit {done.returncode}): its log is above and on the Ray dashboard's job page",
                  flush=True)
    return failed


def _sum_line(label: str, count: int, saving: float, note: str = "") -> str:
    return f"  {label:<28}{count:6d} items {saving:12.2f}" + (f"   {note}" if note else "")


def recommendations_summary() -> str:
    """Each demo organization's recommendations as the REST API answers them to its user (what
    the dashboard's Recommendations and Rightsizing tabs show), USD per month."""
    api = f"{stack.SERVE_URL}/restapi/v2"
    lines = []
    for organization, email, password, _ in DEMO_USERS:
        signed = httpx.post(f"{api}/tokens", json={"email": email, "password": password}, timeout=30)
        signed.raise_for_status()
        token, org_id = signed.json()["token"], signed.json()["organization_id"]
        headers = {"Authorization": f"Bearer {token}"}
        try:
            answer = httpx.get(f"{api}/organizations/{org_id}/optimizations", headers=headers, timeout=60)
            answer.raise_for_status()
            sizing = httpx.get(f"{api}/organizations/{org_id}/k8s_rightsizing", params={"limit": 1}, headers=headers,
                               timeout=60)
            sizing.raise_for_status()
        finally:
            httpx.delete(f"{api}/tokens", headers=headers, timeout=30)  # the summary's session ends with it
        body, containers = answer.json(), sizing.json()
        lines.append(f"{organization} ({email}): total saving {body['total_saving']:.2f} a month")
        for module, found in body["optimizations"].items():
            # Beside the figures, why they may be small: a failed or missing run, else the first
            # item that says what it lacks (e.g. "insufficient history: 30 days").
            failed = [run["error"] for run in found["runs"] if run["status"] == "failed"]
            if failed:
                note = f"failed: {failed[0]}"
            elif not found["runs"]:
                note = "not run"
            else:
                note = next((item["insufficient"] for item in found["items"] if item.get("insufficient")), "")
            lines.append(_sum_line(module, found["count"], found["saving"], note))
        dismissed = [summary for summaries in (body["dismissed_optimizations"], body["excluded_optimizations"])
                     for summary in summaries.values()]
        lines.append(_sum_line("dismissed or excluded", sum(s["count"] for s in dismissed), sum(s["saving"] for s in dismissed)))
        lines.append(f"  rightsizing tab: {containers['total_count']} containers, {containers['monthly_savings']:.2f} "
                     f"to save, {containers['extra_monthly_cost']:.2f} more for the under-provisioned")
    return "\n".join(lines)


def record_running(customers: list[CustomerCluster], started: list[str]) -> None:
    RUNNING_FILE.write_text(json.dumps({
        "customers": [process.pid for c in customers for process in c.processes.values()],
        "services": started,
    }))


def stop_everything() -> None:
    """Stop what the recorded demo started: customer processes, tenant hosts, then Ray and the servers."""
    running = json.loads(RUNNING_FILE.read_text()) if RUNNING_FILE.exists() else {"customers": [], "services": []}
    for pgid in running["customers"]:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if "ray" in stack.services_up("ray"):
        subprocess.run([sys.executable, "-m", "actors", "stop"], cwd=stack.ROOT, capture_output=True)
    if running["services"]:
        # Ray first: its actors write to the servers.
        stack.services("stop", *sorted(running["services"], key=lambda name: name != "ray"))
    RUNNING_FILE.unlink(missing_ok=True)
    print(f"stopped: {len(running['customers'])} customer processes, the tenant hosts, "
          f"servers started by the demo: {', '.join(running['services']) or 'none'}")


def _all_cycled(credentials: dict[str, Credentials]) -> bool:
    report = ray.get(ray.get_actor(SUPERVISOR_NAME).status.remote())["tenants"]
    return all(report.get(cred.account_id, {}).get("cycles", 0) >= 1 for cred in credentials.values())


def _query(query: str) -> list[dict]:
    answer = httpx.get(f"{stack.TSDB_URL}/api/v1/query", params={"query": query}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def _scalar(query: str) -> float:
    result = _query(query)
    return float(result[0]["value"][1]) if result else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=3, help="simulated clusters, one account each (default 3)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the simulated estate (default 42)")
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="exporter poll and scrape interval, s")
    parser.add_argument("--history-days", type=int, default=HISTORY_DAYS,
                        help="past days replayed into the TSDB and backfilled into the ledger (default "
                             f"{HISTORY_DAYS}: what the anomaly module needs to look at its {Options().anomaly_days} "
                             "days)")
    parser.add_argument("--cycle-seconds", type=float, default=30.0, help="ledger cycle of the tenants, s")
    parser.add_argument("--once", action="store_true",
                        help="print the results once, then stop the simulated clusters; the servers stay up")
    parser.add_argument("command", nargs="?", choices=("run", "stop"), default="run",
                        help="stop: stop everything a running or earlier demo started")
    args = parser.parse_args()
    if args.command == "stop":
        stop_everything()
        return 0
    if not 1 <= args.clusters <= 20:
        parser.error("--clusters must be between 1 and 20")
    if args.scrape_interval < 1:
        parser.error("--scrape-interval must be at least 1 second")
    retention = from_env(StoreSettings).tsdb_raw_retention_days
    if not 0 <= args.history_days < retention:
        parser.error(f"--history-days must be from 0 to {retention - 1} (TSDB_RAW_RETENTION_DAYS: the backfill "
                     "refuses older days)")
    if args.cycle_seconds < 5:
        parser.error("--cycle-seconds must be at least 5")

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RUNNING_FILE.read_text()) if RUNNING_FILE.exists() else {"customers": [], "services": []}
    for pgid in previous["customers"]:  # an earlier demo that did not stop: its clusters, not its servers
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    started = sorted(set(previous["services"]) | (set(SERVICES) - set(stack.services_up(*SERVICES))))
    record_running([], started)
    stack.services("start", *SERVICES)
    print("deploying the Serve applications ...", flush=True)
    stack.deploy_serve()
    estate, estate_file = load_estate(args.seed, args.clusters, args.history_days)
    credentials = asyncio.run(accounts_for([c.name for c in estate.clusters]))
    if args.history_days:
        load_history(estate, estate_file, {c: cred.account_id for c, cred in credentials.items()}, args.history_days)
    customers = [
        CustomerCluster(cluster=cluster.name, estate_file=estate_file, account_id=credentials[cluster.name].account_id,
                        password=credentials[cluster.name].password, write_url=stack.WRITE_URL,
                        workdir=DEMO_DIR / cluster.name, scrape_interval=args.scrape_interval)
        for cluster in estate.clusters
    ]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a TERM stops everything, as Ctrl-C does
    try:
        for customer in customers:
            print(f"starting cluster {customer.cluster}: Kubecost simulator, exporter, Prometheus ...", flush=True)
            customer.start()
            record_running(customers, started)
        for customer in customers:
            # Live samples, not the replayed ones: those carry the exporter's in-cluster address.
            live = f'kubecost_cluster_cpu_cost{{tenant_id="{customer.account_id}",instance="127.0.0.1:{customer.exporter_port}"}}'
            stack.wait_for(f"{customer.cluster}'s live costs in the TSDB", lambda q=live: _query(q),
                              timeout=120, interval=1)
        print("starting the tenant supervisor: every account placed on a tenant host ...", flush=True)
        start_supervisor(args.cycle_seconds)
        stack.wait_for("every tenant's first ledger cycle", lambda: _all_cycled(credentials), timeout=300, interval=2)
        backfill(credentials, args.history_days)
        failed_jobs = recommendation_jobs(credentials)
        while True:
            print(f"\n== landed in the TSDB at {time.strftime('%H:%M:%S')} (tenant_id enforced by the ingress) ==")
            print(landed_summary(customers))
            print(f"\n== daily costs in the ledger (ClickHouse expenses, USD) ==")
            print(asyncio.run(ledger_summary(credentials, args.history_days)), flush=True)
            print("\n== recommendations (GET /restapi/v2/organizations/{id}/optimizations, USD a month) ==")
            if failed_jobs:
                print(f"failed jobs: {', '.join(failed_jobs)}")
            print(recommendations_summary(), flush=True)
            print(f"\nDashboard: {stack.SERVE_URL}/   REST API (OpenAPI): {stack.SERVE_URL}/restapi/docs   "
                  f"Ray dashboard: {stack.RAY_DASHBOARD}")
            for organization, email, password, _ in DEMO_USERS:
                print(f"  sign in as {email} / {password} ({organization})")
            if args.once:
                return 0
            print("`python -m actors status` shows the tenants.   Ctrl-C (or `scripts/demo.sh stop`) stops "
                  "everything the demo started.", flush=True)
            time.sleep(max(60.0, args.cycle_seconds))
    except KeyboardInterrupt:
        stop_everything()
        return 0
    finally:
        for customer in customers:
            customer.stop()
        if RUNNING_FILE.exists():
            record_running([], started)
            print("stopped the simulated clusters; `scripts/demo.sh stop` stops the servers, Ray and the actors")


if __name__ == "__main__":
    sys.exit(main())
