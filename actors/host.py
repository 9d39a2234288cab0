"""TenantHost: one Ray actor process running the ledgers of up to ``TENANTS_PER_HOST`` tenants.

A Ray actor is a process, and the process is most of a small tenant's cost: a bare Ray
actor is ≈ 49 MB PSS and a tenant's imports and clients ≈ 20 MB more, while a small
tenant's own state is tens of kB (``scripts/bench_tenants.py``). So a host's tenants share
one process, one event loop and one set of clients; each keeps its own lock, state and
cycle loop (``actors.tenant.Tenant``), and stays the single writer of its ledger.

Which tenants a host runs: those it was made with (tests, benchmarks) and those placed on
it in MongoDB (``k8scost.stores.placements``, by the supervisor or a backfill). It reads its
placements when it starts, so a host Ray restarts runs the same tenants again, each
rebuilding its state from ClickHouse; and on ``reconcile``. A host's process dying (a
crash, an OOM, the supervisor restarting a stalled tenant's host) restarts all its tenants:
each settles on its next cycle, which is exact, only later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import ray

from actors.tenant import CycleReport, Tenant, TenantClients, TenantConfig
from k8scost import ledger
from k8scost.stores.mongo import connect
from k8scost.stores.placements import HOST_PREFIX, PlacementStore

log = logging.getLogger(__name__)


class UnknownTenant(LookupError):
    """A call named a tenant the host does not run."""


@ray.remote(num_cpus=0, max_restarts=-1)
class TenantHost:
    """Named ``tenant-host-<n>`` when placed by the supervisor; detached, restarted by Ray."""

    def __init__(self, name: str, config: TenantConfig, tenants: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.settings = config.ledger
        self.clients = TenantClients.connect(config)
        self.placements = PlacementStore(connect(config.stores))
        self.given = dict(tenants or {})  # account → organization, run whatever the placements say
        self.tenants: dict[str, Tenant] = {}
        for account_id, organization_id in self.given.items():
            self._start(account_id, organization_id)
        # Async actors run __init__ on their event loop. The placed tenants come back
        # after a restart without waiting for the supervisor's next reconciliation.
        self.adopting = asyncio.get_running_loop().create_task(self._adopt())

    async def _adopt(self) -> None:
        try:
            await self.reconcile()
        except Exception as exc:  # MongoDB down: the supervisor's next reconciliation retries
            log.warning("host %s: reading its placements failed: %s", self.name, exc)

    def _start(self, account_id: str, organization_id: str) -> None:
        tenant = Tenant(account_id, organization_id, self.settings, self.clients)
        tenant.start()
        self.tenants[account_id] = tenant

    async def reconcile(self) -> dict[str, dict[str, Any]]:
        """Run exactly the tenants given and those placed on this host; each one's status."""
        wanted = {**await self.placements.on(self.name), **self.given}
        for account_id in self.tenants.keys() - wanted.keys():
            self.tenants.pop(account_id).stop()
            log.info("host %s: tenant %s no longer placed here, stopped", self.name, account_id)
        for account_id in wanted.keys() - self.tenants.keys():
            self._start(account_id, wanted[account_id])
        return await self.report()

    async def _tenant(self, account_id: str) -> Tenant:
        await asyncio.shield(self.adopting)  # after a restart, calls wait until the placed tenants run
        if account_id not in self.tenants:
            await self.reconcile()  # placed since the last reconciliation
        try:
            return self.tenants[account_id]
        except KeyError:
            raise UnknownTenant(f"tenant {account_id!r} does not run on {self.name}") from None

    async def cycle(self, account_id: str, days: Sequence[datetime] | None = None) -> CycleReport:
        """The tenant's cycle (``Tenant.cycle``)."""
        return await (await self._tenant(account_id)).cycle(days)

    async def write(
        self, account_id: str, days: Sequence[datetime], daily: ledger.DailyCosts,
        seen: Mapping[str, tuple[datetime, datetime]] | None = None,
    ) -> CycleReport:
        """A backfill's write into the tenant's ledger (``Tenant.write``)."""
        return await (await self._tenant(account_id)).write(days, daily, seen)

    async def arm_crash(self, account_id: str, point: str) -> None:
        """Fault injection for tests: the process, with all its tenants, dies at ``point`` of the
        tenant's next cycle."""
        await (await self._tenant(account_id)).arm_crash(point)

    async def status(self, account_id: str) -> dict[str, Any]:
        """The tenant's status (``Tenant.status``), and the host's name."""
        return {**await (await self._tenant(account_id)).status(), "host": self.name}

    async def report(self) -> dict[str, dict[str, Any]]:
        """account → status, every tenant the host runs."""
        return {account_id: {**await tenant.status(), "host": self.name} for account_id, tenant in self.tenants.items()}


def tenant_host(name: str, config: TenantConfig) -> Any:
    """The host named ``name``: the running one, or a new one (the supervisor's, or a backfill's before it)."""
    slot = config.ledger.host_slot_resource
    return TenantHost.options(
        name=name,
        namespace=config.ledger.ray_namespace,
        lifetime="detached",
        get_if_exists=True,  # after a supervisor restart: adopt the running host
        # Reserved resources are what Ray's autoscaler sees: a new host can add a node.
        memory=config.ledger.host_memory_mb * 1024 * 1024,
        resources={slot: 1} if slot else None,
    ).remote(name, config)


def running_hosts(namespace: str) -> dict[str, Any]:
    """host name → handle, the tenant hosts running in ``namespace``: a supervisor (re)starting
    adopts them, so it also stops those whose tenants were all deleted while it was down."""
    hosts = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == namespace and actor["name"].startswith(HOST_PREFIX):
            with contextlib.suppress(ValueError):  # gone since it was listed
                hosts[actor["name"]] = ray.get_actor(actor["name"], namespace=namespace)
    return hosts


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where accounts run: account → host name, and host name → the host's handle."""

    host_of: dict[str, str]
    handles: dict[str, Any]

    def host(self, account_id: str) -> Any:
        return self.handles[self.host_of[account_id]]


async def place(
    accounts: Mapping[str, str], config: TenantConfig, placements: PlacementStore,
    placed: Mapping[str, str] | None = None, known: Mapping[str, Any] | None = None,
) -> Placement:
    """Where ``accounts`` (account → organization) run, placing those not placed yet
    (``PlacementStore.place``) and starting the hosts not running. A host starts a newly
    placed tenant on the supervisor's next reconciliation, or on the first call naming it.

    ``placed``: every placement as the caller just read it; ``known``: host name → handle of
    the hosts the caller holds. Only other hosts are looked up at Ray's GCS, a blocking call.
    """
    host_of = await placements.place(accounts, config.ledger.tenants_per_host, placed)
    known = known or {}
    return Placement(host_of, {name: known[name] if name in known else tenant_host(name, config)
                               for name in set(host_of.values())})
