"""The namespace breakdown's query on ``expenses_namespace_daily`` against ``expenses``, side by side.

    .venv/bin/python scripts/bench_namespace_daily.py [--days 90] [--requests 30]

On the ledger ``scripts/bench_restapi.py`` loads (run it once first: ClickHouse database
``bench_restapi``, 3 accounts, 1,000 namespaces, 1.98 M rows), times ``ExpenseQueries.daily``
by namespace over DAYS days plus the previous period, as ``breakdown_expenses`` asks it,
reading migration 4's table and reading ``expenses``, alternately, REQUESTS times each after
2 warm-ups; prints p50/p95 of both, their ratio, and whether both answers are the same.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from k8scost.settings import DAY, StoreSettings, from_env  # noqa: E402
from k8scost.stores.clickhouse import ExpenseStore  # noqa: E402
from k8scost.stores.expense_queries import _DAILY, NAMESPACE_TYPE, ExpenseQueries, Scope  # noqa: E402
from k8scost.stores.migrations import NAMESPACE_DAILY  # noqa: E402

DATABASE = "bench_restapi"


async def run(days: int, requests: int) -> None:
    base = from_env(StoreSettings).clickhouse_url.rsplit("/", 1)[0]
    store = ExpenseStore(from_env(StoreSettings, clickhouse_url=f"{base}/{DATABASE}"))
    try:
        await store.migrate()
        queries = ExpenseQueries(store)
        accounts = tuple(sorted(a for (a,) in await store.select("SELECT DISTINCT cloud_account_id FROM expenses")))
        [(last,)] = await store.select("SELECT toUnixTimestamp(max(date)) FROM expenses")
        end = last + DAY
        start = end - days * DAY
        scope = Scope(accounts, start - days * DAY, end, {"resource_type": (NAMESPACE_TYPE,)})
        params = {"daily_from": start}
        times: dict[str, list[float]] = {NAMESPACE_DAILY: [], "expenses": []}
        answers: dict[str, list] = {}
        for i in range(requests + 2):
            for source in times:
                started = time.perf_counter()
                rows = await queries._select(_DAILY, scope, params, column="k8s_namespace",
                                             source="" if source == "expenses" else source)
                elapsed = time.perf_counter() - started
                if i >= 2:
                    times[source].append(elapsed)
                answers[source] = sorted((day, sorted(zip(keys, costs))) for day, keys, costs in rows)
    finally:
        await store.close()
    same = all(
        a[0] == b[0] and [k for k, _ in a[1]] == [k for k, _ in b[1]]
        and all(abs(x - y) <= 1e-9 * max(1.0, abs(y)) for (_, x), (_, y) in zip(a[1], b[1]))
        for a, b in zip(answers[NAMESPACE_DAILY], answers["expenses"])
    ) and len(answers[NAMESPACE_DAILY]) == len(answers["expenses"])
    p = {source: (1000 * statistics.median(t), 1000 * statistics.quantiles(t, n=20)[18]) for source, t in times.items()}
    points = sum(len(costs) for _, costs in answers["expenses"])
    print(f"daily breakdown by namespace, {days} days + the previous period, {len(accounts)} accounts, {points:,} points")
    print("| source | p50 ms | p95 ms |\n| --- | ---: | ---: |")
    for source, (p50, p95) in p.items():
        print(f"| {source} | {p50:.0f} | {p95:.0f} |")
    print(f"expenses ÷ {NAMESPACE_DAILY} p50: {p['expenses'][0] / p[NAMESPACE_DAILY][0]:.2f}; same answer: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(run(args.days, args.requests))


if __name__ == "__main__":
    main()
