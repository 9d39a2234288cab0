"""The ledger's TSDB reads of a big tenant on Thanos Query against Prometheus 2.42, the same samples, one run.

    .venv/bin/python scripts/bench_tsdb_reads.py [--namespaces 1000] [--pods 20] [--repeats 5]

The tenant of scripts/bench_ledger.py (NAMESPACES × PODS pods of one cluster, its exporter's
gauges every 5 minutes over the open days up to now) is loaded into both TSDBs: as blocks
uploaded to the local Thanos bucket (devstack.stack.load_blocks: the Store Gateway serves
them) and into a private Prometheus 2.42 (the stand-in TSDB before Thanos), as the same
blocks moved in before it starts. Metroculus's class runs in-process once per TSDB (no Ray,
no Serve: the same code, only its TSDB_URL differs) and is asked, REPEATS times each, in
turn, what a ledger cycle asks (actors/tenant.py):

- a settle or a full-mode cycle: every open day read whole (``query_daily_costs``);
- an incremental cycle's steady read: the last closed hour (``read_costs``, one hour).

It prints each read's wall time (median, and min–max) and the TSDB's CPU seconds per read
(Thanos: Query + Store Gateway + Receive; Prometheus: its one process), and the ratios
Thanos ÷ Prometheus. Both must answer the same costs, to 1e-9.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from bench_freshness import asgi  # noqa: E402
from bench_ledger import STEP, cpu_seconds, gauges, tsdb_cpu_seconds, write_history_blocks  # noqa: E402
from devstack import stack  # noqa: E402
from devstack.simulator.history import load_into  # noqa: E402
from k8scost import ledger  # noqa: E402
from k8scost.metroculus_client import MetroculusClient  # noqa: E402
from k8scost.ledger import HOUR  # noqa: E402
from k8scost.settings import LedgerSettings, from_env  # noqa: E402


async def run(tsdbs: dict[str, str], cpu: dict[str, Callable[[], float]], tenant: str, days: list[datetime],
              repeats: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Metroculus's Serve class in-process over each TSDB (only its TSDB_URL differs), measured."""
    from serve_apps.metroculus import app as metroculus_app

    os.environ["CLUSTER_SECRET"] = secret = uuid.uuid4().hex
    replicas, clients = [], {}
    for name, url in tsdbs.items():
        os.environ["TSDB_URL"] = url  # read when the class is built
        replicas.append(metroculus_app.Metroculus.func_or_class())
        clients[name] = MetroculusClient("http://metroculus.bench/metroculus", secret,
                                         transport=httpx.ASGITransport(app=asgi(replicas[-1], "/metroculus")))
    try:
        return await measure(clients, cpu, tenant, days, repeats)
    finally:
        for replica, client in zip(replicas, clients.values()):
            await client.aclose()
            await replica.tsdb.aclose()


async def measure(clients: dict[str, MetroculusClient], cpu: dict[str, Callable[[], float]], tenant: str,
                  days: list[datetime], repeats: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(read, TSDB) → [(wall s, TSDB CPU s)] of each read, the TSDBs asked in turn."""
    from actors.tenant import query_daily_costs, read_costs

    settings = from_env(LedgerSettings)
    hour_end = int(time.time()) // HOUR * HOUR - HOUR  # closed, and past the rate lag
    reads = {
        "open days, each read whole (settle / full cycle)":
            lambda client: query_daily_costs(client, tenant, days, settings),
        "the last closed hour (incremental cycle)":
            lambda client: read_costs(client, tenant, [ledger.Read(hour_end - HOUR, hour_end, HOUR)],
                                      settings.rate_lag_seconds),
    }
    answers: dict[tuple[str, str], object] = {}
    timings: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name, read in reads.items():
        for name_tsdb, client in clients.items():
            answers[name, name_tsdb] = await read(client)  # warm: connections, the Store Gateway's caches
        for _ in range(repeats):
            for name_tsdb, client in clients.items():
                before, started = cpu[name_tsdb](), time.perf_counter()
                await read(client)
                timings.setdefault((name, name_tsdb), []).append((time.perf_counter() - started, cpu[name_tsdb]() - before))
        thanos, prometheus = (answers[name, t] for t in clients)
        if name.startswith("open days"):
            # Today's costs still grow while its last samples are within the lookback: compare the closed days.
            closed = [k for k in prometheus.costs if k[1] != days[-1]]
            assert thanos.costs.keys() == prometheus.costs.keys(), "Thanos and Prometheus answer other resources"
            worst = max(abs(thanos.costs[k] - prometheus.costs[k]) / max(abs(prometheus.costs[k]), 1e-12)
                        for k in closed)
            print(f"{name}: {len(prometheus.costs):,} resource-days; the {len(closed):,} of closed days the same on "
                  f"both (largest relative difference {worst:.1e})", flush=True)
            assert worst < 1e-9
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=20, help="pods per namespace")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if min(args.namespaces, args.pods, args.repeats) < 1:
        parser.error("--namespaces, --pods and --repeats must be ≥ 1")

    stack.services("start", "tsdb")
    tenant = str(uuid.uuid4())
    now = int(time.time())
    days = ledger.open_days(now, from_env(LedgerSettings).open_days)
    start, end = int(days[0].timestamp()) - HOUR, now - now % STEP  # the exporter averages an hour back
    with tempfile.TemporaryDirectory(dir=stack.DATA) as scratch_dir:
        scratch = Path(scratch_dir)
        started = time.perf_counter()
        samples = write_history_blocks(gauges(tenant, args.namespaces, args.pods), start, end,
                                       scratch / "thanos" / tenant)
        print(f"{samples:,} samples of {args.namespaces * args.pods:,} pods over {len(days)} open days, "
              f"blocks written in {time.perf_counter() - started:.0f} s", flush=True)
        shutil.copytree(scratch / "thanos" / tenant, scratch / "prometheus-blocks")
        port = stack.free_port()
        data = scratch / "prometheus"
        data.mkdir()
        (scratch / "prometheus.yml").write_text("global: {}\n")
        load_into(data, scratch / "prometheus-blocks")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={scratch / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=400d", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            stack.load_blocks(scratch / "thanos")
            stack.wait_until_answers(f"http://127.0.0.1:{port}/-/ready", timeout=300, process=prometheus)
            timings = asyncio.run(run({"Thanos Query": stack.TSDB_URL, "Prometheus 2.42": f"http://127.0.0.1:{port}"},
                                      {"Thanos Query": tsdb_cpu_seconds,
                                       "Prometheus 2.42": lambda: cpu_seconds(prometheus.pid)},
                                      tenant, days, args.repeats))
        finally:
            prometheus.terminate()
            prometheus.wait(60)

    print()
    print("| read | TSDB | wall s, median (min–max) | TSDB CPU s, median |")
    print("| --- | --- | ---: | ---: |")
    for (read, tsdb), runs in timings.items():
        walls = [wall for wall, _ in runs]
        print(f"| {read} | {tsdb} | {statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f}) | "
              f"{statistics.median(c for _, c in runs):.2f} |")
    print()
    for read in dict.fromkeys(r for r, _ in timings):
        thanos, prom = (statistics.median(w for w, _ in timings[read, t]) for t in ("Thanos Query", "Prometheus 2.42"))
        thanos_cpu, prom_cpu = (statistics.median(c for _, c in timings[read, t]) for t in ("Thanos Query", "Prometheus 2.42"))
        print(f"{read}: Thanos ÷ Prometheus wall {thanos / prom:.2f}, TSDB CPU {thanos_cpu / max(prom_cpu, 0.01):.2f}")


if __name__ == "__main__":
    main()
