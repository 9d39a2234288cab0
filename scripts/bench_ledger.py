"""Ledger cycle time for one big tenant, and what an idle tenant actor costs.

    .venv/bin/python scripts/bench_ledger.py [--namespaces 1000] [--pods 20] [--resolutions 60,300] [--idle-actors 16]

1. One tenant with NAMESPACES × PODS pods: two whole days of exporter gauges (every 5 min)
   are loaded into the TSDB as blocks, then one TenantActor runs a cycle over both days
   (cold: every resource-day new) and another right after (nothing changed: 0 rows), at
   each Metroculus integration resolution given; after the first, the first cycle is a
   restarted actor's. Each cycle's time is split into query (Metroculus + TSDB) / compute /
   MongoDB / ClickHouse. Target: ≤ 5 s, and 0 rows for the unchanged cycle.
2. IDLE_ACTORS tenant actors of tenants without data, left idle, beside as many bare Ray
   actors (the anchor) and as many tenant actors with MALLOC_ARENA_MAX=2: memory (PSS, the
   pages a process really adds) and CPU per actor over 30 s, and how many fit on a
   16-core / 64 GB node.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devstack.stack pins Ray to loopback, which Ray reads when it is imported.
from devstack import stack
import ray

from actors.tenant import TenantActor, TenantConfig
from devstack.simulator.history import SCRAPE_LABELS
from k8scost import raylocal
from k8scost import ledger
from k8scost.promql import CLUSTER_COST_METRICS
from k8scost.settings import LedgerSettings, StoreSettings, from_env
from k8scost.stores.accounts import AccountStore
from k8scost.stores.mongo import connect

STEP = 300
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_openmetrics(path: Path, tenant: str, namespaces: int, pods: int, start: int, end: int) -> int:
    """Pod, namespace, node, idle and cluster gauges of one cluster, constant rates; the sample count."""
    times = range(start, end, STEP)
    scrape = ",".join(f'{k}="{v}"' for k, v in SCRAPE_LABELS.items())
    base = f'tenant_id="{tenant}",cluster="bench",{scrape}'
    families: dict[str, list[tuple[str, float]]] = {
        "cloudtuner_kubecost_pod_total_cost": [
            (f'{base},namespace="ns-{n:04d}",pod="pod-{n:04d}-{p:02d}",node="node-{(n * pods + p) % 50:02d}",'
             f'controller_kind="deployment",controller="app-{n:04d}"', 0.01 + 0.0001 * p)
            for n in range(namespaces) for p in range(pods)
        ],
        "cloudtuner_kubecost_namespace_total_cost": [
            (f'{base},namespace="ns-{n:04d}"', sum(0.01 + 0.0001 * p for p in range(pods))) for n in range(namespaces)
        ],
        "cloudtuner_kubecost_node_total_cost": [(f'{base},node="node-{k:02d}"', 1.5) for k in range(50)],
        "cloudtuner_kubecost_idle_cost": [(base, 3.0)],
        **{name: [(base, 0.5)] for name in CLUSTER_COST_METRICS},
    }
    samples = 0
    with path.open("w") as out:
        for family, series in families.items():
            out.write(f"# TYPE {family} gauge\n")
            for labels, value in series:
                prefix = f"{family}{{{labels}}} {value!r} "
                out.write("".join(f"{prefix}{t}\n" for t in times))
                samples += len(times)
        out.write("# EOF\n")
    return samples


def load_history(tenant: str, namespaces: int, pods: int, start: int, end: int) -> int:
    samples = 0
    with tempfile.TemporaryDirectory(dir=stack.ROOT / ".data") as scratch:
        blocks = Path(scratch) / "blocks"
        chunk = 12 * 3600  # promtool gets the range half a day at a time, to bound file size
        for chunk_start in range(start, end, chunk):
            text = Path(scratch) / "chunk.om"
            samples += write_openmetrics(text, tenant, namespaces, pods, chunk_start, min(end, chunk_start + chunk))
            subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(text), str(blocks)],
                           check=True, capture_output=True)
        stack.load_blocks(blocks)
    return samples


def pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def print_cycle(title: str, resolution: int, report) -> None:
    total = report.query_seconds + report.compute_seconds + report.mongodb_seconds + report.clickhouse_seconds
    print(f"| {title} | {resolution} | {report.rows_written:,} | {report.resources_upserted:,} | {report.query_seconds:.2f} | "
          f"{report.compute_seconds:.2f} | {report.mongodb_seconds:.2f} | {report.clickhouse_seconds:.2f} | {total:.2f} |",
          flush=True)


@ray.remote(num_cpus=0)
class BareActor:
    """The anchor: a Ray actor that imports and holds nothing of ours."""

    def pid(self) -> int:
        return os.getpid()


def idle_footprint(actors: list, pids_of) -> tuple[float, float]:
    """Mean PSS (MB) and CPU (share of a core over 30 s) of ``actors``."""
    answers = ray.get([pids_of(a) for a in actors])  # a pid, or a TenantActor's status
    pids = [answer if isinstance(answer, int) else answer["pid"] for answer in answers]
    time.sleep(5)  # let a tenant actor's first cycle (no data) pass
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(30)
    cpu = sum(cpu_seconds(pid) - before[pid] for pid in pids) / len(pids) / 30
    return sum(pss_mb(pid) for pid in pids) / len(pids), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=20, help="pods per namespace")
    parser.add_argument("--resolutions", default="60,300",
                        help="METROCULUS_RESOLUTION_SECONDS values to run the cycles at, comma-separated")
    parser.add_argument("--idle-actors", type=int, default=16)
    args = parser.parse_args()
    try:
        resolutions = [int(r) for r in args.resolutions.split(",")]
    except ValueError:
        parser.error(f"--resolutions must be integers, got {args.resolutions!r}")
    if min(args.namespaces, args.pods) < 1 or not 1 <= args.idle_actors <= 200:
        parser.error("--namespaces and --pods must be ≥ 1, --idle-actors between 1 and 200")
    if any(r < 1 or STEP % r and r % STEP for r in resolutions):
        parser.error(f"each resolution must divide or be a multiple of the samples' {STEP} s")

    stack.services("start", "clickhouse", "mongodb", "tsdb", "ray")
    # A database of its own: FerretDB's inserts slow down with the size of the collection
    # (its unique-index checks), so earlier runs' documents would skew the figure.
    stores = from_env(StoreSettings, mongodb_database=f"bench_{uuid.uuid4().hex[:8]}")
    store = AccountStore(connect(stores))
    loop = asyncio.new_event_loop()
    account, _ = loop.run_until_complete(store.create("bench", "bench cluster"))
    # Two closed days, with no sample in the open days: the actor's own background cycle
    # finds nothing, and the cold cycle below creates every resource.
    first = ledger.day_start(time.time()) - timedelta(days=4)
    days = [first, first + timedelta(days=1)]
    start, end = int(first.timestamp()) - 3600, int((first + timedelta(days=2)).timestamp()) + 2 * 3600
    started = time.perf_counter()
    samples = load_history(account.id, args.namespaces, args.pods, start, end)
    pods = args.namespaces * args.pods
    print(f"loaded {samples:,} samples ({pods:,} pods, 2 days every {STEP} s) in {time.perf_counter() - started:.0f} s",
          flush=True)

    raylocal.connect(stack.RAY_ADDRESS, "bench")
    config = TenantConfig(from_env(LedgerSettings, cycle_seconds=86400.0), stores, TenantConfig.from_env().cluster_secret)
    print()
    print(f"| cycle over 2 days, {pods:,} pods | resolution s | rows written | resources upserted | query s | "
          "compute s | MongoDB s | ClickHouse s | total s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for index, resolution in enumerate(resolutions):
        stack.deploy_serve({"METROCULUS_RESOLUTION_SECONDS": str(resolution)})
        # A new actor each time: the first cycle after the first resolution is a restart,
        # which rebuilds the written rows from ClickHouse.
        actor = TenantActor.remote(account.id, account.organization_id, config)
        print_cycle("cold (all new)" if index == 0 else "restarted actor", resolution,
                    ray.get(actor.cycle.remote(days)))
        print_cycle("nothing changed", resolution, ray.get(actor.cycle.remote(days)))
        status = ray.get(actor.status.remote())
        big_tenant = f"{pss_mb(status['pid']):.0f} MB PSS holding {status['resource_days_in_memory']:,} resource-days"
        ray.kill(actor)

    print(f"\nthe big tenant's actor after its cycles: {big_tenant}")

    # Side by side, at the same moment: the anchor, our actor, our actor with fewer malloc arenas.
    count = args.idle_actors
    tenants = [TenantActor.remote(f"idle-{k}-{account.id}", "bench", config) for k in range(count)]
    lean = [TenantActor.options(runtime_env={"env_vars": {"MALLOC_ARENA_MAX": "2"}}).remote(
        f"lean-{k}-{account.id}", "bench", config) for k in range(count)]
    bare = [BareActor.remote() for _ in range(count)]
    footprints = {
        "bare Ray actor (anchor)": idle_footprint(bare, lambda a: a.pid.remote()),
        "TenantActor": idle_footprint(tenants, lambda a: a.status.remote()),
        "TenantActor, MALLOC_ARENA_MAX=2": idle_footprint(lean, lambda a: a.status.remote()),
    }
    for a in tenants + lean + bare:
        ray.kill(a)
    anchor_mb, _ = footprints["bare Ray actor (anchor)"]
    print()
    print(f"| idle actor (mean of {count}) | PSS MB | vs anchor | CPU % of a core | fit in 80 % of 64 GB | fit on 16 cores |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (memory, cpu) in footprints.items():
        print(f"| {name} | {memory:.1f} | {memory / anchor_mb:.2f} | {cpu * 100:.2f} | "
              f"{int(64 * 1024 * 0.8 / memory):,} | {int(16 / max(cpu, 1e-9)):,} |")


if __name__ == "__main__":
    main()
