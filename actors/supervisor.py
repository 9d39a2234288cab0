"""TenantSupervisor: every live kubernetes_cnr account's ledger run by a tenant host, kept healthy.

It reconciles the hosts with the accounts in MongoDB: a new account is placed on a host
with room (``k8scost.stores.placements``), a deleted one is stopped (its ledger stays), a
host left with no tenant is stopped, one it finds running when it starts included. It
restarts a host that does not answer or runs a stalled tenant, and reports each tenant's
last cycle, lag, rows written and last error, also as metrics.
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
from actors.host import place, running_hosts
from actors.tenant import TenantConfig
from k8scost.settings import LedgerSettings
from k8scost.stores.accounts import AccountStore
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.mongo import connect
from k8scost.stores.placements import PlacementStore

log = logging.getLogger(__name__)

SUPERVISOR_NAME = "tenant-supervisor"
_STATUS_TIMEOUT = 10.0
# Months expire at most once a month; an hour keeps a missed or failed run short.
RETENTION_EVERY_SECONDS = 3600.0


def stalled(status: Mapping[str, Any], settings: LedgerSettings) -> bool:
    """Whether a tenant's ``status`` shows a stuck cycle: no error, and no good cycle for
    ``stalled_after_cycles`` cycles.

    Until its first good cycle its lag counts from its start, and that cycle waits up to
    ``start_spread_seconds`` first: so much more is allowed then. Without it a tenant whose
    share of the spread passes the budget would be restarted forever, waiting as long each time.
    """
    budget = settings.stalled_after_cycles * settings.cycle_seconds
    if status["last_success"] is None:
        budget += settings.start_spread_seconds
    return status["last_error"] is None and status["lag_seconds"] > budget


@ray.remote(num_cpus=0, max_restarts=-1)
class TenantSupervisor:
    def __init__(self, config: TenantConfig) -> None:
        self.config = config
        self.settings = config.ledger
        db = connect(config.stores)
        self.accounts = AccountStore(db)
        self.placements = PlacementStore(db)
        self.expenses = ExpenseStore(config.stores)
        self.retention: dict[str, Any] = {"last_run": None, "dropped": [], "error": None}
        self.next_expiry = 0.0  # time.monotonic() of the next retention run
        self.hosts: dict[str, Any] = running_hosts(config.ledger.ray_namespace)  # host name → handle
        self.report: dict[str, dict[str, Any]] = {}  # account → its last status, with its host
        self.last_error: str | None = None
        self.loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:  # MongoDB down: keep the hosts as they are, retry
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
        except Exception as exc:  # ClickHouse down: the tenants are unaffected, retry within the hour
            self.retention["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("retention failed: %s", self.retention["error"])
        else:
            self.retention = {"last_run": time.time(), "dropped": dropped, "error": None}
            if dropped:
                log.info("retention: dropped the expenses of months %s", dropped)
        return self.retention

    async def reconcile(self) -> dict[str, dict[str, Any]]:
        """Match hosts and their tenants to accounts, check their health; the per-tenant report."""
        accounts = {account.id: account.organization_id for account in await self.accounts.list()}
        placed = await self.placements.all()
        deleted = placed.keys() - accounts.keys()
        if deleted:
            await self.placements.remove(deleted)
            log.info("tenants %s: accounts deleted, stopped", sorted(deleted))
        # Every 15 s: the placements are read once, and only hosts new to it looked up at Ray's GCS.
        live = {account: host for account, host in placed.items() if account not in deleted}
        placement = await place(accounts, self.config, self.placements, live, self.hosts)
        for name in self.hosts.keys() - placement.handles.keys():  # no tenant left on it
            ray.kill(self.hosts.pop(name), no_restart=True)
            log.info("host %s: no tenant left, stopped", name)
        self.hosts.update(placement.handles)
        tenants_of: dict[str, list[str]] = {}
        for account_id, name in placement.host_of.items():
            tenants_of.setdefault(name, []).append(account_id)
        report: dict[str, dict[str, Any]] = {}
        await asyncio.gather(*(self._check(name, tenants, report) for name, tenants in tenants_of.items()))
        self.report = report
        metrics.TENANTS.set(len(accounts))
        metrics.HOSTS.set(len(self.hosts))
        self.last_error = None
        return self.report

    async def _check(self, name: str, tenants: list[str], report: dict[str, dict[str, Any]]) -> None:
        """Make the host run its ``tenants``; their statuses into ``report``, or restart it."""
        try:
            statuses = await asyncio.wait_for(self.hosts[name].reconcile.remote(), _STATUS_TIMEOUT)
        except Exception as exc:  # not answering (hung, or dead and not restarting)
            self._restart(name, tenants, report, f"status failed: {type(exc).__name__}: {exc}")
            return
        stuck = [a for a in tenants if a in statuses and stalled(statuses[a], self.settings)]
        if stuck:
            self._restart(name, tenants, report, f"tenant {stuck[0]}: no cycle for {statuses[stuck[0]]['lag_seconds']:.0f}s")
            return
        for account_id, status in statuses.items():
            tags = {"tenant": account_id}
            report[account_id] = status
            metrics.LAG.set(status["lag_seconds"], tags=tags)
            metrics.ROWS_WRITTEN.set(status["rows_written_total"], tags=tags)
            metrics.FAILING.set(1 if status["last_error"] else 0, tags=tags)
            if status["last_success"]:
                metrics.LAST_SUCCESS.set(status["last_success"], tags=tags)

    def _restart(self, name: str, tenants: list[str], report: dict[str, dict[str, Any]], why: str) -> None:
        log.warning("host %s: restarting it and its tenants %s (%s)", name, tenants, why)
        for account_id in tenants:
            report[account_id] = {"account_id": account_id, "host": name, "last_error": why, "restarted_at": time.time()}
            metrics.RESTARTS.inc(tags={"tenant": account_id})
        # Ray starts it again; its tenants rebuild their state from ClickHouse. Its handle is
        # looked up again next time: a host killed for good (``actors stop``) is made anew.
        ray.kill(self.hosts.pop(name), no_restart=False)

    async def status(self) -> dict[str, Any]:
        hosts: dict[str, list[str]] = {name: [] for name in self.hosts}
        for account_id, status in self.report.items():
            hosts.setdefault(status["host"], []).append(account_id)
        return {"tenants": self.report, "hosts": hosts, "last_error": self.last_error, "retention": self.retention}
