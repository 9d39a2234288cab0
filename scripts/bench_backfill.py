"""Backfill of 30 days × 1,000 pods: the job against the live cycle's way, side by side.

    .venv/bin/python scripts/bench_backfill.py [--days 30] [--namespaces 50] [--pods 20] [--parallel 8]
                                               [--anchor-days 5]

Tenant A gets DAYS closed days of history (NAMESPACES × PODS pods, every 5 min), tenant B
the same pods over the last ANCHOR_DAYS of them, loaded into the TSDB as blocks. Then, in
one run:
- ours: `python -m jobs.backfill` (the real CLI: days read as parallel Ray tasks, written
  through the tenant's actor) for tenant A; then the same command again (nothing to write);
- the anchor: tenant B's actor filling its days one after another with its own cycle, the
  way the live path would (one `cycle([day])` per day); its time per day × DAYS is the
  anchor's figure (each day costs the same: the same pods, an update of each resource).
Target: the backfill ≤ 60 s on this machine. Printed: wall time, rows, time per stage
(summed over tasks, which overlap) and the ratio to the anchor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devstack.stack pins Ray to loopback, which Ray reads when it is imported.
from devstack import stack
import ray

from actors.tenant import TenantConfig
from devstack.hosted import HostedTenant
from k8scost import raylocal
from k8scost import ledger
from k8scost.settings import LedgerSettings, StoreSettings, from_env
from k8scost.stores.accounts import AccountStore
from k8scost.stores.mongo import connect
from bench_ledger import load_history  # scripts/, the script's own directory, is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--pods", type=int, default=20, help="pods per namespace")
    parser.add_argument("--parallel", type=int, default=8, help="the job's --parallel")
    parser.add_argument("--anchor-days", type=int, default=5, help="days the anchor fills, scaled to --days")
    args = parser.parse_args()
    if not 1 <= args.days <= 60 or min(args.namespaces, args.pods, args.parallel) < 1:
        parser.error("--days must be 1..60, the others ≥ 1")
    if not 1 <= args.anchor_days <= args.days:
        parser.error("--anchor-days must be between 1 and --days")

    stack.services("start", "clickhouse", "mongodb", "tsdb", "ray")
    stack.deploy_serve()
    database = f"bench_{uuid.uuid4().hex[:8]}"  # FerretDB slows with collection size: a fresh database
    stores = from_env(StoreSettings, mongodb_database=database)
    loop = asyncio.new_event_loop()
    store = AccountStore(connect(stores))
    tenant_a, _ = loop.run_until_complete(store.create("bench", "backfill"))
    tenant_b, _ = loop.run_until_complete(store.create("bench", "anchor"))
    # Closed days only: the actors' own background cycles find nothing to write.
    first = ledger.day_start(time.time()) - timedelta(days=args.days + 2)
    days = [first + timedelta(days=k) for k in range(args.days)]
    start, end = int(first.timestamp()) - 3600, int((days[-1] + timedelta(days=1)).timestamp()) + 2 * 3600
    pods = args.namespaces * args.pods
    anchor_days = days[-args.anchor_days:]
    anchor_start = int(anchor_days[0].timestamp()) - 3600
    for tenant, since, count in ((tenant_a, start, args.days), (tenant_b, anchor_start, args.anchor_days)):
        started = time.perf_counter()
        samples = load_history(tenant.id, args.namespaces, args.pods, since, end)
        print(f"loaded {samples:,} samples for a tenant ({pods:,} pods, {count} days every 5 min) "
              f"in {time.perf_counter() - started:.0f} s", flush=True)

    # The actors' own first cycle at their start, as measured before LEDGER_START_SPREAD_SECONDS,
    # not somewhere in the middle of the timed writes.
    env = {**os.environ, "MONGODB_DATABASE": database, "RAY_NAMESPACE": "bench", "CYCLE_SECONDS": "86400",
           "LEDGER_START_SPREAD_SECONDS": "0", "RAY_ADDRESS": stack.RAY_ADDRESS}
    command = [sys.executable, "-m", "jobs.backfill", "--cloud-account-id", tenant_a.id,
               "--start", days[0].date().isoformat(), "--end", (days[-1] + timedelta(days=1)).date().isoformat(),
               "--parallel", str(args.parallel)]
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        done = subprocess.run(command, cwd=stack.ROOT, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"backfill failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        runs.append((wall, json.loads(done.stdout.strip().splitlines()[-1])))

    raylocal.connect(stack.RAY_ADDRESS, "bench")
    config = TenantConfig(from_env(LedgerSettings, cycle_seconds=86400.0, start_spread_seconds=0.0), stores,
                          TenantConfig.from_env().cluster_secret)
    anchor = HostedTenant(tenant_b.id, tenant_b.organization_id, config)
    stages = {"query": 0.0, "write": 0.0}
    anchor_rows = 0
    started = time.perf_counter()
    for day in anchor_days:
        report = ray.get(anchor.cycle([day]))
        anchor_rows += report.rows_written
        stages["query"] += report.query_seconds
        stages["write"] += report.compute_seconds + report.mongodb_seconds + report.clickhouse_seconds
    scale = args.days / args.anchor_days
    anchor_wall = (time.perf_counter() - started) * scale
    ray.kill(anchor.host)

    print()
    print(f"| {args.days} days × {pods:,} pods | wall s | rows written | read s (summed) | write s (summed) | vs anchor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for title, (wall, summary) in zip(("backfill job, first run", "backfill job, rerun (nothing changed)"), runs):
        print(f"| {title}, --parallel {args.parallel} | {wall:.1f} | {summary['rows_written']:,} | "
              f"{summary['read_seconds']:.1f} | {summary['write_seconds']:.1f} | {wall / anchor_wall:.2f} |")
    print(f"| anchor: the actor's cycle, day after day ({args.anchor_days} days measured, × {scale:g}) | "
          f"{anchor_wall:.1f} | {anchor_rows * scale:,.0f} | {stages['query'] * scale:.1f} | "
          f"{stages['write'] * scale:.1f} | 1.00 |")
    if runs[0][1]["rows_written"] != anchor_rows * scale:
        sys.exit(f"the backfill wrote {runs[0][1]['rows_written']} rows, the anchor {anchor_rows} in "
                 f"{args.anchor_days} days: they must agree per day")


if __name__ == "__main__":
    main()
