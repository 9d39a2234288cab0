"""Rightsizing of one tenant with 1,000 containers over 7 days: time per stage.

    .venv/bin/python scripts/bench_rightsizing.py [--namespaces 100] [--deployments 5] [--replicas 2] [--days 7]

One tenant, NAMESPACES × DEPLOYMENTS deployments of REPLICAS pods (one container each),
on 50 nodes: DAYS days (and an hour) of the exporter's container gauges and node prices,
every 5 minutes, usage following a daily cycle, are loaded into the TSDB as blocks (the
TSDB restarts; run it under the serve lock). Then the job's per-tenant function runs
twice per algorithm (max, quantile 0.95), split into query (TSDB) / compute / MongoDB
write, and once more as the job runs it: a Ray task on the local Ray (RAY_ADDRESS).
No anchor: Kubecost's requestSizingV2 reads cAdvisor series this TSDB does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devstack.stack pins Ray to loopback, which Ray reads when it is imported.
from devstack import stack
import ray

from devstack.simulator.history import SCRAPE_LABELS
from jobs.rightsizing import TenantReport, rightsize, run_tenant
from k8scost import raylocal
from k8scost.rightsizing import Algorithm, Params
from k8scost.settings import RightsizingSettings, StoreSettings, from_env
from k8scost.stores.accounts import Account
from k8scost.stores.mongo import connect

STEP = 300
NODES = 50
GIB = 2**30
C = "cloudtuner_kubecost_container_"


def write_openmetrics(path: Path, tenant: str, containers: list[tuple[str, str, str, int, int]], start: int, end: int) -> int:
    """The container gauges and node prices of [start, end); the sample count.

    Per container: a request from its deployment, and usage following a daily sine (each
    deployment its own phase and level), the peak 20 % above the hourly average.
    """
    times = range(start, end, STEP)
    scrape = ",".join(f'{k}="{v}"' for k, v in SCRAPE_LABELS.items())
    base = f'tenant_id="{tenant}",cluster="bench",{scrape}'
    samples = 0
    with path.open("w") as out:

        def family(name: str, series: list[tuple[str, list[float]]]) -> None:
            nonlocal samples
            out.write(f"# TYPE {name} gauge\n")
            for labels, values in series:
                out.write("".join(f"{name}{{{labels}}} {v!r} {t}\n" for t, v in zip(times, values)))
                samples += len(values)

        cpu: dict[str, list[tuple[str, list[float]]]] = {k: [] for k in ("request", "average", "max")}
        memory: dict[str, list[tuple[str, list[float]]]] = {k: [] for k in ("request", "average", "max")}
        for namespace, deployment, pod, spec, index in containers:
            labels = (f'{base},namespace="{namespace}",pod="{pod}",container="app",node="node-{index % NODES:02d}",'
                      f'controller_kind="deployment",controller="{deployment}"')
            level = 0.1 + spec % 10 * 0.05  # share of the request used on average
            phase = spec * 0.7 + index % 3 * 0.1  # replicas of one deployment nearly in step
            daily = [1 + 0.5 * math.sin(2 * math.pi * t / 86400 + phase) for t in times]
            request_cpu, request_memory = 0.5 + spec % 4 * 0.5, float((1 + spec % 4) * GIB)
            cpu["request"].append((labels, [request_cpu] * len(daily)))
            cpu["average"].append((labels, [round(request_cpu * level * d, 5) for d in daily]))
            cpu["max"].append((labels, [round(request_cpu * level * d * 1.2, 5) for d in daily]))
            memory["request"].append((labels, [request_memory] * len(daily)))
            memory["average"].append((labels, [float(int(request_memory * level * d)) for d in daily]))
            memory["max"].append((labels, [float(int(request_memory * level * d * 1.2)) for d in daily]))
        for kind, suffix in (("request", "request"), ("average", "usage_average"), ("max", "usage_max")):
            family(f"{C}cpu_{suffix}_cores", cpu[kind])
            family(f"{C}memory_{suffix}_bytes", memory[kind])
        nodes = [f'{base},node="node-{k:02d}"' for k in range(NODES)]
        family("cloudtuner_kubecost_node_cpu_price_per_core_hour", [(n, [0.031611] * len(times)) for n in nodes])
        family("cloudtuner_kubecost_node_ram_price_per_gib_hour", [(n, [0.004237] * len(times)) for n in nodes])
        out.write("# EOF\n")
    return samples


def load_history(tenant: str, containers: list[tuple[str, str, str, int, int]], start: int, end: int) -> int:
    samples = 0
    with tempfile.TemporaryDirectory(dir=stack.DATA) as scratch:
        blocks = Path(scratch) / "blocks"
        tenant_blocks = blocks / tenant
        chunk = 12 * 3600  # half a day a time: bounds the text file and promtool's memory
        for chunk_start in range(start, end, chunk):
            text = Path(scratch) / "chunk.om"
            samples += write_openmetrics(text, tenant, containers, chunk_start, min(end, chunk_start + chunk))
            subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(text), str(tenant_blocks)],
                           check=True, capture_output=True)
        stack.load_blocks(blocks)
    return samples


def row(title: str, report: TenantReport) -> str:
    return (f"| {title} | {report.groups:,} | {report.replicas:,} | {report.query_seconds:.2f} | "
            f"{report.compute_seconds:.2f} | {report.write_seconds:.2f} | {report.total_seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--deployments", type=int, default=5, help="deployments per namespace")
    parser.add_argument("--replicas", type=int, default=2, help="pods per deployment")
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    if min(args.namespaces, args.deployments, args.replicas) < 1 or not 1 <= args.days <= 30:
        parser.error("--namespaces, --deployments and --replicas must be ≥ 1, --days from 1 to 30")

    stack.services("start", "mongodb", "tsdb", "ray")
    tenant = f"bench-rightsizing-{uuid.uuid4().hex[:8]}"
    # (namespace, deployment, pod, deployment index, container index)
    containers = [(f"ns-{n:03d}", f"app-{d}", f"app-{d}-{n:03d}-{r}", n * args.deployments + d,
                   (n * args.deployments + d) * args.replicas + r)
                  for n in range(args.namespaces) for d in range(args.deployments) for r in range(args.replicas)]
    end = int(time.time()) // STEP * STEP - STEP
    started = time.perf_counter()
    samples = load_history(tenant, containers, end - args.days * 86400 - 3600, end + 1)
    print(f"loaded {samples:,} samples ({len(containers):,} containers, {args.days} days every {STEP} s) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)

    # A database of its own, dropped at the end: FerretDB slows down as collections grow.
    stores = from_env(StoreSettings, mongodb_database=f"bench_{uuid.uuid4().hex[:8]}")
    settings = from_env(RightsizingSettings)
    runs = [("max", Params(window_days=args.days)),
            ("quantile 0.95", Params(window_days=args.days, algorithm=Algorithm.QUANTILE, quantile=0.95))]
    print()
    print(f"| per-tenant function, {len(containers):,} containers × {args.days} days | groups | replicas | query s | "
          "compute s | MongoDB write s | total s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for name, params in runs:
            for attempt in ("first run", "rerun (replaces)"):
                report = asyncio.run(run_tenant(tenant, "bench", params, end, stores, settings))
                print(row(f"{name}, {attempt}", report), flush=True)

        raylocal.connect(stack.RAY_ADDRESS)
        account = Account(tenant, "bench", "bench cluster", "kubernetes_cnr", 0, 0)
        summary = asyncio.run(rightsize([account], runs[0][1], end, stores, settings))
        print(f"\nas the job runs it (one Ray task, max): {summary['seconds']:.2f} s wall; in the task: query "
              f"{summary['query_seconds']:.2f} s, compute {summary['compute_seconds']:.2f} s, "
              f"write {summary['write_seconds']:.2f} s; {summary['groups']:,} groups")
    finally:
        asyncio.run(_drop(stores))


async def _drop(stores: StoreSettings) -> None:
    await connect(stores).client.drop_database(stores.mongodb_database)


if __name__ == "__main__":
    main()
