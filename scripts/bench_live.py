"""Live-view latency: Metroculus ``k8s_live`` (on the running Serve) for a big tenant.

    .venv/bin/python scripts/bench_live.py [--pods 2000] [--hours 24] [--requests 5] [--secret S]

1. Writes a fresh tenant into the TSDB (remote write): PODS pods of one container in 100
   namespaces, their CPU usage and request gauges every 60 s over the last HOURS hours.
2. Times REQUESTS calls of the by-pod and by-namespace CPU queries over the last 1 h
   (step 15 s), 6 h (60 s) and 24 h (300 s), the dashboard's choices, and prints p50 and
   the slowest as Markdown. ``--secret``: the deployment's CLUSTER_SECRET (default: this
   environment's setting; the tests deploy Serve with ``test-secret``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from devstack.stack import SERVE_URL, write_samples  # noqa: E402
from k8scost.settings import MetroculusSettings, from_env  # noqa: E402

NAMESPACES = 100
EVERY = 60
BATCH = 200  # series per remote-write request
CASES = ((3600, 15), (21_600, 60), (86_400, 300))  # range, step: the dashboard's
QUERIES = ("cpu_usage_vs_requests_by_pod", "cpu_usage_vs_requests_by_namespace")
USAGE = "cloudtuner_kubecost_container_cpu_usage_average_cores"
REQUEST = "cloudtuner_kubecost_container_cpu_request_cores"


def write_tenant(tenant: str, pods: int, hours: int) -> float:
    """The tenant's gauges written straight into the TSDB; seconds taken."""
    started = time.perf_counter()
    end = int(time.time()) // EVERY * EVERY
    times = range(end - hours * 3600, end + 1, EVERY)
    batch = []
    with httpx.Client(timeout=60) as http:
        for i in range(pods):
            labels = {"tenant_id": tenant, "cluster": "c1", "namespace": f"ns-{i % NAMESPACES}", "pod": f"p-{i}",
                      "container": "c", "node": f"n{i % 50}", "controller_kind": "deployment", "controller": f"d{i}"}
            for metric, value in ((USAGE, (i % 7) / 8), (REQUEST, (i % 5) / 4)):
                batch.append(({"__name__": metric, **labels}, [(t * 1000, value) for t in times]))
            if len(batch) >= BATCH or i == pods - 1:
                write_samples(batch, http)
                batch = []
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--secret", default=from_env(MetroculusSettings).cluster_secret)
    args = parser.parse_args()
    tenant = f"bench-live-{uuid.uuid4().hex[:8]}"
    seconds = write_tenant(tenant, args.pods, args.hours)
    print(f"tenant {tenant}: {args.pods} pods × {args.hours} h at {EVERY} s written in {seconds:.1f} s\n")
    print("| query | range, step | series (of) | answer | p50 | slowest |\n| --- | --- | --- | --- | --- | --- |")
    end = int(time.time()) // EVERY * EVERY
    with httpx.Client(base_url=f"{SERVE_URL}/metroculus", headers={"Secret": args.secret}, timeout=120) as http:
        for query in QUERIES:
            for span, step in CASES:
                params = {"cloud_account_id": tenant, "query": query, "start_date": end - span, "end_date": end,
                          "step": step}
                took = []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    answer = http.get("/v2/k8s_live", params=params)
                    took.append(time.perf_counter() - started)
                    answer.raise_for_status()
                body = answer.json()
                print(f"| {query} | {span // 3600} h, {step} s | {len(body['series'])} ({body['series_total']}) "
                      f"| {len(answer.content) / 1e3:.0f} kB | {statistics.median(took):.2f} s | {max(took):.2f} s |")


if __name__ == "__main__":
    main()
