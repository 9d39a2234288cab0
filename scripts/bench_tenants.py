"""Tenant density: many tenants on tenant hosts on the local Ray, the real stores, TSDB and Metroculus.

Starts ``--tenants`` tenants of a realistic mix of sizes (most small, a tenth medium, a
fiftieth with thousands of pods), ``--per-host`` to a tenant host (placed as the
supervisor places them: by account id, the lowest host with room), each with the last
``--history-minutes`` of its gauges sent to the TSDB's remote-write receiver and a new
sample of every series every minute meanwhile (as the exporters' scrapes land), beside
``--anchors`` bare Ray actors and as many Ray actors that only import what a tenant host
imports. It prints:

- per-host and per-tenant PSS (the pages a process really adds) and idle CPU over
  ``--idle-seconds``, side by side with the anchors, at the same moment;
- p50 / p99 cycle time (the actor's own stages, and wall from the call) and ledger lag
  (seconds since a tenant's last good cycle, as the supervisor reports it, sampled every
  second) over ``--cycles`` rounds, every tenant's cycle spread evenly over ``--period`` s;
- the TSDB's and the actors' CPU seconds per tenant-hour at the default ``CYCLE_SECONDS``
  with a settle every ``LEDGER_SETTLE_SECONDS`` and one as each day closes (measured in a
  last round where every tenant settles), read from their processes' /proc;
- the tenants a 16-core / 64 GB node holds from memory (80 % of it) and from CPU, cycles included.

Every actor lives in a Ray namespace of the run's own and is killed on exit, Ctrl-C and
error included; the MongoDB database of the run is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devstack.stack pins Ray to loopback, which Ray reads when it is imported.
from devstack import stack
import httpx
import ray

from actors.tenant import TenantConfig
from bench_ledger import cpu_seconds, gauges, pss_mb, send, tsdb_cpu_seconds
from k8scost import ledger, raylocal
from k8scost.metroculus_client import SECRET_HEADER
from k8scost.settings import DAY, LedgerSettings, StoreSettings, from_env
from devstack.hosted import HostedTenant, start_host
from k8scost.stores.mongo import connect
from k8scost.stores.placements import assign

# (name, share of tenants, namespaces, pods per namespace): most small, a few with thousands of pods.
SIZES = (("big", 0.02, 100, 25), ("medium", 0.10, 20, 10), ("small", 0.88, 4, 5))
NODE_CORES, NODE_MEMORY_MB, MEMORY_SHARE = 16, 64 * 1024, 0.8


@ray.remote(num_cpus=0)
class BareActor:
    """The anchor: a Ray actor that imports and holds nothing of ours."""

    def pid(self) -> int:
        return os.getpid()


@ray.remote(num_cpus=0)
class ImportingActor:
    """An anchor between the two: a Ray actor that imports what a tenant host imports, and holds nothing."""

    def __init__(self) -> None:
        import actors.host  # noqa: F401

    def pid(self) -> int:
        return os.getpid()


def mix(count: int) -> list[tuple[str, int, int]]:
    """``count`` tenants' (size, namespaces, pods per namespace), at least one big one."""
    big = max(1, round(count * SIZES[0][1]))
    medium = round(count * SIZES[1][1])
    return [(name, namespaces, pods) for (name, _, namespaces, pods), k in zip(SIZES, (big, medium, count - big - medium))
            for _ in range(k)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float], unit: str = "s") -> str:
    if not values:
        return "none"
    return f"p50 {pct(values, 0.5):.2f} {unit}, p99 {pct(values, 0.99):.2f} {unit} (max {max(values):.2f}, n {len(values)})"


class Scraper(threading.Thread):
    """A sample of every tenant's series every minute, as the exporters' remote writes land."""

    def __init__(self, families: list[dict]) -> None:
        super().__init__(daemon=True)
        self.families = families
        self.stopped = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        while not self.stopped.wait(60 - time.time() % 60):
            try:
                now_ms = int(time.time() * 1000)
                for families in self.families:
                    send(families, [now_ms])
            except Exception as exc:  # shown at the end: the cycles then miss a minute, not the run
                self.error = exc


