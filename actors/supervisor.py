"""TenantSupervisor: one TenantActor per live kubernetes_cnr account, kept healthy.

It reconciles actors with the accounts in MongoDB (a new account gets its actor, a
deleted one loses it — its ledger stays), restarts actors that do not answer or stall,
and reports each tenant's last cycle, lag, rows written and last error, also as metrics.
Being the one cluster-wide loop, it also enforces the ledger's retention
(``ExpenseStore.expire``) every ``RETENTION_EVERY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import ray

from actors import metrics
from actors.tenant import TenantActor, TenantConfig
from k8scost.settings import LedgerSettings
from k8scost.stores.accounts import AccountStore
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.mongo import connect

log = logging.getLogger(__name__)

SUPERVISOR_NAME = "tenant-supervisor"
_STATUS_TIMEOUT = 10.0
# Months expire at most once a month; an hour keeps a missed or failed run short.
RETENTION_EVERY_SECONDS = 3600.0


def stalled(status: Mapping[str, Any], settings: LedgerSettings) -> bool:
    """Whether an actor's ``status`` shows a stuck cycle: no error, and no good cycle for
    ``stalled_after_cycles`` cycles.

    Until its first good cycle its lag counts from its start, and that cycle waits up to
    ``start_spread_seconds`` first: so much more is allowed then. Without it an actor whose
    share of the spread passes the budget would be restarted forever, waiting as long each time.
    """
    budget = settings.stalled_after_cycles * settings.cycle_seconds
    if status["last_success"] is None:
        budget += settings.start_spread_seconds
    return status["last_error"] is None and status["lag_seconds"] > budget


def tenant_actor_name(account_id: str) -> str:
    return f"tenant-{account_id}"


def tenant_actor(account_id: str, organization_id: str, config: TenantConfig) -> Any:
    """The tenant's actor: the running one, or a new one (the supervisor's, or a backfill's before it)."""
    slot = config.ledger.actor_slot_resource
    return TenantActor.options(
        name=tenant_actor_name(account_id),
        namespace=config.ledger.ray_namespace,
        lifetime="detached",
        get_if_exists=True,  # after a supervisor restart: adopt the running actor
        # Reserved resources are what Ray's autoscaler sees: a new tenant can add a node.
        memory=config.ledger.actor_memory_mb * 1024 * 1024,
        resources={slot: 1} if slot else None,
    ).remote(account_id, organization_id, config)


@ray.remote(num_cpus=0, max_restarts=-1)
class TenantSupervisor:
    def __init__(self, config: TenantConfig) -> None:
        self.config = config
        self.settings = config.ledger
        self.accounts = AccountStore(connect(config.stores))
        self.expenses = ExpenseStore(config.stores)
        self.retention: dict[str, Any] = {"last_run": None, "dropped": [], "error": None}
        self.next_expiry = 0.0  # time.monotonic() of the next retention run
        self.actors: dict[str, Any] = {}
        self.report: dict[str, dict[str, Any]] = {}
        self.last_error: str | None = None
        self.loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:  # MongoDB down: keep the actors as they are, retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("reconcile failed: %s", self.last_error)
            if time.monotonic() >= self.next_expiry:
                await self.expire()
            await asyncio.sleep(self.settings.reconcile_seconds)

    async def expire(self) -> dict[str, Any]:
        """Drop the ledger's months past the retention now; what this run did (also in ``status``)."""
        self.next_expiry = time.monotonic() + RETENTION_EVERY_SECONDS
        try:
            dropped = await self.expenses.expire()
        except Exception as exc:  # ClickHouse down: the actors are unaffected, retry within the hour
            self.retention["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("retention failed: %s", self.retention["error"])
        else:
            self.retention = {"last_run": time.time(), "dropped": dropped, "error": None}
            if dropped:
                log.info("retention: dropped the expenses of months %s", dropped)
        return self.retention

    async def reconcile(self) -> dict[str, dict[str, Any]]:
        """Match actors to accounts, check their health; the per-tenant report."""
        accounts = {account.id: account for account in await self.accounts.list()}
        for account_id in self.actors.keys() - accounts.keys():
            ray.kill(self.actors.pop(account_id), no_restart=True)
            self.report.pop(account_id, None)
            log.info("tenant %s: account deleted, actor stopped", account_id)
        for account_id in accounts.keys() - self.actors.keys():
            self.actors[account_id] = tenant_actor(account_id, accounts[account_id].organization_id, self.config)
        await asyncio.gather(*(self._check(account_id, actor) for account_id, actor in self.actors.items()))
        metrics.TENANTS.set(len(self.actors))
        self.last_error = None
        return self.report

    async def _check(self, account_id: str, actor: Any) -> None:
        tags = {"tenant": account_id}
        try:
            status = await asyncio.wait_for(actor.status.remote(), _STATUS_TIMEOUT)
        except Exception as exc:  # not answering (hung, or dead and not restarting)
            self._restart(account_id, actor, f"status failed: {type(exc).__name__}: {exc}")
            return
        if stalled(status, self.settings):
            self._restart(account_id, actor, f"no cycle for {status['lag_seconds']:.0f}s")
        self.report[account_id] = status
        metrics.LAG.set(status["lag_seconds"], tags=tags)
        metrics.ROWS_WRITTEN.set(status["rows_written_total"], tags=tags)
        metrics.FAILING.set(1 if status["last_error"] else 0, tags=tags)
        if status["last_success"]:
            metrics.LAST_SUCCESS.set(status["last_success"], tags=tags)

    def _restart(self, account_id: str, actor: Any, why: str) -> None:
        log.warning("tenant %s: restarting its actor (%s)", account_id, why)
        self.report[account_id] = {"account_id": account_id, "last_error": why, "restarted_at": time.time()}
        metrics.RESTARTS.inc(tags={"tenant": account_id})
        ray.kill(actor, no_restart=False)  # Ray starts it again; it rebuilds its state from ClickHouse

    async def status(self) -> dict[str, Any]:
        return {"tenants": self.report, "last_error": self.last_error, "retention": self.retention}
