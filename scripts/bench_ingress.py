"""Remote-write throughput and CPU per sample: straight into Thanos Receive vs through the ingress.

    .venv/bin/python scripts/bench_ingress.py [--series 2000] [--bodies 8] [--rounds 50]
    .venv/bin/python scripts/bench_ingress.py --mix cluster [--containers 2000] [--rounds 8] [--samples-per-send N] [--in-process]

Both paths get the same kind of pre-built bodies (Kubecost-like label sets, encoded as
Prometheus encodes them, the same series again every round with a newer timestamp), sent
in the same way, in one run, their rounds interleaved. It prints samples/s and CPU-seconds per
million samples of the ingress processes (Serve proxy and replicas) and of Thanos Receive
(the TSDB's front door, where the ingress forwards), read from /proc before and after each
path. The anchor is Receive's own receiver on the direct path; the targets: the ingress
takes ≥ 100k samples per CPU-second and spends no more CPU per sample than Receive does.

``--mix cluster`` sends a realistic mix instead: one simulated cluster of about
``--containers`` containers (devstack/simulator) scraped every 15 s, its cAdvisor,
kube-state-metrics and node-exporter series relabelled by the shipped configuration
(k8scost/usage_series.py), in bodies of the shipped ``max_samples_per_send`` (or ``--samples-per-send``), a round per
scrape. These series carry no ``tenant_id``: the ingress adds it to every one, so it
re-encodes every body. ``--in-process`` measures the codec and tenant police alone
(``TenantPolice.police``, this process's CPU; no Ray, no Serve: the Serve proxy and HTTP
are not counted) beside the same bodies sent straight to the TSDB (its CPU, the anchor);
without it, both paths as above, through Serve.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import yaml  # noqa: E402

from devstack import stack  # noqa: E402
from devstack.simulator import Estate, generate_estate  # noqa: E402
from devstack.simulator.customer import REMOTE_WRITE_TEMPLATE, write_relabel  # noqa: E402
from devstack.simulator.usage import UsageExporters  # noqa: E402
from k8scost.settings import StoreSettings, from_env  # noqa: E402
from k8scost.stores.accounts import AccountStore  # noqa: E402
from k8scost.stores.mongo import connect  # noqa: E402
from k8scost.usage_series import USAGE_FAMILIES, write_relabel_configs  # noqa: E402
from serve_apps.ingress.remote_write import Limits, TenantPolice, encode  # noqa: E402

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
    """Serve's front (HAProxy, the actor that runs it, and the Python proxy behind it as
    fallback) and the ingress replicas."""
    from ray.util.state import list_actors  # only the Serve path needs Ray

    actors = list_actors(address=stack.RAY_DASHBOARD, filters=[("state", "=", "ALIVE")], limit=1000)
    front = {"ProxyActor", "HAProxyManager"}
    pids = [a.pid for a in actors if a.class_name in front or "RemoteWriteIngress" in (a.class_name or "")]
    return pids + [int(comm.parent.name) for comm in Path("/proc").glob("[0-9]*/comm") if _read(comm) == "haproxy\n"]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the process ended meanwhile
        return ""


def tsdb_pid() -> int:
    return int((stack.DATA / "run" / "thanos-receive.pid").read_text())


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


SCRAPE_SECONDS = 15


def cluster_mix(containers: int, rounds: int, t0_ms: int, extra: dict[str, str],
                per_body: int) -> tuple[list[list[bytes]], int, int]:
    """Bodies of one cluster's usage series, a round per 15-s scrape, as the shipped
    configuration sends them; with the series and the containers they stand for."""
    namespaces, t0 = 40, t0_ms / 1000

    def running(pods_per_namespace: int) -> tuple[Estate, int]:
        estate = generate_estate(15, namespaces_per_cluster=namespaces, nodes_per_cluster=max(3, containers // 40),
                                 pods_per_namespace=pods_per_namespace, start=t0 - 2 * 86400, span_seconds=2 * 86400)
        return estate, sum(len(pod.containers) for ns in estate.clusters[0].namespaces for pod in ns.pods
                           if pod.start <= t0 and (pod.end is None or pod.end > t0))

    # 1.5 containers per pod on average (devstack/simulator/spec.py's sidecars); some pods
    # have ended or not started yet at t0: sized again on the first try's share running.
    pods = max(1, round(containers / 1.5 / namespaces))
    estate, live = running(pods)
    if live < containers:
        estate, live = running(max(pods, round(pods * containers / max(live, 1))))
    [cluster] = estate.clusters
    exporters = UsageExporters(estate, cluster.name)
    relabel = write_relabel_configs()
    out = []
    for r in range(rounds):
        t_ms = t0_ms + r * SCRAPE_SECONDS * 1000
        sent = []
        for labels, value in exporters.series(t_ms / 1000):
            scraped = {**labels, "job": USAGE_FAMILIES[labels["__name__"]].source, "instance": "10.0.0.1:10250"}
            kept = write_relabel(scraped, relabel)
            if kept is not None:
                sent.append(({**kept, **extra}, [(t_ms, value)]))
        # Prometheus shards series over its queues by hash; one round is a scrape of every series.
        sent.sort(key=lambda series: hash(tuple(sorted(series[0].items()))))
        out.append([encode(sent[i:i + per_body]) for i in range(0, len(sent), per_body)])
    return out, len(sent), live


def police_cpu(tenant: str, rounds: list[list[bytes]], t0_ms: int) -> tuple[float, float]:
    """CPU seconds of this process policing the first round (every series new), then the others."""
    police = TenantPolice(tenant, Limits())
    timings = []
    for r, round_bodies in enumerate(rounds):
        started = time.process_time()
        for body in round_bodies:
            police.police(body, t0_ms + r * SCRAPE_SECONDS * 1000)
        timings.append(time.process_time() - started)
    return timings[0], sum(timings[1:])


def main_cluster_mix(args: argparse.Namespace) -> None:
    # In-process, only the TSDB (the anchor) is needed, and it must already run.
    if not args.in_process:
        stack.services("start", "mongodb", "tsdb")
    t0_ms = int(time.time() * 1000) - args.rounds * SCRAPE_SECONDS * 1000 - 60_000  # the rounds end a minute ago
    print(f"building {args.rounds} scrapes of a {args.containers}-container cluster ...", flush=True)
    direct_rounds, series, containers = cluster_mix(args.containers, args.rounds, t0_ms, {"bench_path": "direct"},
                                                    args.samples_per_send)
    ingress_rounds, _, _ = cluster_mix(args.containers, args.rounds, t0_ms, {}, args.samples_per_send)
    bodies_per_round = len(ingress_rounds[0])
    size = sum(len(b) for b in ingress_rounds[0]) / bodies_per_round
    print(f"{containers} running containers, {series} series ({series / containers:.1f} per container) per scrape; "
          f"{bodies_per_round} bodies per scrape, {size / 1024:.0f} KiB snappy each; "
          f"{series / SCRAPE_SECONDS:,.0f} samples/s per cluster", flush=True)
    write_headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                     "X-Prometheus-Remote-Write-Version": "0.1.0"}
    samples = series * (args.rounds - 1)
    rows = []
    if args.in_process:
        tenant = str(uuid.uuid4())
        direct_headers = {**write_headers, stack.TENANT_HEADER: tenant}
        cold, warm = police_cpu(tenant, ingress_rounds, t0_ms)
        rows.append(("ingress codec + police, in-process (first scrape: every series new)", series, cold, "—"))
        rows.append(("ingress codec + police, in-process (later scrapes)", samples, warm, "—"))
        asyncio.run(send(stack.TSDB_WRITE_URL, direct_rounds[:1], direct_headers, None))
        [direct] = run_paths(Path_("direct", stack.TSDB_WRITE_URL, direct_rounds[1:], samples, direct_headers, pids=[]))
        rows.append(("direct to Thanos Receive (anchor), later scrapes", direct.samples, "—", direct.tsdb_cpu))
    else:
        stack.services("start", "ray")
        stack.deploy_serve({"INGRESS_TENANT_SAMPLES_PER_SECOND": "1e12", "INGRESS_TENANT_BURST_SAMPLES": "1e12"})
        _, credentials = asyncio.run(AccountStore(connect(from_env(StoreSettings))).create("bench", "bench cluster"))
        tenant = credentials.account_id
        auth_headers = {**write_headers, "Cloud-Account-Id": tenant}
        direct_headers = {**write_headers, stack.TENANT_HEADER: tenant}
        asyncio.run(send(stack.TSDB_WRITE_URL, direct_rounds[:1], direct_headers, None))
        asyncio.run(send(stack.WRITE_URL, ingress_rounds[:1], auth_headers, (tenant, credentials.password)))
        idle = idle_cores(ingress_pids(), [tsdb_pid()])
        direct, ingress = run_paths(
            Path_("direct", stack.TSDB_WRITE_URL, direct_rounds[1:], samples, direct_headers),
            Path_("ingress", stack.WRITE_URL, ingress_rounds[1:], samples, auth_headers, (tenant, credentials.password)))
        rows.append(("through the ingress (Serve proxy + replicas), later scrapes", ingress.samples, ingress.ingress_cpu,
                     ingress.tsdb_cpu))
        rows.append(("direct to Thanos Receive (anchor), later scrapes", direct.samples, "—", direct.tsdb_cpu))
    print()
    print("| path | samples | ingress CPU-s per 1M samples | Receive CPU-s per 1M samples |")
    print("| --- | ---: | ---: | ---: |")
    for path, n, ingress_cpu, tsdb_cpu in rows:
        cells = [f"{cpu / n * 1e6:.2f}" if isinstance(cpu, float) else cpu for cpu in (ingress_cpu, tsdb_cpu)]
        print(f"| {path} | {n:,} | {cells[0]} | {cells[1]} |")
    ours = rows[-2] if not args.in_process else rows[1]
    anchor = rows[-1]
    print()
    print(f"ingress: {ours[1] / ours[2]:,.0f} samples per CPU-second; Thanos Receive: "
          f"{anchor[1] / anchor[3]:,.0f}; ratio of CPU per sample, ingress ÷ Receive (target ≤ 1): "
          f"{(ours[2] / ours[1]) / (anchor[3] / anchor[1]):.2f}")
    print(f"a {containers}-container cluster at a 15 s scrape: {series / SCRAPE_SECONDS:,.0f} samples/s, "
          f"{series / SCRAPE_SECONDS * ours[2] / ours[1]:.3f} ingress CPU-cores")
    if not args.in_process:
        # Both sides burn CPU with no writes at all (Ray's and Serve's loops; Receive's per-tenant
        # heads, more the more tenants it holds), which the figures above count for as long as
        # each path's rounds took; the same ratio without it:
        ours_net = ingress.ingress_cpu - idle[0] * ingress.seconds
        anchor_net = direct.tsdb_cpu - idle[1] * direct.seconds
        print(f"idle, no writes: the ingress's processes {idle[0]:.1%} of a core, Receive {idle[1]:.1%}; net of it "
              f"(× each path's {ingress.seconds:.1f} s / {direct.seconds:.1f} s): ingress {ours_net / samples * 1e6:.2f}, "
              f"Receive {anchor_net / samples * 1e6:.2f} CPU-s per 1M samples, ratio {ours_net / anchor_net:.2f}")


def idle_cores(ours: list[int], tsdb: list[int], seconds: float = 10.0) -> tuple[float, float]:
    """Cores the two groups of processes use while nothing is written."""
    before = cpu_seconds(ours), cpu_seconds(tsdb)
    time.sleep(seconds)
    return (cpu_seconds(ours) - before[0]) / seconds, (cpu_seconds(tsdb) - before[1]) / seconds


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


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64))


async def _send_round(client: httpx.AsyncClient, url: str, bodies: list[bytes], headers: dict[str, str],
                      auth: tuple[str, str] | None) -> None:
    answers = await asyncio.gather(*(client.post(url, content=b, headers=headers, auth=auth) for b in bodies))
    for answer in answers:
        if answer.status_code not in (200, 204):
            raise SystemExit(f"{url} answered {answer.status_code}: {answer.text}")


async def send(url: str, rounds: list[list[bytes]], headers: dict[str, str], auth: tuple[str, str] | None) -> None:
    async with _client() as client:
        for round_bodies in rounds:  # rounds in order: a series' samples must arrive in time order
            await _send_round(client, url, round_bodies, headers, auth)


@dataclass
class Path_:
    """One way in: where, what (rounds of bodies, ``samples`` in all), and whose CPU counts as ours."""

    name: str
    url: str
    rounds: list[list[bytes]]
    samples: int
    headers: dict[str, str]
    auth: tuple[str, str] | None = None
    pids: list[int] | None = None  # default: the ingress's


def run_paths(*paths: Path_) -> list[Result]:
    """Send the paths' rounds interleaved (round 1 of each, round 2 of each, ...), so the TSDB's
    background work (head compaction, WAL) and the machine's noise fall on every path alike;
    the CPU of each path's ``pids`` and of the TSDB while its rounds were in flight."""
    pids = [ingress_pids() if path.pids is None else path.pids for path in paths]
    ours, tsdb, seconds = [0.0] * len(paths), [0.0] * len(paths), [0.0] * len(paths)

    async def run() -> None:
        clients = [_client() for _ in paths]
        try:
            for r in range(max(len(path.rounds) for path in paths)):
                for i, path in enumerate(paths):
                    if r >= len(path.rounds):
                        continue
                    before, before_tsdb, started = cpu_seconds(pids[i]), cpu_seconds([tsdb_pid()]), time.perf_counter()
                    await _send_round(clients[i], path.url, path.rounds[r], path.headers, path.auth)
                    seconds[i] += time.perf_counter() - started
                    ours[i] += cpu_seconds(pids[i]) - before
                    tsdb[i] += cpu_seconds([tsdb_pid()]) - before_tsdb
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(run())
    return [Result(path.name, path.samples, seconds[i], ours[i], tsdb[i]) for i, path in enumerate(paths)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000, help="series (= samples) per request")
    parser.add_argument("--bodies", type=int, default=8, help="requests in flight per round")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds; each round sends every body once (default 50; --mix cluster: scrapes, default 8)")
    parser.add_argument("--mix", choices=("cost", "cluster"), default="cost",
                        help="cost: the exporter's gauges in --series-sized bodies; cluster: a cluster's usage series")
    parser.add_argument("--containers", type=int, default=2000, help="--mix cluster: containers of the cluster")
    shipped = yaml.safe_load(REMOTE_WRITE_TEMPLATE.read_text())["remote_write"][0]["queue_config"]["max_samples_per_send"]
    parser.add_argument("--samples-per-send", type=int, default=shipped,
                        help=f"--mix cluster: series per body (default {shipped}, the shipped max_samples_per_send)")
    parser.add_argument("--in-process", action="store_true",
                        help="--mix cluster: the ingress's codec and police in this process, no Ray nor Serve")
    args = parser.parse_args()
    args.rounds = args.rounds or (8 if args.mix == "cluster" else 50)
    if min(args.series, args.bodies, args.containers, args.samples_per_send) < 1 or not 2 <= args.rounds <= 500:
        parser.error("--series, --bodies, --containers and --samples-per-send must be ≥ 1, --rounds from 2 to 500 "
                     "(the first round warms, the others are measured)")
    if args.mix == "cluster":
        main_cluster_mix(args)
        return
    if args.in_process:
        parser.error("--in-process goes with --mix cluster")

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
    # The first round warms both paths (connections, the ingress's credential cache and
    # label-set verdicts, the TSDB's new series); the others are measured.
    direct_headers = {**write_headers, stack.TENANT_HEADER: tenant}
    ingress_headers = {**write_headers, "Cloud-Account-Id": tenant}
    asyncio.run(send(stack.TSDB_WRITE_URL, direct_rounds[:1], direct_headers, None))
    asyncio.run(send(stack.WRITE_URL, ingress_rounds[:1], ingress_headers, (tenant, credentials.password)))
    samples = (args.rounds - 1) * args.bodies * args.series
    direct, ingress = run_paths(
        Path_("direct to Thanos Receive", stack.TSDB_WRITE_URL, direct_rounds[1:], samples, direct_headers),
        Path_("through the ingress", stack.WRITE_URL, ingress_rounds[1:], samples, ingress_headers,
              (tenant, credentials.password)))

    print()
    print("| path | samples | wall s | samples/s | ingress CPU-s per 1M samples | Receive CPU-s per 1M samples |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in (direct, ingress):
        print(f"| {r.path} | {r.samples:,} | {r.seconds:.2f} | {r.rate:,.0f} | "
              f"{r.ingress_cpu / r.samples * 1e6:.2f} | {r.tsdb_cpu / r.samples * 1e6:.2f} |")
    per_core = ingress.samples / ingress.ingress_cpu
    receive_per_core = direct.samples / direct.tsdb_cpu
    print()
    print(f"ingress: {per_core:,.0f} samples per CPU-second (target ≥ 100,000)")
    print(f"Thanos Receive: {receive_per_core:,.0f} samples per CPU-second")
    print(f"ingress CPU per sample ÷ Receive CPU per sample: {receive_per_core / per_core:.2f} (target ≤ 1)")


if __name__ == "__main__":
    main()
