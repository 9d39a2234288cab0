"""The main job on local defaults: simulated customer clusters flowing into the SaaS.

    .venv/bin/python scripts/demo.py [--clusters 3] [--seed 42] [--scrape-interval 5] [--once]

Starts the real servers and a local Ray (scripts/services.sh), deploys every Serve
application of cluster_config/serve_config.yaml, gives each simulated cluster its own
cloud account, and runs per cluster a Kubecost simulator, the allocation-exporter and a
real Prometheus remote-writing through the ingress into the TSDB. It prints what landed,
then keeps printing it every minute until Ctrl-C, which stops every process it started.
State (accounts, estate) lives in .data/demo/, so a second run reuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import httpx

from k8scost import devstack
from k8scost.settings import StoreSettings, from_env
from k8scost.simulator.customer import CustomerCluster
from k8scost.simulator.spec import Estate, from_json, generate_estate, to_json
from k8scost.stores.accounts import AccountStore, Credentials
from k8scost.stores.mongo import connect

DEMO_DIR = devstack.ROOT / ".data" / "demo"
ORGANIZATION = "demo-organization"


def load_estate(seed: int, clusters: int) -> tuple[Estate, Path]:
    """The demo estate: 30 days of history up to now, reused by later runs with the same shape."""
    path = DEMO_DIR / f"estate-seed{seed}-clusters{clusters}.json"
    if path.exists():
        return from_json(path.read_text()), path
    month = 30 * 86400
    estate = generate_estate(seed, clusters=clusters, namespaces_per_cluster=5, pods_per_namespace=6,
                             start=time.time() - month, span_seconds=month + 7 * 86400)
    path.write_text(to_json(estate))
    return estate, path


async def accounts_for(clusters: list[str]) -> dict[str, Credentials]:
    """One cloud account per cluster, reused while it lives and its saved password opens it."""
    store = AccountStore(connect(from_env(StoreSettings)))
    await store.ensure_indexes()
    saved_file = DEMO_DIR / "accounts.json"
    saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
    result = {}
    for cluster in clusters:
        if cluster in saved:
            credentials = Credentials(**saved[cluster])
            if await store.authenticate(credentials) is not None:
                result[cluster] = credentials
                continue
        _, result[cluster] = await store.create(ORGANIZATION, cluster)
    saved_file.write_text(json.dumps({c: vars(cred) for c, cred in result.items()}, indent=2))
    return result


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


def _query(query: str) -> list[dict]:
    answer = httpx.get(f"{devstack.TSDB_URL}/api/v1/query", params={"query": query}, timeout=10)
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
    parser.add_argument("--once", action="store_true", help="print what landed once, then stop")
    args = parser.parse_args()
    if not 1 <= args.clusters <= 20:
        parser.error("--clusters must be between 1 and 20")
    if args.scrape_interval < 1:
        parser.error("--scrape-interval must be at least 1 second")

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    devstack.services("start", "clickhouse", "mongodb", "tsdb", "ray")
    print("deploying the Serve applications ...", flush=True)
    devstack.deploy_serve()
    estate, estate_file = load_estate(args.seed, args.clusters)
    credentials = asyncio.run(accounts_for([c.name for c in estate.clusters]))
    customers = [
        CustomerCluster(cluster=cluster.name, estate_file=estate_file, account_id=credentials[cluster.name].account_id,
                        password=credentials[cluster.name].password, write_url=devstack.WRITE_URL,
                        workdir=DEMO_DIR / cluster.name, scrape_interval=args.scrape_interval)
        for cluster in estate.clusters
    ]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for customer in customers:
            print(f"starting cluster {customer.cluster}: Kubecost simulator, exporter, Prometheus ...", flush=True)
            customer.start()
        for customer in customers:
            devstack.wait_for(f"{customer.cluster}'s costs in the TSDB",
                              lambda c=customer: _query(f'kubecost_cluster_cpu_cost{{tenant_id="{c.account_id}"}}'),
                              timeout=120, interval=1)
        while True:
            print(f"\n== landed in the TSDB at {time.strftime('%H:%M:%S')} (tenant_id enforced by the ingress) ==")
            print(landed_summary(customers), flush=True)
            if args.once:
                return 0
            print(f"\nRay dashboard: {devstack.RAY_DASHBOARD}   TSDB: {devstack.TSDB_URL}   Ctrl-C stops the demo.")
            time.sleep(60)
    except KeyboardInterrupt:
        return 0
    finally:
        for customer in customers:
            customer.stop()
        print("stopped the simulated clusters; `scripts/services.sh stop ray clickhouse mongodb tsdb` stops the servers")


if __name__ == "__main__":
    sys.exit(main())
