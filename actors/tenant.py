"""Tenant: the one writer of one tenant's ledger, run by a tenant host (``actors.host``).

Every cycle it asks Metroculus for the open days' costs, writes the resources that are
new or changed to MongoDB, then writes the changed resource-days to ClickHouse in one
INSERT. By default (``LEDGER_MODE=incremental``) a cycle reads only the hours not closed
yet and adds them to the closed hours it keeps (``k8scost.ledger.plan_cycle``); it
*settles*, reading the open days from their start, when the ingress recorded late
samples since its last settle, when a day closes, on a schedule, and whenever it has no
closed hours it can trust: at (re)start, after a failed cycle, after a backfill wrote its
days. It keeps the live row of every resource-day it has written in memory, and rebuilds
that from ClickHouse whenever it cannot be sure of it —
at (re)start, and after any failed cycle — so a crash or an outage at any point neither
duplicates nor loses cost: an INSERT that may or may not have landed is read back, never
sent twice.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import os
import time
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from actors import metrics
from k8scost import ledger
from k8scost.metroculus_client import MetroculusClient
from k8scost.settings import DAY, LedgerSettings, MetroculusSettings, StoreSettings, from_env
from k8scost.stores import StoreUnavailable
from k8scost.stores.clickhouse import ExpenseRow, ExpenseStore
from k8scost.stores.late_samples import LateSampleStore
from k8scost.stores.mongo import connect
from k8scost.stores.resources import Kind, Resource, ResourceStore

log = logging.getLogger(__name__)

# Points of a cycle where tests may make the process die (fault injection, see arm_crash).
CRASH_POINTS = ("after_query", "after_resources", "before_insert", "after_insert")

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if os.name == "posix" else None


class _CollectorPaused:
    """Python's cyclic garbage collector off while any tenant of the process is in a cycle.

    A cycle makes hundreds of thousands of small objects (parsed answers, rows), and each
    batch of them set off a collection that walked every tenant's state: with 20,000 pods,
    0.35 s of a 1.9 s steady cycle (cProfile, in-process). What a cycle makes is freed by
    reference counting, and the collection after it (``_release_memory``) takes the rest.
    """

    cycles = 0

    def __enter__(self) -> None:
        if _CollectorPaused.cycles == 0:
            gc.disable()
        _CollectorPaused.cycles += 1

    def __exit__(self, *exc_info: object) -> None:
        _CollectorPaused.cycles -= 1
        if _CollectorPaused.cycles == 0:
            gc.enable()


def _release_memory() -> None:
    """Hand a cycle's garbage back to the OS.

    An actor waits minutes between cycles, and glibc keeps freed heap mapped: a tenant
    with 20,000 pods would otherwise hold its cycle's peak (parsed answers, rows) for good.
    """
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


async def read_costs(
    metroculus: MetroculusClient, account_id: str, reads: Sequence[ledger.Read], lag: int
) -> list[dict[str, Any]]:
    """Metroculus' answers to ``reads``, asked at once."""
    return await asyncio.gather(*(
        metroculus.kubecost_metrics(account_id, ledger.LEDGER_METRICS, read.start, read.end, step=read.step, lag=lag)
        for read in reads
    ))


async def query_daily_costs(
    metroculus: MetroculusClient, account_id: str, days: Sequence[datetime], settings: LedgerSettings
) -> ledger.DailyCosts:
    """The costs per resource-day of ``days`` as the TSDB has them now, each day read whole
    (a full-mode cycle's read, or a backfill task's)."""
    # A day per query: the TSDB bounds the samples one query may touch (Prometheus'
    # --query.max-samples, 50 M), and 20,000 pods over two days at 60 s go past it.
    reads = [ledger.Read(int(day.timestamp()), int(day.timestamp()) + DAY, DAY) for day in days]
    answers = await read_costs(metroculus, account_id, reads, settings.rate_lag_seconds)
    return ledger.daily_costs(account_id, answers, days)


@dataclasses.dataclass(frozen=True)
class TenantConfig:
    """Everything a tenant host reads from the environment, read once by whoever launches it."""

    ledger: LedgerSettings
    stores: StoreSettings
    cluster_secret: str

    @classmethod
    def from_env(cls) -> TenantConfig:
        return cls(from_env(LedgerSettings), from_env(StoreSettings), from_env(MetroculusSettings).cluster_secret)


