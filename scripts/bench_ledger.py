"""Ledger cycle time for one big tenant, incremental against full-window.

    .venv/bin/python scripts/bench_ledger.py [--namespaces 1000] [--pods 20] [--resolutions 60] [--cycles 8]

1. One tenant with NAMESPACES × PODS pods, as a live tenant looks: its exporter's gauges
   (every 5 min) from an hour before yesterday on, where production's TSDB has them: up
   to the 2-hour block boundary 2–4 hours back as blocks in the bucket (the Store
   Gateway's), the rest written to Receive (its head: Receive cuts a block every 2 hours);
   from then on a sender writes one sample of every series (the exporter's next scrape)
   before each cycle, so every cycle has today's costs to update. At each
   Metroculus integration resolution given, a tenant in LEDGER_MODE=full (on a host of its own) runs its
   first cycle (the run's first: every resource-day new; later: a restart, which rebuilds
   its rows from ClickHouse) and CYCLES steady ones; then, on the same tenant (one writer at
   a time), a tenant in LEDGER_MODE=incremental runs its first cycle (a settle: the open
   days read whole) and CYCLES steady ones (the new hours only). Steady cycles run twice
   CYCLES times: after a scrape each (every resource's cost of today changes: 2 rows
   each), then with nothing new (0 rows). Each cycle's time is split
   into query (Metroculus + TSDB) / compute / MongoDB / ClickHouse, beside the TSDB's CPU
   seconds in it (utime + stime of the TSDB's processes, less their CPU with no query and no write
   over as long, measured before the cycles). Targets: a steady incremental cycle
   ≤ 1 s, and ≥ 10× less TSDB CPU than a full one.

What tenants cost at rest, and how many a node holds: scripts/bench_tenants.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devstack.stack pins Ray to loopback, which Ray reads when it is imported.
from devstack import stack
import httpx
import ray

from actors.tenant import CycleReport, TenantConfig
from devstack.hosted import HostedTenant
from devstack.simulator.history import SCRAPE_LABELS
from k8scost import raylocal
from k8scost import ledger
from k8scost.promql import CLUSTER_COST_METRICS
from k8scost.settings import DAY, LedgerSettings, StoreSettings, from_env
from k8scost.stores.accounts import AccountStore
from k8scost.stores.mongo import connect

STEP = 300
BLOCK_SECONDS = 7200  # Receive's block length (--tsdb.min-block-duration, 2 h by default)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Steady cycles: after a scrape of every series (today's costs change), and with nothing new.
VARIANTS = ("new samples", "nothing new")


def gauges(tenant: str, namespaces: int, pods: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Pod, namespace, node, idle and cluster gauges of one cluster, constant rates: per family, (labels, rate)."""
    base = {"tenant_id": tenant, "cluster": "bench", **SCRAPE_LABELS}
    return {
        "cloudtuner_kubecost_pod_total_cost": [
            ({**base, "namespace": f"ns-{n:04d}", "pod": f"pod-{n:04d}-{p:02d}", "node": f"node-{(n * pods + p) % 50:02d}",
              "controller_kind": "deployment", "controller": f"app-{n:04d}"}, 0.01 + 0.0001 * p)
            for n in range(namespaces) for p in range(pods)
        ],
        "cloudtuner_kubecost_namespace_total_cost": [
            ({**base, "namespace": f"ns-{n:04d}"}, sum(0.01 + 0.0001 * p for p in range(pods))) for n in range(namespaces)
        ],
        "cloudtuner_kubecost_node_total_cost": [({**base, "node": f"node-{k:02d}"}, 1.5) for k in range(50)],
        "cloudtuner_kubecost_idle_cost": [(base, 3.0)],
        **{name: [(base, 0.5)] for name in CLUSTER_COST_METRICS},
    }


def write_openmetrics(path: Path, families: dict[str, list[tuple[dict[str, str], float]]], start: int, end: int) -> int:
    """``families``' samples every STEP s of [start, end) as OpenMetrics text; the sample count."""
    times = range(start, end, STEP)
    samples = 0
    with path.open("w") as out:
        for family, series in families.items():
            out.write(f"# TYPE {family} gauge\n")
            for labels, value in series:
                rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
                prefix = f"{family}{{{rendered}}} {value!r} "
                out.write("".join(f"{prefix}{t}\n" for t in times))
                samples += len(times)
        out.write("# EOF\n")
    return samples


def write_history_blocks(families: dict[str, list[tuple[dict[str, str], float]]], start: int, end: int,
                         blocks: Path) -> int:
    """``families``' samples every STEP s of [start, end) as TSDB blocks in ``blocks``; the sample count."""
    samples = 0
    with tempfile.TemporaryDirectory(dir=stack.DATA) as scratch:
        chunk = 12 * 3600  # promtool gets the range half a day at a time, to bound file size
        for chunk_start in range(start, end, chunk):
            text = Path(scratch) / "chunk.om"
            samples += write_openmetrics(text, families, chunk_start, min(end, chunk_start + chunk))
            subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(text), str(blocks)],
                           check=True, capture_output=True)
    return samples


