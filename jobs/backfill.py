"""Backfill: recompute tenants' expenses over a range of UTC days from the TSDB.

    ray job submit --working-dir . -- python -m jobs.backfill \\
        --cloud-account-id ID [--cloud-account-id ID ...] --start 2026-10-01 --end 2026-11-01
    ray job submit --working-dir . -- python -m jobs.backfill --organization-id ORG --start ... --end ...

Every (account, day) is a Ray task that reads the day's costs through Metroculus, in
parallel. Then the tenant, on its host (the single writer of that tenant's ledger), writes the
days one by one, so a backfill never races the live cycle; it is told each resource's
first and last day in the range, so each resource document is written once, not once per
day. The tenant writes only what differs from its ledger: rerunning changes nothing. Each
written day is checkpointed in MongoDB (``backfill_runs``): an interrupted run, started
again with the same arguments, resumes with the days not written yet. Progress (days
read and written out of the total, rows, ETA) goes to the job log, which the Ray
dashboard shows.
Exit status: 0 all days written, 1 some days failed or no Ray cluster answered (rerun to
resume), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import ray

from actors.host import place
from actors.tenant import TenantConfig, query_daily_costs
from k8scost import ledger, raylocal
from k8scost.metroculus_client import MetroculusClient
from k8scost.settings import StoreSettings, from_env
from k8scost.stores.accounts import Account, AccountStore
from k8scost.stores.backfills import BackfillStore, run_id, task_key
from k8scost.stores.mongo import connect
from k8scost.stores.placements import PlacementStore

log = logging.getLogger("jobs.backfill")


class BackfillError(Exception):
    """The backfill cannot start as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class DayRead:
    """One account's day as the TSDB has it, and how long reading it took."""

    account_id: str
    day: datetime
    daily: ledger.DailyCosts
    seconds: float


@ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=True)
def read_day(account_id: str, day: datetime, config: TenantConfig) -> DayRead:
    """``day``'s costs of ``account_id`` per resource, read through Metroculus.

    A fraction of a CPU: the task waits on the TSDB far more than it computes. Retried on
    errors (a TSDB outage); reading changes nothing.
    """

    async def run() -> DayRead:
        async with MetroculusClient(config.ledger.metroculus_url, config.cluster_secret) as metroculus:
            started = time.perf_counter()
            daily = await query_daily_costs(metroculus, account_id, [day], config.ledger)
            return DayRead(account_id, day, daily, time.perf_counter() - started)

    return asyncio.run(run())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.backfill", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--cloud-account-id", action="append", metavar="ID", help="an account to backfill (repeatable)")
    which.add_argument("--organization-id", metavar="ID", help="backfill every Kubernetes account of the organization")
    parser.add_argument("--start", required=True, type=_day, help="first UTC day, YYYY-MM-DD (included)")
    parser.add_argument("--end", required=True, type=_day, help="UTC day after the last, YYYY-MM-DD (excluded)")
    parser.add_argument("--parallel", type=_positive, default=8, help="days read at once, as Ray tasks (default 8)")
    parser.add_argument("--address", default=raylocal.default_address(),
                        help="Ray GCS address, host:port (default: $RAY_ADDRESS, as `ray job submit` sets it, "
                             f"else {raylocal.LOCAL_ADDRESS})")
    args = parser.parse_args(argv)
    if args.start >= args.end:
        parser.error(f"--start {args.start} must be before --end {args.end}")
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    if args.end > tomorrow:
        parser.error(f"--end {args.end} is after tomorrow ({tomorrow}): days that have not begun have no costs")
    # Older days would read as partly or wholly without cost, and the actor would write that
    # over what was billed. The Compactor deletes a block only once its newest sample is
    # older than the retention, so every day from today - (retention - 1) on is whole.
    retention = from_env(StoreSettings).tsdb_raw_retention_days
    oldest = tomorrow - timedelta(days=retention)
    if args.start < oldest:
        parser.error(f"--start {args.start} is before {oldest}: the TSDB keeps raw samples for {retention} days "
                     "(TSDB_RAW_RETENTION_DAYS), older days cannot be recomputed")
    return args


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day in the form YYYY-MM-DD") from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


class Progress:
    """Days read and written out of the total, rows written, and an ETA from this run's pace."""

    def __init__(self, total: int, already_done: int) -> None:
        self.total = total
        self.resumed_from = already_done
        self.read = self.written = already_done
        self.rows = 0
        self.read_seconds = 0.0
        self.write_seconds = 0.0
        self.started = time.perf_counter()

    def line(self, phase: str) -> str:
        elapsed = time.perf_counter() - self.started
        done = self.read if phase == "read" else self.written
        ran = done - self.resumed_from
        eta = elapsed / ran * (self.total - done) if ran else float("nan")
        what = f"read {done}/{self.total} days" if phase == "read" else f"{done}/{self.total} days"
        return (f"backfill: {what} ({100 * done / self.total:.0f} %), {self.rows} rows written, "
                f"{elapsed:.1f} s elapsed, ETA of this phase {eta:.0f} s")


