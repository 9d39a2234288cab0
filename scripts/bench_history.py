"""Replayed history into the TSDB: Prometheus blocks moved in at a restart vs Thanos blocks uploaded to its bucket.

    .venv/bin/python scripts/bench_history.py [--days 30] [--clusters 3] [--seed 42]

The demo's estate and history (scripts/demo.py: one account per cluster, a sample every
5 minutes up to now), written with write_blocks once per tenant, since a Thanos block
belongs to one tenant. Then loaded twice, each timed until the TSDB answers the oldest
sample:
- Prometheus 2.42 as scripts/services.sh runs it, a private one (its own data directory
  and port), loaded as devstack.stack.load_blocks loads the local TSDB: stopped, blocks
  moved in, started;
- the local Thanos stack (`scripts/services.sh start thanos`): each tenant's blocks
  uploaded to its bucket (devstack.stack.upload_blocks), served by the Store Gateway
  without a restart.
Both must answer the same on the oldest day, and Thanos nothing of a tenant under another.
"""

from __future__ import annotations

import argparse
import os
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
    stack.services("start", "thanos")

    with tempfile.TemporaryDirectory(dir=stack.ROOT / ".data") as scratch_dir:
        scratch = Path(scratch_dir)
        started = time.perf_counter()
        samples = 0
        for cluster, tenant in tenants.items():
            samples += write_blocks(estate, {cluster: tenant}, start, end, scratch / "thanos" / tenant)
        written = time.perf_counter() - started
        blocks = sum(1 for tenant in tenants.values() for _ in (scratch / "thanos" / tenant).iterdir())
        print(f"history: {args.days} days, {len(tenants)} tenants, {samples:,} samples in {blocks} blocks, "
              f"written (simulator + promtool) in {written:.1f} s = {samples / written:,.0f} samples/s")
        oldest = start + 300  # the first sample is at start; any answer then must come from it

        # Prometheus: a private one, loaded as stack.load_blocks loads the local TSDB.
        port = stack.free_port()
        prometheus = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CLOUDTUNER_DATA": str(scratch / "prometheus"), "TSDB_PORT": str(port)}
        services = [str(stack.SERVICES)]
        subprocess.run([*services, "start", "tsdb"], check=True, env=env, capture_output=True)
        try:
            moved = scratch / "prometheus-blocks"
            for tenant in tenants.values():
                shutil.copytree(scratch / "thanos" / tenant, moved, dirs_exist_ok=True)
            started = time.perf_counter()
            subprocess.run([*services, "stop", "tsdb"], check=True, env=env, capture_output=True)
            load_into(scratch / "prometheus" / "tsdb" / "data", moved)
            subprocess.run([*services, "start", "tsdb"], check=True, env=env, capture_output=True)
            for tenant in tenants.values():
                stack.wait_for("Prometheus to answer", lambda: answers_oldest(prometheus, tenant, oldest), 300)
            prometheus_seconds = time.perf_counter() - started

            # Thanos: each tenant's blocks uploaded, no restart.
            started = time.perf_counter()
            stack.upload_blocks({tenant: scratch / "thanos" / tenant for tenant in tenants.values()})
            for tenant in tenants.values():
                stack.wait_for("Thanos to answer", lambda: answers_oldest(stack.THANOS_QUERY_URL, tenant, oldest), 300)
            thanos_seconds = time.perf_counter() - started

            for name, seconds in (("Prometheus 2.42, stop + move + start", prometheus_seconds),
                                  ("Thanos, upload + Store Gateway sync", thanos_seconds)):
                print(f"| {name} | {seconds:.1f} s | {samples / seconds:,.0f} samples/s "
                      f"| with writing: {samples / (written + seconds):,.0f} samples/s |")

            # The same answers on the oldest day; another tenant's series never under this one.
            day_end = ledger.day_start(start).timestamp() + 2 * DAY
            for cluster, tenant in tenants.items():
                every = f'{{__name__=~"cloudtuner_.+", tenant_id="{tenant}"}}'
                thanos, expected = instant(stack.THANOS_QUERY_URL, every, oldest), instant(prometheus, every, oldest)
                print(f"{every} at the first sample: {len(thanos)} series, "
                      f"{'the same as' if thanos == expected else 'NOT the same as'} Prometheus's {len(expected)}")
                assert thanos == expected, sorted(set(thanos) ^ set(expected))[:6]
                day = f'sum(sum_over_time(cloudtuner_kubecost_namespace_total_cost{{tenant_id="{tenant}"}}[1d:60s]))'
                print(f"{day} at a midnight: Prometheus {instant(prometheus, day, day_end)}, "
                      f"Thanos {instant(stack.THANOS_QUERY_URL, day, day_end)}")
                for other in set(tenants) - {cluster}:
                    crossed = f'count({{__name__=~"cloudtuner_.+", tenant_id="{tenant}", cluster="{other}"}})'
                    assert instant(stack.THANOS_QUERY_URL, crossed, oldest) == [], crossed
            stranger = f'count({{__name__=~"cloudtuner_.+", tenant_id="{uuid.uuid4()}"}})'
            assert instant(stack.THANOS_QUERY_URL, stranger, oldest) == []
            print("Thanos: no tenant's series under another tenant or an unknown one")
        finally:
            subprocess.run([*services, "stop", "tsdb"], check=True, env=env, capture_output=True)


if __name__ == "__main__":
    main()