def load_history(tenant: str, families: dict[str, list[tuple[dict[str, str], float]]], start: int, end: int) -> int:
    with tempfile.TemporaryDirectory(dir=stack.DATA) as scratch:
        samples = write_history_blocks(families, start, end, Path(scratch) / tenant)
        stack.load_blocks(Path(scratch))
    return samples


def send(families: dict[str, list[tuple[dict[str, str], float]]], times_ms: Sequence[int]) -> None:
    """Samples of every series at ``times_ms`` straight into the TSDB, as its exporter's scrapes would land."""
    series = [({"__name__": family, **labels}, [(t, value) for t in times_ms])
              for family, members in families.items() for labels, value in members]
    with httpx.Client() as http:
        for first in range(0, len(series), 5000):
            stack.write_samples(series[first:first + 5000], http)


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


def tsdb_cpu_seconds() -> float:
    """CPU seconds of the TSDB's processes so far (Thanos: Receive, Store Gateway, Query, Compactor)."""
    return sum(cpu_seconds(pid) for pid in stack.tsdb_pids())


def tsdb_idle_rate(seconds: float = 20.0) -> float:
    """The TSDB's CPU seconds per second with no query and no write: Receive's upkeep of
    every tenant it holds (a quarter of a core on a dev machine with hundreds of test
    tenants), which a cycle's figure must not be charged with."""
    before, started = tsdb_cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return (tsdb_cpu_seconds() - before) / (time.perf_counter() - started)


def timed_cycle(actor, idle_rate: float) -> tuple[CycleReport, float]:
    """One cycle of ``actor`` and the TSDB's CPU seconds it took, its idle upkeep meanwhile taken off."""
    before, started = tsdb_cpu_seconds(), time.perf_counter()
    report = ray.get(actor.cycle())
    return report, tsdb_cpu_seconds() - before - idle_rate * (time.perf_counter() - started)


def total_seconds(report: CycleReport) -> float:
    return report.query_seconds + report.compute_seconds + report.mongodb_seconds + report.clickhouse_seconds


