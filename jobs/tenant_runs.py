"""What the per-tenant Ray jobs (rightsizing, optimizations) share: the accounts they read,
a Ray task per tenant submitted at once, and how they exit.

Exit codes, as every job's CLI: 0 done (or no account to do), 1 a store or Ray unreachable
or a tenant failed (a run replaces, never adds: run it again), 2 bad arguments or an
unknown account.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ray.util import metrics

from k8scost import raylocal
from k8scost.settings import StoreSettings
from k8scost.stores import StoreUnavailable
from k8scost.stores.accounts import Account, AccountStore
from k8scost.stores.mongo import connect

log = logging.getLogger("jobs")

Report = TypeVar("Report")


async def each_tenant(
    job: str,
    accounts: Sequence[Account],
    submit: Callable[[Account], Any],
    describe: Callable[[Report], str],
    failures: metrics.Counter,
) -> tuple[list[Report], list[str]]:
    """``submit(account)`` (a Ray task's ref) for every account at once; the reports of the
    tasks that finished, and the ids of the accounts whose task failed (logged, counted)."""
    pending = {asyncio.ensure_future(_result(submit(account))): account for account in accounts}
    reports: list[Report] = []
    failed: list[str] = []
    while pending:
        finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for future in finished:
            account = pending.pop(future)
            try:
                report = future.result()
            except Exception as exc:  # Ray retried already; the next run tries again
                failed.append(account.id)
                failures.inc()
                log.error("%s: tenant %s failed: %s", job, account.id, exc)
                continue
            reports.append(report)
            log.info("%s: tenant %s: %s (%d/%d tenants)", job, account.id, describe(report),
                     len(reports) + len(failed), len(accounts))
    return reports, failed


async def _result(ref: Any) -> Any:
    return await ref


def run_job(
    job: str, stores: StoreSettings, cloud_account_id: str | None, organization_id: str | None, address: str | None,
    run: Callable[[list[Account]], Awaitable[dict[str, Any]]],
) -> int:
    """Read the accounts, reach Ray, ``run`` them and print its summary as JSON; the exit code."""
    try:
        accounts = asyncio.run(AccountStore(connect(stores)).select(cloud_account_id, organization_id))
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"error: MongoDB unreachable at {stores.mongodb_url}: {exc.__cause__}", file=sys.stderr)
        return 1
    if not accounts:
        print(json.dumps({"accounts": 0, "done": 0, "failed": []}))
        return 0
    try:
        raylocal.connect(address)
    except raylocal.RayUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = asyncio.run(run(accounts))
    print(json.dumps(summary))
    if summary["failed"]:
        print(f"error: {len(summary['failed'])} tenants failed; run again (a run replaces, never adds)", file=sys.stderr)
        return 1
    return 0