@dataclasses.dataclass
class CycleReport:
    """What one cycle did, and how long each stage took."""

    days: list[str]
    rows_written: int
    resources_upserted: int
    query_seconds: float
    compute_seconds: float
    mongodb_seconds: float
    clickhouse_seconds: float  # the INSERT, and reading live rows back when that was needed
    rebuilt: bool  # live rows were read back from ClickHouse
    read: str  # "full" (LEDGER_MODE=full), "settle (<why>)", "new hours", or "backfill" (read by the job)
    hours_read: float  # hours of TSDB time the reads covered (a whole day: 24; 0 for a backfill's write)


class TenantClients:
    """The store and Metroculus clients the tenants of one process share, and the ledger's
    schema, checked once per process on the first write."""

    def __init__(
        self, expenses: ExpenseStore, resources: ResourceStore, late_samples: LateSampleStore,
        metroculus: MetroculusClient,
    ) -> None:
        self.expenses = expenses
        self.resources = resources
        self.late_samples = late_samples
        self.metroculus = metroculus
        self._migrated = False
        self._migrating = asyncio.Lock()

    @classmethod
    def connect(cls, config: TenantConfig) -> TenantClients:
        db = connect(config.stores)
        return cls(ExpenseStore(config.stores), ResourceStore(db), LateSampleStore(db),
                   MetroculusClient(config.ledger.metroculus_url, config.cluster_secret))

    async def migrate(self) -> None:
        """Idempotent: whichever process writes first creates the table and the indexes."""
        async with self._migrating:
            if not self._migrated:
                await self.expenses.migrate()
                await self.resources.ensure_indexes()
                self._migrated = True