def print_cycle(title: str, resolution: int, report: CycleReport, tsdb_cpu: float) -> None:
    print(f"| {title} | {resolution} | {report.read} | {report.hours_read:.0f} | {report.rows_written:,} | "
          f"{report.resources_upserted:,} | {report.query_seconds:.2f} | {report.compute_seconds:.2f} | "
          f"{report.mongodb_seconds:.2f} | {report.clickhouse_seconds:.2f} | {total_seconds(report):.2f} | "
          f"{tsdb_cpu:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=20, help="pods per namespace")
    parser.add_argument("--resolutions", default="60",
                        help="METROCULUS_RESOLUTION_SECONDS values to run the cycles at, comma-separated")
    parser.add_argument("--cycles", type=int, default=8, help="steady cycles per mode and resolution")
    args = parser.parse_args()
    try:
        resolutions = [int(r) for r in args.resolutions.split(",")]
    except ValueError:
        parser.error(f"--resolutions must be integers, got {args.resolutions!r}")
    if min(args.namespaces, args.pods, args.cycles) < 1:
        parser.error("--namespaces, --pods and --cycles must be ≥ 1")
    if any(r < 1 or STEP % r and r % STEP or ledger.HOUR % r for r in resolutions):
        parser.error(f"each resolution must divide an hour, and divide or be a multiple of the samples' {STEP} s")

    stack.services("start", "clickhouse", "mongodb", "tsdb", "ray")
    # A database of its own: FerretDB's inserts slow down with the size of the collection
    # (its unique-index checks), so earlier runs' documents would skew the figure.
    stores = from_env(StoreSettings, mongodb_database=f"bench_{uuid.uuid4().hex[:8]}")
    store = AccountStore(connect(stores))
    loop = asyncio.new_event_loop()
    account, _ = loop.run_until_complete(store.create("bench", "bench cluster"))
    families = gauges(account.id, args.namespaces, args.pods)
    # The open days as a live tenant has them: from an hour before yesterday (the exporter
    # averages an hour back) up to now.
    now = int(time.time())
    start = int(ledger.open_days(now, 2)[0].timestamp()) - 3600
    started = time.perf_counter()
    head_from = now - now % BLOCK_SECONDS - BLOCK_SECONDS
    samples = load_history(account.id, families, start, head_from)
    send(families, range(head_from * 1000, (now - now % STEP + 1) * 1000, STEP * 1000))
    pods = args.namespaces * args.pods
    print(f"loaded {samples:,} samples as blocks and {(now - now % STEP - head_from) // STEP + 1} of each series "
          f"into Receive ({pods:,} pods, {(now - start) / 86400:.1f} days every {STEP} s) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    # The minutes since the last of those, as the exporter's scrapes sent them meanwhile.
    send(families, range((now - now % STEP + 60) * 1000, int(time.time() * 1000), 60_000))
    scrapes = iter(range(1, 1_000_000))

    def scrape() -> None:
        """A sample of every series now, each rate 1 % up from the last: today's costs change for every resource."""
        scale = 1 + next(scrapes) / 100
        send({family: [(labels, value * scale) for labels, value in members] for family, members in families.items()},
             [int(time.time() * 1000)])

    raylocal.connect(stack.RAY_ADDRESS, "bench")
    idle_rate = tsdb_idle_rate()
    print(f"the TSDB's CPU with no query and no write, taken off each cycle's: {idle_rate:.2f} s per s", flush=True)
    secret = TenantConfig.from_env().cluster_secret
    print()
    print(f"| cycle, open days of {pods:,} pods | resolution s | read | hours read | rows written | resources upserted | "
          "query s | compute s | MongoDB s | ClickHouse s | total s | TSDB CPU s |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    steady: dict[tuple[int, str, str], list[tuple[CycleReport, float]]] = {}
    first: dict[tuple[int, str], tuple[CycleReport, float]] = {}
    for index, resolution in enumerate(resolutions):
        stack.deploy_serve({"METROCULUS_RESOLUTION_SECONDS": str(resolution)})
        for mode in ("full", "incremental"):  # full first: the run's first cycle creates every resource-day
            config = TenantConfig(from_env(LedgerSettings, cycle_seconds=86400.0, mode=mode, start_spread_seconds=0.0),
                                  stores, secret)
            # One writer at a time: each mode's host replaces the other's. The tenant's loop runs the
            # first cycle at start (no spread: one tenant), which rebuilds the written rows from ClickHouse.
            scrape()
            before, started = tsdb_cpu_seconds(), time.perf_counter()
            actor = HostedTenant(account.id, account.organization_id, config)
            status = stack.wait_for("the tenant's first cycle", lambda: (s := ray.get(actor.status()))["cycles"] and s,
                                    timeout=600, interval=0.2)
            first[resolution, mode] = (CycleReport(**status["last_report"]),
                                       tsdb_cpu_seconds() - before - idle_rate * (time.perf_counter() - started))
            title = "cold (all new)" if index == 0 and mode == "full" else "first after a (re)start"
            print_cycle(f"{mode}: {title}", resolution, *first[resolution, mode])
            for variant in VARIANTS:
                for _ in range(args.cycles):
                    if variant == "new samples":
                        scrape()
                    report, cpu = timed_cycle(actor, idle_rate)
                    steady.setdefault((resolution, mode, variant), []).append((report, cpu))
                    print_cycle(f"{mode}: steady, {variant}", resolution, report, cpu)
            status = ray.get(actor.status())
            big_tenant = f"{pss_mb(status['pid']):.0f} MB PSS holding {status['resource_days_in_memory']:,} resource-days"
            ray.kill(actor.host)

    print()
    print("| steady cycle, median | resolution s | full s | incremental s | ratio | full TSDB CPU s | "
          "incremental TSDB CPU s | ratio | incremental with its settles (every LEDGER_SETTLE_SECONDS and at each "
          "day's close), TSDB CPU s per cycle | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    # At the defaults, a settle (a full read) every LEDGER_SETTLE_SECONDS and one as a day
    # closes; none for late samples, which a sender keeping up never sends.
    defaults = from_env(LedgerSettings)
    per_settle = max(1, round(1 / (defaults.cycle_seconds / defaults.settle_seconds + defaults.cycle_seconds / DAY)))
    for resolution in resolutions:
        for variant in VARIANTS:
            full, incremental = (steady[resolution, mode, variant] for mode in ("full", "incremental"))
            full_s, incremental_s = (statistics.median(total_seconds(r) for r, _ in runs) for runs in (full, incremental))
            full_cpu, incremental_cpu = (statistics.median(cpu for _, cpu in runs) for runs in (full, incremental))
            amortized = (first[resolution, "incremental"][1] + (per_settle - 1) * incremental_cpu) / per_settle
            print(f"| {pods:,} pods, open days, {variant} | {resolution} | {full_s:.2f} | {incremental_s:.2f} | "
                  f"{full_s / incremental_s:.1f} | {full_cpu:.2f} | {incremental_cpu:.2f} | "
                  f"{full_cpu / max(incremental_cpu, 1 / CLOCK_TICKS):.1f} | {amortized:.2f} | {full_cpu / amortized:.1f} |")

    print(f"\nthe big tenant's host after its cycles: {big_tenant}")


if __name__ == "__main__":
    main()