def seen_ranges(reads: list[DayRead]) -> dict[str, tuple[datetime, datetime]]:
    """Per resource id, the first and last day it has a cost among ``reads``."""
    seen: dict[str, tuple[datetime, datetime]] = {}
    for read in reads:
        for rid, day in read.daily.costs:
            first, last = seen.get(rid, (day, day))
            seen[rid] = (min(first, day), max(last, day))
    return seen


async def backfill(accounts: list[Account], start: date, end: date, parallel: int, config: TenantConfig) -> dict[str, Any]:
    """Write every day of [start, end) of ``accounts``; the run's summary."""
    store = BackfillStore(connect(config.stores))
    run = run_id((a.id for a in accounts), start, end)
    done = await store.begin(run, [a.id for a in accounts], start, end)
    days = [datetime.combine(start + timedelta(days=n), datetime.min.time(), UTC) for n in range((end - start).days)]
    work = [(a, day) for day in days for a in accounts if task_key(a.id, day.date()) not in done]
    progress = Progress(len(days) * len(accounts), len(days) * len(accounts) - len(work))
    if done:
        log.info("backfill %s: resuming, %d of %d days already done", run, progress.written, progress.total)
    placement = await place({a.id: a.organization_id for a in accounts}, config, PlacementStore(connect(config.stores)))
    failed: list[str] = []

    # Read: every day of every account, PARALLEL tasks at a time.
    reads: dict[str, list[DayRead]] = {a.id: [] for a in accounts}
    in_flight: dict[asyncio.Future[DayRead], tuple[Account, datetime]] = {}
    while work or in_flight:
        while work and len(in_flight) < parallel:
            account, day = work.pop(0)
            ref = read_day.options(name=f"backfill read {account.id} {day.date()}").remote(account.id, day, config)
            in_flight[asyncio.ensure_future(_result(ref))] = (account, day)
        finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        for future in finished:
            account, day = in_flight.pop(future)
            try:
                read = future.result()
            except Exception as exc:  # retried by Ray already; left for the next run
                failed.append(task_key(account.id, day.date()))
                log.error("backfill: reading %s %s failed: %s", account.id, day.date(), exc)
                continue
            reads[account.id].append(read)
            progress.read += 1
            progress.read_seconds += read.seconds
            log.info("%s", progress.line("read"))

    # Write: each account's days in order through its tenant host; accounts side by side.
    async def write(account: Account) -> None:
        seen = seen_ranges(reads[account.id])
        for read in sorted(reads[account.id], key=lambda r: r.day):
            key = task_key(account.id, read.day.date())
            started = time.perf_counter()
            try:
                report = await placement.host(account.id).write.remote(account.id, [read.day], read.daily, seen)
            except Exception as exc:  # the tenant names the store that failed; left for the next run
                failed.append(key)
                log.error("backfill: writing %s %s failed: %s", account.id, read.day.date(), exc)
                continue
            await store.mark_done(run, key)
            progress.written += 1
            progress.rows += report.rows_written
            progress.write_seconds += time.perf_counter() - started
            log.info("%s", progress.line("write"))

    await asyncio.gather(*(write(account) for account in accounts))
    if not failed:
        await store.finish(run)
    return {
        "run": run,
        "accounts": [a.id for a in accounts],
        "start": start.isoformat(),
        "end": end.isoformat(),
        "days": progress.total,
        "resumed_with_done": progress.resumed_from,
        "written_days": progress.written - progress.resumed_from,
        "failed": sorted(failed),
        "rows_written": progress.rows,
        "seconds": round(time.perf_counter() - progress.started, 3),
        "read_seconds": round(progress.read_seconds, 3),  # summed over the tasks, which overlap
        "write_seconds": round(progress.write_seconds, 3),
    }


async def _result(ref: Any) -> DayRead:
    return await ref


async def main_async(args: argparse.Namespace, config: TenantConfig) -> dict[str, Any]:
    try:
        accounts = await AccountStore(connect(config.stores)).select(args.cloud_account_id, args.organization_id)
    except LookupError as exc:
        raise BackfillError(str(exc)) from None
    return await backfill(accounts, args.start, args.end, args.parallel, config)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    config = TenantConfig.from_env()
    try:
        raylocal.connect(args.address, config.ledger.ray_namespace)
    except raylocal.RayUnavailable as exc:  # not an argument's fault: run the same command again once Ray is up
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        summary = asyncio.run(main_async(args, config))
    except BackfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    if summary["failed"]:
        print(f"error: {len(summary['failed'])} days failed; run the same command again to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
