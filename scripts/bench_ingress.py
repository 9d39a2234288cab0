"""Remote-write throughput and CPU per sample: straight into the TSDB vs through the ingress.

    .venv/bin/python scripts/bench_ingress.py [--series 2000] [--bodies 8] [--rounds 50]

Both paths get the same kind of pre-built bodies (Kubecost-like label sets, encoded as
Prometheus encodes them, the same series again every round with a newer timestamp), sent
in the same way, one after the other in one run. It prints samples/s and CPU-seconds per
million samples of the ingress processes (Serve proxy and replicas) and of Prometheus,
read from /proc before and after each path. The anchor is Prometheus' own receiver on
the direct path; the targets: the ingress takes ≥ 100k samples per CPU-second and spends
no more CPU per sample than Prometheus does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from devstack import stack  # noqa: E402
from k8scost.settings import StoreSettings, from_env  # noqa: E402
from k8scost.stores.accounts import AccountStore  # noqa: E402
from k8scost.stores.mongo import connect  # noqa: E402
from serve_apps.ingress.remote_write import encode  # noqa: E402

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_METRICS = ("cloudtuner_kubecost_pod_total_cost", "cloudtuner_kubecost_pod_cpu_cost", "cloudtuner_kubecost_pod_ram_cost")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes (all their threads)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLOCK_TICKS


def ingress_pids() -> list[int]:
    """The Serve proxy and the ingress replicas."""
    actors = list_actors(address=stack.RAY_DASHBOARD, filters=[("state", "=", "ALIVE")], limit=1000)
    return [a.pid for a in actors if a.class_name == "ProxyActor" or "RemoteWriteIngress" in (a.class_name or "")]


def tsdb_pid() -> int:
    return int((stack.DATA / "run" / "tsdb.pid").read_text())


def bodies(tenant: str, path: str, series: int, count: int, rounds: int, t0_ms: int) -> list[list[bytes]]:
    """rounds × count bodies; body k of every round carries the same series, a second later each round."""
    label_sets = [
        [
            {
                "__name__": _METRICS[(k * series + i) % len(_METRICS)],
                "bench_path": path,
                "cluster": f"prod-eu-{k % 3}",
                "instance": "allocation-exporter:19090",
                "job": "cloudtuner-allocation-exporter",
                "namespace": f"team-{(k * series + i) // 20:04d}",
                "node": f"ip-10-0-{i % 16}-{k}.eu-west-1.compute.internal",
                "pod": f"api-{k:02d}-{i:05d}-7d9f8b6c5-x2x9z",
                "tenant_id": tenant,
            }
            for i in range(series)
        ]
        for k in range(count)
    ]
    return [
        [encode((labels, [(t0_ms + r * 1000, 0.0001 * (i + r))]) for i, labels in enumerate(sets)) for sets in label_sets]
        for r in range(rounds)
    ]


@dataclass
class Result:
    path: str
    samples: int
    seconds: float
    ingress_cpu: float
    tsdb_cpu: float

    @property
    def rate(self) -> float:
        return self.samples / self.seconds


async def send(url: str, rounds: list[list[bytes]], headers: dict[str, str], auth: tuple[str, str] | None) -> None:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        for round_bodies in rounds:  # rounds in order: a series' samples must arrive in time order
            answers = await asyncio.gather(*(client.post(url, content=b, headers=headers, auth=auth) for b in round_bodies))
            for answer in answers:
                if answer.status_code not in (200, 204):
                    raise SystemExit(f"{url} answered {answer.status_code}: {answer.text}")


def run_path(path: str, url: str, rounds: list[list[bytes]], series: int, headers: dict[str, str],
             auth: tuple[str, str] | None) -> Result:
    pids = ingress_pids()
    before_ingress, before_tsdb, started = cpu_seconds(pids), cpu_seconds([tsdb_pid()]), time.perf_counter()
    asyncio.run(send(url, rounds, headers, auth))
    seconds = time.perf_counter() - started
    samples = len(rounds) * len(rounds[0]) * series
    return Result(path, samples, seconds, cpu_seconds(pids) - before_ingress, cpu_seconds([tsdb_pid()]) - before_tsdb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000, help="series (= samples) per request")
    parser.add_argument("--bodies", type=int, default=8, help="requests in flight per round")
    parser.add_argument("--rounds", type=int, default=50, help="rounds; each round sends every body once")
    args = parser.parse_args()
    if min(args.series, args.bodies, args.rounds) < 1 or args.rounds > 500:
        parser.error("--series, --bodies and --rounds must be ≥ 1, --rounds ≤ 500")

    stack.services("start", "mongodb", "tsdb", "ray")
    # Production settings, but no per-tenant rate limit: the benchmark is one tenant at full speed.
    stack.deploy_serve({"INGRESS_TENANT_SAMPLES_PER_SECOND": "1e12", "INGRESS_TENANT_BURST_SAMPLES": "1e12"})
    _, credentials = asyncio.run(AccountStore(connect(from_env(StoreSettings))).create("bench", "bench cluster"))
    tenant = credentials.account_id
    t0_ms = int(time.time() * 1000) - 20 * 60 * 1000  # recent enough for the TSDB head
    print(f"building {2 * args.rounds * args.bodies} bodies of {args.series} series ...", flush=True)
    direct_rounds = bodies(tenant, "direct", args.series, args.bodies, args.rounds, t0_ms)
    ingress_rounds = bodies(tenant, "ingress", args.series, args.bodies, args.rounds, t0_ms)
    size = sum(len(b) for b in direct_rounds[0]) / args.bodies
    print(f"one body: {args.series} series, {size / 1024:.0f} KiB snappy", flush=True)

    write_headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                     "X-Prometheus-Remote-Write-Version": "0.1.0"}
    # Warm both paths (connections, the ingress's credential cache and label-set verdicts).
    warm = bodies(tenant, "warm", args.series, args.bodies, 2, t0_ms)
    asyncio.run(send(f"{stack.TSDB_URL}/api/v1/write", warm[:1], write_headers, None))
    asyncio.run(send(stack.WRITE_URL, warm[1:], {**write_headers, "Cloud-Account-Id": tenant},
                     (tenant, credentials.password)))

    direct = run_path("direct to Prometheus", f"{stack.TSDB_URL}/api/v1/write", direct_rounds, args.series,
                      write_headers, None)
    ingress = run_path("through the ingress", stack.WRITE_URL, ingress_rounds, args.series,
                       {**write_headers, "Cloud-Account-Id": tenant}, (tenant, credentials.password))

    print()
    print("| path | samples | wall s | samples/s | ingress CPU-s per 1M samples | Prometheus CPU-s per 1M samples |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in (direct, ingress):
        print(f"| {r.path} | {r.samples:,} | {r.seconds:.2f} | {r.rate:,.0f} | "
              f"{r.ingress_cpu / r.samples * 1e6:.2f} | {r.tsdb_cpu / r.samples * 1e6:.2f} |")
    per_core = ingress.samples / ingress.ingress_cpu
    prometheus_per_core = direct.samples / direct.tsdb_cpu
    print()
    print(f"ingress: {per_core:,.0f} samples per CPU-second (target ≥ 100,000)")
    print(f"Prometheus receiver: {prometheus_per_core:,.0f} samples per CPU-second (anchor ≈ 125,000)")
    print(f"ingress CPU per sample ÷ Prometheus CPU per sample: {prometheus_per_core / per_core:.2f} (target ≤ 1)")


if __name__ == "__main__":
    main()
