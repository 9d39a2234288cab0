"""Replayed history into the TSDB: Thanos blocks uploaded to its bucket vs Prometheus blocks moved in at a restart.

    .venv/bin/python scripts/bench_history.py [--days 30] [--clusters 3] [--seed 42]

The demo's estate and history (scripts/demo.py: one account per cluster, a sample every
5 minutes up to now), written with write_blocks (a directory of blocks per tenant, since a
Thanos block belongs to one tenant). Then loaded twice, each timed until the TSDB answers
the oldest sample:
- the local TSDB, Thanos (`scripts/services.sh start tsdb`): each tenant's blocks uploaded
  to its bucket (devstack.stack.load_blocks), served by the Store Gateway without a restart;
- the anchor, how history went into the Prometheus 2.42 that stood in for the TSDB before:
  a private one (its own data directory and port), stopped, blocks moved in, started.
Both must answer the same on the oldest day, and Thanos nothing of a tenant under another.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# devstack/ is tooling, not installed (pyproject.toml): scripts import it from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from devstack import stack
from devstack.simulator.history import load_into, write_blocks
from devstack.simulator.spec import generate_estate
from k8scost import ledger
from k8scost.settings import DAY


def instant(url: str, query: str, at: float) -> list:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": query, "time": at}, timeout=60).json()
    if answer["status"] != "success":
        raise RuntimeError(f"{url}: {query}: {answer}")
    return sorted((tuple(sorted(s["metric"].items())), s["value"][1]) for s in answer["data"]["result"])


def answers_oldest(url: str, tenant: str, at: float) -> bool:
    return bool(instant(url, f'count({{__name__=~"cloudtuner_.+", tenant_id="{tenant}"}})', at))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    now = time.time()
    end = now - now % 300
    start = ledger.day_start(now).timestamp() - args.days * DAY - 3600  # as scripts/demo.py
    estate = generate_estate(args.seed, clusters=args.clusters, namespaces_per_cluster=5, pods_per_namespace=6,
                             start=start, span_seconds=end - start + 7 * DAY)
    tenants = {cluster.name: str(uuid.uuid4()) for cluster in estate.clusters}
    stack.services("start", "tsdb")

    with tempfile.TemporaryDirectory(dir=stack.DATA) as scratch_dir:
        scratch = Path(scratch_dir)
        started = time.perf_counter()
        samples = write_blocks(estate, tenants, start, end, scratch / "thanos")
        written = time.perf_counter() - started
        blocks = sum(1 for tenant in tenants.values() for _ in (scratch / "thanos" / tenant).iterdir())
        print(f"history: {args.days} days, {len(tenants)} tenants, {samples:,} samples in {blocks} blocks, "
              f"written (simulator + promtool) in {written:.1f} s = {samples / written:,.0f} samples/s")
        oldest = start + 300  # the first sample is at start; any answer then must come from it

        # Prometheus: a private one, as the stand-in TSDB ran (out-of-order writes for 30 days).
        port = stack.free_port()
        prometheus = f"http://127.0.0.1:{port}"
        data = scratch / "prometheus"
        data.mkdir()
        (data / "prometheus.yml").write_text("storage:\n  tsdb:\n    out_of_order_time_window: 30d\n")
        command = ["prometheus", f"--config.file={data / 'prometheus.yml'}", f"--storage.tsdb.path={data / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=400d", "--log.level=warn"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            stack.wait_until_answers(f"{prometheus}/-/ready", process=server)
            moved = scratch / "prometheus-blocks"
            for tenant in tenants.values():
                shutil.copytree(scratch / "thanos" / tenant, moved, dirs_exist_ok=True)
            started = time.perf_counter()
            server.terminate()
            server.wait(60)
            load_into(data / "tsdb", moved)
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.wait_until_answers(f"{prometheus}/-/ready", timeout=300, process=server)
            for tenant in tenants.values():
                stack.wait_for("Prometheus to answer", lambda: answers_oldest(prometheus, tenant, oldest), 300)
            prometheus_seconds = time.perf_counter() - started

            # Thanos: each tenant's blocks uploaded, no restart.
            started = time.perf_counter()
            stack.load_blocks(scratch / "thanos")
            for tenant in tenants.values():
                stack.wait_for("Thanos to answer", lambda: answers_oldest(stack.TSDB_URL, tenant, oldest), 300)
            thanos_seconds = time.perf_counter() - started

            for name, seconds in (("Thanos, upload + Store Gateway sync", thanos_seconds),
                                  ("Prometheus 2.42 (anchor), stop + move + start", prometheus_seconds)):
                print(f"| {name} | {seconds:.1f} s | {samples / seconds:,.0f} samples/s "
                      f"| with writing: {samples / (written + seconds):,.0f} samples/s |")

            # The same answers on the oldest day; another tenant's series never under this one.
            day_end = ledger.day_start(start).timestamp() + 2 * DAY
            for cluster, tenant in tenants.items():
                every = f'{{__name__=~"cloudtuner_.+", tenant_id="{tenant}"}}'
                thanos, expected = instant(stack.TSDB_URL, every, oldest), instant(prometheus, every, oldest)
                print(f"{every} at the first sample: {len(thanos)} series, "
                      f"{'the same as' if thanos == expected else 'NOT the same as'} Prometheus's {len(expected)}")
                assert thanos == expected, sorted(set(thanos) ^ set(expected))[:6]
                day = f'sum(sum_over_time(cloudtuner_kubecost_namespace_total_cost{{tenant_id="{tenant}"}}[1d:60s]))'
                print(f"{day} at a midnight: Prometheus {instant(prometheus, day, day_end)}, "
                      f"Thanos {instant(stack.TSDB_URL, day, day_end)}")
                for other in set(tenants) - {cluster}:
                    crossed = f'count({{__name__=~"cloudtuner_.+", tenant_id="{tenant}", cluster="{other}"}})'
                    assert instant(stack.TSDB_URL, crossed, oldest) == [], crossed
            stranger = f'count({{__name__=~"cloudtuner_.+", tenant_id="{uuid.uuid4()}"}})'
            assert instant(stack.TSDB_URL, stranger, oldest) == []
            print("Thanos: no tenant's series under another tenant or an unknown one")
        finally:
            server.terminate()
            server.wait(60)


if __name__ == "__main__":
    main()