class Tenant:
    """The ledger writer of one kubernetes_cnr cloud account; ``start`` runs its cycle loop."""

    def __init__(self, account_id: str, organization_id: str, settings: LedgerSettings, clients: TenantClients) -> None:
        self.account_id = account_id
        self.organization_id = organization_id
        self.settings = settings
        self.clients = clients
        self.expenses = clients.expenses
        self.resources = clients.resources
        self.metroculus = clients.metroculus
        self.written: dict[ledger.ResourceDay, ExpenseRow] = {}
        # Per resource id: the dimensions its document was written with, from this process's
        # writes and from the live rows (ledger.documents_of_rows): a cycle writes only the
        # documents of resources that are new or moved, not of every resource whose cost changed.
        self.documents: dict[str, ledger.Dimensions] = {}
        # Per resource id: the earliest day its document is known to cover. A day before it
        # (a backfill, or days asked for) moves the document's first_seen back: a write too.
        self.first_days: dict[str, datetime] = {}
        self.loaded_days: set[datetime] = set()  # days whose live rows ``written`` holds for sure
        self.hours: ledger.Hours | None = None  # the closed hours an incremental cycle adds to; None: settle
        self.lock = asyncio.Lock()  # one writer at a time: the cycle, or a backfill's days
        self.crash_at: str | None = None
        self.started_at = time.time()
        self.start_delay = ledger.start_delay(account_id, settings.start_spread_seconds)
        self.cycles = 0
        self.rows_written_total = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_report: CycleReport | None = None
        self.loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the cycle loop on the running event loop, until ``stop``."""
        self.loop = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.cancel()

    async def _run(self) -> None:
        # Only the loop's first cycle waits, so actors started together (a supervisor's
        # start, a node Ray restarts) do not all read Metroculus at once; explicit cycles
        # and a backfill's writes go at once.
        await asyncio.sleep(self.start_delay)
        while True:
            try:
                await self.cycle()
            except Exception:  # recorded in status(); the next cycle retries
                pass
            await asyncio.sleep(self.settings.cycle_seconds)

    async def cycle(self, days: Sequence[datetime] | None = None) -> CycleReport:
        """Bring the ledger of ``days`` (default: the open days) in line with the TSDB.

        Days given are read whole (a settle, "days asked"); the open days read only the
        hours that can have changed since the last cycle (``k8scost.ledger.plan_cycle``).
        """
        asked = bool(days)
        days = sorted(days or ledger.open_days(time.time(), self.settings.open_days))
        return await self._locked(self._cycle(days, asked))

    async def write(
        self, days: Sequence[datetime], daily: ledger.DailyCosts,
        seen: Mapping[str, tuple[datetime, datetime]] | None = None,
    ) -> CycleReport:
        """Bring the ledger of ``days`` in line with ``daily``, costs a backfill task read from the TSDB.

        The same write as a cycle's, under the same lock: a backfill and the live cycle
        never write this tenant's ledger at once. ``seen``: per resource id, the first and
        last day it has cost in the whole backfill, so its document is written once for
        the range, not once more for each day that extends it (an update per resource per
        day is minutes on FerretDB).
        """
        return await self._locked(self._backfill(sorted(days), daily, seen or {}))

    async def _locked(self, work: Awaitable[CycleReport]) -> CycleReport:
        async with self.lock:
            try:
                with _CollectorPaused():
                    report = await work
            except Exception as exc:
                # Whatever was written is read back before the next write, and the days read whole.
                self.loaded_days.clear()
                self.hours = None
                self.last_error = f"{type(exc).__name__}: {exc}"
                metrics.CYCLE_FAILURES.inc(tags={"tenant": self.account_id, "error": type(exc).__name__})
                log.warning("tenant %s: cycle failed: %s", self.account_id, self.last_error)
                raise
            finally:
                _release_memory()
            self.cycles += 1
            self.rows_written_total += report.rows_written
            self.last_success = time.time()
            self.last_error = None
            self.last_report = report
            return report

    async def _cycle(self, days: list[datetime], asked: bool) -> CycleReport:
        started = time.perf_counter()
        lag = self.settings.rate_lag_seconds
        if self.settings.mode == "full":
            daily = await query_daily_costs(self.metroculus, self.account_id, days, self.settings)
            read, hours, hours_read, queried = "full", None, len(days) * 24.0, time.perf_counter()
        else:
            now = time.time()
            late = await self._late_record()
            plan = ledger.plan_cycle(self.hours, days, now, lag, self.settings.close_delay_seconds,
                                     self.settings.settle_seconds, asked, late)
            closed_answers, open_answers = await asyncio.gather(
                read_costs(self.metroculus, self.account_id, plan.closed_reads, lag),
                read_costs(self.metroculus, self.account_id, plan.open_reads, lag),
            )
            queried = time.perf_counter()
            closed = plan.base.plus(ledger.fold(self.account_id, closed_answers, days))
            daily = ledger.balanced(self.account_id, closed.plus(ledger.fold(self.account_id, open_answers, days)))
            settled_at = now if plan.settle or self.hours is None else self.hours.settled_at
            hours = ledger.Hours(tuple(days), plan.closed_until, closed, settled_at, late)
            read = f"settle ({plan.settle})" if plan.settle else "new hours"
            hours_read = sum(r.end - r.start for r in (*plan.closed_reads, *plan.open_reads)) / ledger.HOUR
        self._maybe_crash("after_query")
        report = await self._write(days, daily, queried - started, read, hours_read,
                                   fold_seconds=time.perf_counter() - queried)
        self.hours = hours  # only now: a cycle that failed leaves none, and the next settles
        return report

    async def _late_record(self) -> float | None:
        """The tenant's late-sample record, read before the TSDB: a late write recorded after
        this is one the next cycle sees.

        While MongoDB is down, the record the last cycle saw: the ingress answers no late
        write 2xx without its record, and the write the sender sends again records it.
        """
        try:
            return await self.clients.late_samples.landed_at(self.account_id)
        except StoreUnavailable:
            return None if self.hours is None else self.hours.late_seen

    async def _backfill(
        self, days: list[datetime], daily: ledger.DailyCosts, seen: Mapping[str, tuple[datetime, datetime]]
    ) -> CycleReport:
        if self.hours is not None and not set(days).isdisjoint(self.hours.days):
            # The backfill read these days later than the hours kept: settle rather than
            # write the older hours over it.
            self.hours = None
        return await self._write(days, daily, 0.0, "backfill", 0.0, seen=seen)

    async def _write(
        self, days: list[datetime], daily: ledger.DailyCosts, query_seconds: float, read: str, hours_read: float,
        fold_seconds: float = 0.0, seen: Mapping[str, tuple[datetime, datetime]] | None = None,
    ) -> CycleReport:
        await self.clients.migrate()
        started = time.perf_counter()
        reload_seconds = await self._load(days)
        rows, changed = ledger.corrections(self.account_id, self.written, daily)
        computed = time.perf_counter()

        # Resources first: an expense never exists without the resource it is billed to.
        # A document is written when its resource is new or its fields changed (a pod
        # moved node), once for all the days it changed on; not for each new day a known
        # resource has cost: those days are its rows (see ResourceStore), and writing every
        # running resource's document each midnight takes FerretDB ≈ 25 ms a document.
        seen = seen or {}
        seen_days: dict[str, list[datetime]] = {}
        dimensions: dict[str, ledger.Dimensions] = {}
        for (rid, day), row in changed.items():
            if daily.resources[rid].kind is not Kind.CLUSTER_COST and (
                self.documents.get(rid) != row[5:] or day < self.first_days.get(rid, day)
            ):
                seen_days.setdefault(rid, []).append(day)
                dimensions[rid] = row[5:]
        touched: dict[tuple[datetime, datetime], dict[str, Resource]] = {}
        for rid, days_seen in seen_days.items():
            first, last = min(days_seen), max(days_seen)
            if rid in seen:
                first, last = min(first, seen[rid][0]), max(last, seen[rid][1])
            touched.setdefault((first, last), {})[rid] = daily.resources[rid]
        for (first, last), resources in touched.items():
            last_seen = min(time.time(), (last + timedelta(days=1)).timestamp() - 1)
            await self.resources.upsert(
                self.account_id, self.organization_id, resources.values(), int(first.timestamp()), int(last_seen)
            )
            self.documents.update({rid: dimensions[rid] for rid in resources})
            self.first_days.update({rid: min(first, self.first_days.get(rid, first)) for rid in resources})
        self._maybe_crash("after_resources")
        upserted = time.perf_counter()

        self._maybe_crash("before_insert")
        await self.expenses.insert(rows)
        self._maybe_crash("after_insert")
        self.written.update(changed)
        inserted = time.perf_counter()
        self._forget_closed_days(days)
        return CycleReport(
            days=[day.date().isoformat() for day in days],
            rows_written=len(rows),
            resources_upserted=sum(len(r) for r in touched.values()),
            query_seconds=query_seconds,
            compute_seconds=fold_seconds + computed - started - reload_seconds,
            mongodb_seconds=upserted - computed,
            clickhouse_seconds=inserted - upserted + reload_seconds,
            rebuilt=reload_seconds > 0,
            read=read,
            hours_read=hours_read,
        )

    async def _load(self, days: Sequence[datetime]) -> float:
        """Read the live rows of the days not known for sure from ClickHouse; the seconds it took."""
        missing = [day for day in days if day not in self.loaded_days]
        if not missing:
            return 0.0
        started = time.perf_counter()
        entries = await self.expenses.ledger(self.account_id, missing)
        broken = [key for key, entry in entries.items() if entry.row is None]
        if broken:
            # Only a write sent twice makes these; ClickHouse's merges collapse them. Writing
            # over them could cancel the one row a merge leaves, so stop and say so.
            raise RuntimeError(
                f"{len(broken)} resource-days have duplicated rows (e.g. {broken[0]}); "
                "run OPTIMIZE TABLE expenses FINAL and the next cycle goes on"
            )
        for day in missing:
            for key in [key for key in self.written if key[1] == day]:
                del self.written[key]
        live = {key: entry.row for key, entry in entries.items() if entry.row is not None}
        self.written.update(live)
        self.documents = ledger.documents_of_rows(self.documents, live.values())
        for rid, day in live:
            self.first_days[rid] = min(day, self.first_days.get(rid, day))
        self.loaded_days.update(missing)
        return time.perf_counter() - started

    def _forget_closed_days(self, days: Sequence[datetime]) -> None:
        """Drop days older than the open ones: memory stays bounded, and they reload if asked."""
        oldest_open = ledger.open_days(time.time(), self.settings.open_days)[0]
        old = {day for day in self.loaded_days if day < oldest_open and day not in days}
        if old:
            self.loaded_days -= old
            self.written = {key: row for key, row in self.written.items() if key[1] not in old}

    def _maybe_crash(self, point: str) -> None:
        if self.crash_at == point:
            os._exit(1)

    async def arm_crash(self, point: str) -> None:
        """Fault injection for tests: the process dies at ``point`` of the next cycle."""
        if point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}; one of {CRASH_POINTS}")
        self.crash_at = point

    async def status(self) -> dict[str, Any]:
        """Last cycle, lag, rows written and last error, for the supervisor and operators.

        ``lag_seconds`` counts from the actor's start until its first good cycle, which its
        loop runs ``start_delay_seconds`` after the start (``k8scost.ledger.start_delay``).
        """
        now = time.time()
        return {
            "account_id": self.account_id,
            "pid": os.getpid(),
            "cycles": self.cycles,
            "last_success": self.last_success,
            "lag_seconds": now - (self.last_success or self.started_at),
            "start_delay_seconds": self.start_delay,
            "rows_written_total": self.rows_written_total,
            "last_error": self.last_error,
            "last_report": dataclasses.asdict(self.last_report) if self.last_report else None,
            "resource_days_in_memory": len(self.written),
            "hours_closed_until": self.hours.closed_until if self.hours else None,
        }