def rounds(actors: list, count: int, period: float, days: list | None) -> tuple[list[dict], list[tuple[int, float]]]:
    """Every actor's cycle once a round, the actors spread evenly over ``period`` s: per cycle
    its report (None: it failed, ``error`` says why), wall from the call, and actor index;
    and the (actor index, end) of each good one."""
    order = list(range(len(actors)))
    random.Random(14).shuffle(order)  # the big tenants not all at the start of a round
    started = time.time()
    due = [(started + r * period + k * period / len(order), index) for r in range(count) for k, index in enumerate(order)]
    pending: dict = {}
    cycles, ends = [], []

    def collect(timeout: float) -> None:
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=max(0.0, timeout))
        for ref in done:
            index, at = pending.pop(ref)
            end = time.time()
            try:
                report, error = ray.get(ref), None
                ends.append((index, end))
            except ray.exceptions.RayError as exc:
                report, error = None, str(exc).splitlines()[-1]
            cycles.append({"report": report, "error": error, "wall": end - at, "index": index})

    for at, index in due:
        while pending and time.time() < at:
            collect(min(0.2, at - time.time()))
        time.sleep(max(0.0, at - time.time()))
        ref = actors[index].cycle(days)
        pending[ref] = (index, time.time())
    deadline = time.time() + 1800
    while pending and time.time() < deadline:
        collect(0.2)
    if pending:
        raise TimeoutError(f"{len(pending)} cycles not done 30 min after the last was asked")
    return cycles, ends


async def drop_database(stores: StoreSettings) -> None:
    await connect(stores).client.drop_database(stores.mongodb_database)


def tsdb_cpu() -> tuple[tuple[int, ...], float]:
    """The TSDB's pids and CPU seconds so far."""
    return stack.tsdb_pids(), tsdb_cpu_seconds()


def tsdb_spent(since: tuple[tuple[int, ...], float]) -> float:
    """The TSDB's CPU seconds since ``since``; NaN if it restarted meanwhile (the machine is shared)."""
    pids, cpu = tsdb_cpu()
    return cpu - since[1] if pids == since[0] else float("nan")


def interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--per-host", type=int, default=from_env(LedgerSettings).tenants_per_host,
                        help="tenants a host runs (TENANTS_PER_HOST)")
    parser.add_argument("--anchors", type=int, default=8, help="bare Ray actors, and as many import-only ones")
    parser.add_argument("--history-minutes", type=int, default=50,
                        help="minutes of gauges before the run (the TSDB's head takes about an hour back)")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--cycles", type=int, default=3, help="rounds of steady cycles")
    parser.add_argument("--period", type=float, default=60.0, help="seconds a round is spread over")
    parser.add_argument("--start-spread", type=float, default=from_env(LedgerSettings).start_spread_seconds,
                        help="seconds the tenants' first cycles are spread over (LEDGER_START_SPREAD_SECONDS; "
                             "0: every one at once)")
    parser.add_argument("--secret", default=TenantConfig.from_env().cluster_secret,
                        help="the deployed Metroculus' CLUSTER_SECRET")
    args = parser.parse_args()
    if min(args.tenants, args.per_host, args.anchors, args.cycles) < 1 or not 0 < args.history_minutes <= 55:
        parser.error("--tenants, --per-host, --anchors and --cycles must be ≥ 1, --history-minutes in 1..55")
    if args.start_spread < 0:
        parser.error("--start-spread must be ≥ 0")

    # Metroculus as deployed (this script never deploys Serve): say so now if it does not answer us.
    settings = from_env(LedgerSettings)
    probe = httpx.get(f"{settings.metroculus_url}/v2/kubecost_metrics", headers={SECRET_HEADER: args.secret},
                      params={"cloud_account_id": "probe", "metrics": "cloudtuner_kubecost_idle_cost",
                              "start_date": 0, "end_date": 3600})
    if probe.status_code != 200:
        sys.exit(f"Metroculus at {settings.metroculus_url} answered {probe.status_code}: {probe.text[:200]}")

    run = uuid.uuid4().hex[:8]
    stores = from_env(StoreSettings, mongodb_database=f"bench_tenants_{run}")
    # Cycles are the driver's (cycle_seconds a day: the actors' own loops only run their
    # first cycle, within --start-spread of their start); settles only when a round asks, as
    # LEDGER_SETTLE_SECONDS and a day's close do.
    config = TenantConfig(from_env(LedgerSettings, cycle_seconds=86400.0, settle_seconds=86400.0,
                                   start_spread_seconds=args.start_spread), stores, args.secret)
    tenants = [(str(uuid.uuid4()), *size) for size in mix(args.tenants)]
    families = [gauges(account, namespaces, pods) for account, _, namespaces, pods in tenants]
    series = sum(len(m) for f in families for m in f.values())
    now = int(time.time())
    history = range((now - args.history_minutes * 60) * 1000, now * 1000, 60_000)
    started = time.perf_counter()
    send({name: [member for f in families for member in f.get(name, [])] for name in families[0]}, history)
    print(f"{args.tenants} tenants (" + ", ".join(f"{sum(t[1] == name for t in tenants)} {name} of "
          f"{namespaces * pods:,} pods" for name, _, namespaces, pods in SIZES) + f"): {series:,} series, "
          f"{args.history_minutes} min of history sent in {time.perf_counter() - started:.0f} s", flush=True)
    scraper = Scraper(families)
    scraper.start()

    raylocal.connect(stack.RAY_ADDRESS, f"bench-tenants-{run}")
    actors: list = []
    # Ctrl-C or a kill: the finally below still kills every actor (the driver owns them too).
    signal.signal(signal.SIGTERM, interrupted)
    try:
        bare = [BareActor.remote() for _ in range(args.anchors)]
        importing = [ImportingActor.remote() for _ in range(args.anchors)]
        actors += bare + importing
        started = time.perf_counter()
        host_of = assign(sorted(account for account, *_ in tenants), {}, args.per_host)
        hosts = {name: start_host(config, {a: "bench" for a, h in host_of.items() if h == name})
                 for name in sorted(set(host_of.values()))}
        actors += hosts.values()
        tenant_actors = [HostedTenant(account, "bench", config, hosts[host_of[account]]) for account, *_ in tenants]
        # Their own loop runs the first cycle within --start-spread of their start: a settle,
        # reading the open days whole.
        stack.wait_for("every tenant's first cycle",
                       lambda: all(s["cycles"] or s["last_error"] for s in ray.get([a.status() for a in tenant_actors])),
                       timeout=1800, interval=5)
        statuses = ray.get([a.status() for a in tenant_actors])
        failed = [s for s in statuses if s["last_error"]]
        print(f"started {len(actors)} actors ({len(hosts)} hosts of up to {args.per_host} tenants), every tenant's "
              f"first cycle done (spread over {args.start_spread:g} s), "
              f"in {time.perf_counter() - started:.0f} s"
              + (f"; {len(failed)} failed (they settle in the first round), e.g. {failed[0]['last_error']}" if failed else ""),
              flush=True)
        pids = {
            "bare Ray actor (anchor)": ray.get([a.pid.remote() for a in bare]),
            "Ray actor importing what a tenant host imports": ray.get([a.pid.remote() for a in importing]),
        }
        host_pids = sorted({s["pid"] for s in statuses})
        pids[f"tenant host ({args.tenants / len(hosts):.1f} tenants each)"] = host_pids

        # Idle: every actor between cycles, the scrapes landing.
        time.sleep(5)
        every = [p for group in pids.values() for p in group]
        before, tsdb_before, t0 = {p: cpu_seconds(p) for p in every}, tsdb_cpu(), time.time()
        time.sleep(args.idle_seconds)
        idle_wall = time.time() - t0
        idle_cpu = {p: (cpu_seconds(p) - before[p]) / idle_wall for p in every}
        tsdb_idle_rate = tsdb_spent(tsdb_before) / idle_wall  # ingest, and whatever else runs there
        idle_pss = {p: pss_mb(p) for p in every}
        # Printed now: a later failure (the machine is shared) still leaves these.
        print()
        print(f"| idle actor ({idle_wall:.0f} s, every actor at once) | actors | PSS MB, mean (max) | vs anchor | "
              "CPU % of a core, mean (max) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        anchor = statistics.mean(idle_pss[p] for p in pids["bare Ray actor (anchor)"])
        for name, group in pids.items():
            if group:
                mem, cpu = [idle_pss[p] for p in group], [idle_cpu[p] * 100 for p in group]
                print(f"| {name} | {len(group)} | {statistics.mean(mem):.1f} ({max(mem):.1f}) | "
                      f"{statistics.mean(mem) / anchor:.2f} | {statistics.mean(cpu):.2f} ({max(cpu):.2f}) |", flush=True)
        print(f"| per tenant: the hosts' sum ÷ {args.tenants} tenants | — | "
              f"{sum(idle_pss[p] for p in host_pids) / args.tenants:.1f} | "
              f"{sum(idle_pss[p] for p in host_pids) / args.tenants / anchor:.2f} | "
              f"{sum(idle_cpu[p] for p in host_pids) / args.tenants * 100:.2f} |", flush=True)

        # Steady rounds, then a round where every tenant settles (reads the open days whole).
        def measured(rounds_: int, days: list | None) -> tuple[list[dict], list, float, float, float]:
            cpu0, tsdb0, t = sum(cpu_seconds(p) for p in host_pids), tsdb_cpu(), time.time()
            cycles, ends = rounds(tenant_actors, rounds_, args.period, days)
            wall = time.time() - t
            actor_cpu = sum(cpu_seconds(p) for p in host_pids) - cpu0 - sum(idle_cpu[p] for p in host_pids) * wall
            return cycles, ends, wall, actor_cpu, tsdb_spent(tsdb0) - tsdb_idle_rate * wall

        steady_started = time.time()
        steady, ends, steady_wall, steady_cpu, steady_tsdb = measured(args.cycles, None)
        days = ledger.open_days(time.time(), config.ledger.open_days)
        settles, _, settle_wall, settle_cpu, settle_tsdb = measured(1, days)
        after_pss = {p: pss_mb(p) for p in host_pids}
    finally:
        for actor in actors:
            ray.kill(actor)
        scraper.stopped.set()
        asyncio.run(drop_database(stores))

    # Ledger lag, as the supervisor reports it, sampled every second of the steady rounds.
    last = {i: steady_started for i in range(len(tenant_actors))}
    lags, pending = [], sorted(ends, key=lambda e: e[1])
    tick = steady_started + args.period  # from the first round's end: every tenant has cycled once
    while pending and tick < pending[-1][1]:
        while pending and pending[0][1] <= tick:
            index, end = pending.pop(0)
            last[index] = end
        lags.extend(tick - at for at in last.values())
        tick += 1.0

    def total(report) -> float:
        return report.query_seconds + report.compute_seconds + report.mongodb_seconds + report.clickhouse_seconds

    failures = [c for c in steady + settles if c["report"] is None]
    steady, settles = ([c for c in group if c["report"] is not None] for group in (steady, settles))

    print()
    print(f"| cycles ({args.cycles} rounds of {len(tenant_actors)} over {args.period:.0f} s each, then a settle round) | figure |")
    print("| --- | --- |")
    for name, *_ in SIZES:
        mine = [c for c in steady if tenants[c["index"]][1] == name]
        if mine:
            print(f"| steady cycle, {name} tenants, actor's stages | {summary([total(c['report']) for c in mine])} |")
    print(f"| steady cycle, all, actor's stages | {summary([total(c['report']) for c in steady])} |")
    print(f"| steady cycle, all, wall from the call | {summary([c['wall'] for c in steady])} |")
    print(f"| settle, all, actor's stages | {summary([total(c['report']) for c in settles])} |")
    print(f"| ledger lag (since the last good cycle, sampled every s; a round every {args.period:.0f} s) | {summary(lags)} |")
    print(f"| rows written per steady cycle, mean | {statistics.mean([c['report'].rows_written for c in steady] or [0]):,.0f} |")
    for name, group in pids.items():
        after = [after_pss[p] for p in group if p in after_pss]
        if after:
            print(f"| {name}: PSS after the cycles | mean {statistics.mean(after):.1f} MB (max {max(after):.1f}) |")
    print(f"| failed cycles | {len(failures)}" + (f", e.g. {failures[0]['error']}" if failures else "") + " |")

    # Per tenant-hour at the defaults: CYCLE_SECONDS apart, a settle every LEDGER_SETTLE_SECONDS
    # and one as a day closes (none for late samples: these senders keep up).
    defaults = from_env(LedgerSettings)
    per_hour = 3600 / defaults.cycle_seconds
    settles_per_hour = 3600 / defaults.settle_seconds + 3600 / DAY
    n = len(tenant_actors)

    def per_tenant_hour(steady_total: float, settle_total: float) -> float:
        per_steady, per_settle = steady_total / (len(steady) + len(failures)), settle_total / n
        return (per_hour - settles_per_hour) * per_steady + settles_per_hour * per_settle

    pss_per_tenant = sum(after_pss.values()) / n
    bare_cpu = statistics.mean(idle_cpu[p] for p in pids["bare Ray actor (anchor)"])
    measured_cycles = bool(steady and settles)
    if measured_cycles:
        tsdb_hour = per_tenant_hour(steady_tsdb, settle_tsdb)
        cycles_hour = per_tenant_hour(steady_cpu, settle_cpu)
        idle_mean = sum(idle_cpu[p] for p in host_pids) / n
        actor_hour = idle_mean * 3600 + cycles_hour
        print(f"| TSDB CPU per cycle (ingest rate of the idle minute, {tsdb_idle_rate:.3f} CPU-s/s, taken off) | "
              f"steady {steady_tsdb / len(steady):.3f} s, settle {settle_tsdb / n:.3f} s |")
        print(f"| TSDB CPU per tenant-hour at CYCLE_SECONDS {defaults.cycle_seconds:.0f}, a settle every "
              f"{defaults.settle_seconds:.0f} s and at each day's close | {tsdb_hour:.2f} s |")
        print(f"| host CPU per cycle (its idle CPU taken off) | steady {steady_cpu / len(steady):.3f} s, "
              f"settle {settle_cpu / n:.3f} s |")
        print(f"| host CPU per tenant-hour, idle included | {actor_hour:.1f} s ({idle_mean * 3600:.1f} idle, "
              f"{cycles_hour:.1f} cycles) |")
    print()
    print(f"| tenants per {NODE_CORES}-core / {NODE_MEMORY_MB // 1024} GB node | from memory ({MEMORY_SHARE:.0%}) | from CPU |")
    print("| --- | ---: | ---: |")
    print(f"| bare Ray actors (anchor: Ray's floor) | {NODE_MEMORY_MB * MEMORY_SHARE / anchor:,.0f} | "
          f"{NODE_CORES / max(bare_cpu, 1e-9):,.0f} |")
    by_cpu = f"{NODE_CORES * 3600 / actor_hour:,.0f}" if measured_cycles else "— (no cycle measured)"
    print(f"| tenants of this mix, {args.per_host} a host, cycles included (TSDB and Metroculus elsewhere) | "
          f"{NODE_MEMORY_MB * MEMORY_SHARE / pss_per_tenant:,.0f} | {by_cpu} |")
    if measured_cycles:
        print(f"| same, the TSDB's CPU counted on the node too | — | {NODE_CORES * 3600 / (actor_hour + tsdb_hour):,.0f} |")
    print(f"\nwall: steady rounds {steady_wall:.0f} s, settle round {settle_wall:.0f} s"
          + (f"; scraper error: {scraper.error}" if scraper.error else ""))
    if not measured_cycles:
        sys.exit("no cycle figures: every steady cycle or every settle failed (see 'failed cycles' above)")


if __name__ == "__main__":
    main()
