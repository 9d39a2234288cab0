"""The expenses ledger in ClickHouse (native protocol, asynch).

``expenses`` is a CollapsingMergeTree: a cost is written as a +1 row and corrected by a −1
row repeating the old values plus a +1 row with the new ones. Until ClickHouse merges
them, every reader must aggregate with ``sign``, which the queries here do.

Days are ``DateTime`` UTC day starts. They cross the wire as unix seconds
(``toDateTime(n)``, ``toUnixTimestamp(date)``) so the server's time zone never shifts them:
the driver would format a datetime parameter as wall-clock text in the server's zone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any, NamedTuple

from asynch import Connection, Pool
from asynch.errors import Error as AsynchError

from k8scost.settings import StoreSettings
from k8scost.stores import StoreUnavailable
from k8scost.stores import migrations

# What the driver raises when the server is down, restarts, or answers with an error.
_DRIVER_ERRORS = (AsynchError, OSError, EOFError)
_UNKNOWN_TABLE = 60
# A rebuild's tables (migrations with a sorting key): the rows claimed, and their new home.
_CLAIMED, _REBUILT = "expenses_claimed_", "expenses_rebuilt_"
# How long a process waits for another's rebuild before its cycle fails (and retries), and
# after how long a claim that never finished is taken over: a rebuild copies about a
# million rows a second here, so an hour covers a ledger of billions.
REBUILD_WAIT_SECONDS = 600.0
REBUILD_STALE_SECONDS = 3600.0
_POOL_MAXSIZE = 4


class _Table(NamedTuple):
    sorting_key: str
    age: float  # seconds since its metadata changed
    engine: str

# Columns ``daily_costs`` may group by: the only text ever interpolated into SQL.
GROUP_COLUMNS = frozenset({"resource_id", "k8s_cluster", "k8s_namespace", "k8s_node", "k8s_service"})

_INSERT = (
    "INSERT INTO expenses (cloud_account_id, resource_id, date, cost, sign, "
    "k8s_cluster, k8s_namespace, k8s_node, k8s_service, resource_type, resource_name) VALUES"
)

# The live rows of each (key, resource, day, cost): a −1 cancels the +1 of the same value.
# Summing per value first keeps costs exact: the survivor is usually one value with
# copies == 1, while a float sum of a, −a and b in whatever order the server picks may
# differ from b in the last bit.
_NET_ROWS = """
SELECT {key} AS key, date, cost, sum(sign) AS copies
FROM expenses
WHERE cloud_account_id = %(account)s
  AND date >= toDateTime(%(start)s) AND date < toDateTime(%(end)s){extra}
GROUP BY key, resource_id, date, cost
HAVING copies != 0
"""
# The live rows of each (resource, day), dimensions included: normally exactly one, once.
_LEDGER = """
SELECT resource_id, toUnixTimestamp(date), cost, sum(sign) AS copies,
       k8s_cluster, k8s_namespace, k8s_node, k8s_service, resource_type, resource_name
FROM expenses
WHERE cloud_account_id = %(account)s
  AND date >= toDateTime(%(start)s) AND date < toDateTime(%(end)s) AND toUnixTimestamp(date) IN %(days)s
GROUP BY resource_id, date, cost, k8s_cluster, k8s_namespace, k8s_node, k8s_service, resource_type, resource_name
HAVING copies != 0
"""
_DAILY = (
    "SELECT key, toUnixTimestamp(date), sum(cost * copies) FROM ({net}) "
    "GROUP BY key, date HAVING sum(copies) > 0"
)


class ExpenseRow(NamedTuple):
    """One row of ``expenses``; ``date`` is a tz-aware UTC midnight."""

    cloud_account_id: str
    resource_id: str
    date: datetime
    cost: float
    sign: int
    k8s_cluster: str | None
    k8s_namespace: str | None
    k8s_node: str | None
    k8s_service: str | None
    resource_type: str = ""  # "K8s Pod", … (k8scost.stores.resources.RESOURCE_TYPES)
    resource_name: str = ""


class LedgerEntry(NamedTuple):
    """What the ledger holds for one (resource, day): its cost and how many +1 rows are live.

    ``copies`` is 1 normally, and ``row`` is then the live +1 row, which a correction must
    repeat with sign −1 (dimensions included, or per-dimension sums go wrong until a
    merge). Otherwise ``row`` is None: above 1 a +1 row was written twice and ``cost`` is
    the sum of the copies. A merge collapses such duplicates by itself, keeping the last
    +1 row: a repair writing a −1 for the extra copy cancels the only row if a merge came first.
    """

    cost: float
    copies: int
    row: ExpenseRow | None = None


def _require_aware(moment: datetime) -> datetime:
    if moment.utcoffset() is None:
        # A naive datetime would be read in the server's zone: refuse rather than guess.
        raise ValueError(f"expected a tz-aware datetime, got {moment!r}")
    return moment


def _epoch(moment: datetime) -> int:
    return int(_require_aware(moment).timestamp())


def _day(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class ExpenseStore:
    """Reads and writes ``expenses`` through a connection pool of the running event loop."""

    def __init__(self, settings: StoreSettings) -> None:
        self._dsn = settings.clickhouse_url
        self._retention_months = migrations.retention_months(settings.expenses_retention_years)
        self._pool: Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _current_pool(self) -> Pool:
        # asyncio primitives and sockets belong to one loop: a caller on another loop
        # (e.g. a new asyncio.run) gets a pool of its own.
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is not loop:
            # minsize 0: the pool never has to open a connection while the server is down.
            self._pool = await Pool(minsize=0, maxsize=_POOL_MAXSIZE, dsn=self._dsn).startup()
            self._loop = loop
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        try:
            pool = await self._current_pool()
            async with pool.connection() as conn:
                try:
                    yield conn
                except BaseException:
                    # A failed or interrupted query may leave unread packets on the socket;
                    # a closed connection is discarded by the pool instead of reused.
                    with suppress(Exception):
                        await conn.close()
                    raise
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailable("ClickHouse", str(exc)) from exc

    async def _execute(self, query: str, args: Any = None, settings: dict[str, Any] | None = None) -> list[tuple]:
        async with self._connection() as conn:
            cursor = conn.cursor()
            if settings:
                cursor.set_settings(settings)
            await cursor.execute(query, args)
            return await cursor.fetchall() if cursor.description else []

    async def migrate(self) -> list[int]:
        """Apply the missing migrations in order; the versions this call applied."""
        await self._execute(migrations.BOOKKEEPING_DDL)
        applied = {version for (version,) in await self._execute(migrations.APPLIED_QUERY)}
        done: list[int] = []
        server: tuple[int, ...] | None = None
        for migration in migrations.pending(applied):
            if server is None:
                [(version,)] = await self._execute("SELECT version()")
                server = tuple(int(part) for part in version.split(".")[:2])
            try:
                if server < migration.since:
                    pass  # recorded all the same: the migration's comment says what stands in for it
                elif migration.sorting_key:
                    await self._rebuild(migration)
                elif migration.view:
                    await self._add_view(migration)
                else:
                    await self._execute(migration.sql.format(retention_months=self._retention_months))
            except StoreUnavailable as exc:
                if getattr(exc.__cause__, "code", None) not in migration.done_if_codes:
                    raise
            await self._execute(
                migrations.RECORD_INSERT, [(migration.version, migration.name, datetime.now(UTC))]
            )
            done.append(migration.version)
        return done

    async def _rebuild(self, migration: migrations.Migration, stale_after: float = REBUILD_STALE_SECONDS) -> None:
        """Copy ``expenses`` into a table of ``migration``'s structure and put it in its place.

        Safe with concurrent starts and live writers, and resumable after a crash at any
        point. A process claims the rows by renaming ``expenses`` to a name of its own:
        RENAME is atomic, so one claimant wins; the others wait for the new table. While
        ``expenses`` is missing every INSERT fails and the writer's cycle retries (the
        actors read their rows back first), so nothing is written twice or lost. The new
        table takes the name only once it holds every row. A claim older than
        ``stale_after`` whose claimant never finished (it crashed) is claimed again.
        """
        me = uuid.uuid4().hex[:12]
        claimed, fresh = f"{_CLAIMED}{me}", f"{_REBUILT}{me}"
        deadline = time.monotonic() + REBUILD_WAIT_SECONDS
        while True:
            tables = await self._tables()
            if "expenses" in tables and tables["expenses"].sorting_key == migration.sorting_key:
                break  # done, by this process or another
            if "expenses" in tables:
                source = "expenses"
            else:
                source = self._stale_claim(tables, stale_after)
            if source and await self._claim(source, claimed):
                await self._execute(migration.sql.format(name=fresh, source=claimed))
                await self._execute(f"INSERT INTO {fresh} SELECT * FROM {claimed}")
                await self._execute(f"RENAME TABLE {fresh} TO expenses")
                await self._execute(f"DROP TABLE {claimed}")
                break
            if time.monotonic() > deadline:
                raise StoreUnavailable("ClickHouse", "expenses is being rebuilt by another process; retry later")
            await asyncio.sleep(1.0)
        # Tables of claimants that crashed before the swap: every row is in expenses now.
        for name, table in (await self._tables()).items():
            if name.startswith(_REBUILT) and table.age > stale_after:
                await self._execute(f"DROP TABLE IF EXISTS {name}")

    async def _add_view(self, migration: migrations.Migration, stale_after: float = REBUILD_STALE_SECONDS) -> None:
        """Create the table ``migration.table``, filled from ``expenses`` and kept so by the
        materialized view ``migration.view``.

        A view sees only the INSERTs that begin after it exists, and the table must hold the
        rows written before exactly once: the rows are claimed as ``_rebuild`` claims them
        (writers fail and retry meanwhile), copied into a table of another name that takes
        the final name whole (a reader never sees it half full), and the view is created
        over a placeholder ``expenses`` that refuses INSERTs (a plain VIEW: ClickHouse needs
        the source to exist, and follows it by name on 18.16 as on current releases), which
        the claimed rows then replace. A claimant that crashed is taken over as in
        ``_rebuild``; every step before the last may run again.
        """
        table = migration.table
        me = uuid.uuid4().hex[:12]
        claimed, fresh = f"{_CLAIMED}{me}", f"{_REBUILT}{me}"
        deadline = time.monotonic() + REBUILD_WAIT_SECONDS
        while True:
            tables = await self._tables()
            live = "expenses" in tables and tables["expenses"].engine != "View"
            if live and migration.view in tables:
                return  # done, by this process or another
            source = "expenses" if live else self._stale_claim(tables, stale_after)
            if source and await self._claim(source, claimed):
                break
            if time.monotonic() > deadline:
                raise StoreUnavailable("ClickHouse", "expenses is being migrated by another process; retry later")
            await asyncio.sleep(1.0)
        await self._execute(migration.sql.format(name=fresh))
        await self._execute(f"INSERT INTO {fresh} " + migrations.VIEW_SELECT.format(source=claimed))
        await self._execute(f"DROP TABLE IF EXISTS {table}")
        await self._execute(f"RENAME TABLE {fresh} TO {table}")
        placeholder = (await self._tables()).get("expenses")
        if placeholder is not None:
            if placeholder.engine != "View":
                raise RuntimeError("expenses reappeared while its rows were claimed: not migrating it")
            await self._execute("DROP TABLE expenses")  # a crashed claimant's
        await self._execute(f"CREATE VIEW expenses AS SELECT * FROM {claimed}")
        await self._execute(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {migration.view} TO {table} AS "
            + migrations.VIEW_SELECT.format(source="expenses")
        )
        await self._execute("DROP TABLE expenses")
        await self._execute(f"RENAME TABLE {claimed} TO expenses")

    @staticmethod
    def _stale_claim(tables: Mapping[str, _Table], stale_after: float) -> str:
        """A claim older than ``stale_after``, whose claimant never finished; or ""."""
        stale = [name for name, table in tables.items() if name.startswith(_CLAIMED) and table.age > stale_after]
        return stale[0] if stale else ""

    async def _tables(self) -> dict[str, _Table]:
        """This database's tables, views included, by name."""
        rows = await self._execute(
            "SELECT name, sorting_key, now() - metadata_modification_time, engine FROM system.tables "
            "WHERE database = currentDatabase()"
        )
        return {name: _Table(key, float(age), engine) for name, key, age, engine in rows}

    async def _claim(self, source: str, claimed: str) -> bool:
        """Rename ``source`` to ``claimed``; False when another process renamed it first."""
        try:
            await self._execute(f"RENAME TABLE {source} TO {claimed}")
        except StoreUnavailable as exc:
            if getattr(exc.__cause__, "code", None) == _UNKNOWN_TABLE:
                return False
            raise
        return True

    async def expire(self) -> list[int]:
        """Drop the months of ``expenses`` past the retention (``migrations`` module docstring),
        and the same months of the tables derived from it (``expenses_namespace_daily``); the
        partitions dropped from ``expenses``, as YYYYMM.

        Whole partitions only, so no row of a live month is touched and every day kept keeps
        all its rows: its sums stay exact. Idempotent (dropping a partition already gone does
        nothing); nothing to do before the table exists.
        """
        derived = [m.table for m in migrations.MIGRATIONS if m.table]
        keys = dict(await self._execute(
            "SELECT name, partition_key FROM system.tables WHERE database = currentDatabase() AND name IN %(names)s",
            {"names": ("expenses", *derived)},
        ))
        for name, key in keys.items():
            if key != migrations.PARTITION_KEY:
                # Another key would make a partition more or less than a month: dropping could lose live days.
                raise RuntimeError(f"{name} is partitioned by {key}, not {migrations.PARTITION_KEY}: not expiring it")
        dropped: dict[str, list[int]] = {}
        for name in keys:
            expired = await self._execute(
                "SELECT DISTINCT toUInt32(partition) FROM system.parts "
                "WHERE database = currentDatabase() AND table = %(name)s AND active "
                "AND toUInt32(partition) < toYYYYMM(addMonths(toStartOfMonth(today()), %(keep)s))",
                {"name": name, "keep": 1 - self._retention_months},
            )
            dropped[name] = sorted(partition for (partition,) in expired)
            for partition in dropped[name]:
                await self._execute(f"ALTER TABLE {name} DROP PARTITION {int(partition)}")
        return dropped.get("expenses", [])

    async def insert(self, rows: Sequence[ExpenseRow]) -> None:
        """Write ``rows`` with one INSERT sent as one block.

        ClickHouse writes each partition's part of a block atomically, so a −1 row and
        its +1 row for the same (resource, day) are stored together or not at all.
        """
        if not rows:
            return
        for row in rows:
            _require_aware(row.date)
        # The driver splits data into blocks of insert_block_size rows: one block keeps
        # the whole batch in one part per partition.
        await self._execute(_INSERT, [tuple(row) for row in rows], settings={"insert_block_size": len(rows)})

    async def ledger(self, cloud_account_id: str, days: Sequence[datetime]) -> dict[tuple[str, datetime], LedgerEntry]:
        """(resource_id, day) → its live cost and +1 copies, for the given UTC day starts."""
        if not days:
            return {}
        epochs = sorted({_epoch(day) for day in days})
        params = {"account": cloud_account_id, "start": epochs[0], "end": epochs[-1] + 1, "days": tuple(epochs)}
        groups: dict[tuple[str, datetime], list[tuple[ExpenseRow, int]]] = {}
        for resource, epoch, cost, copies, *dimensions in await self._execute(_LEDGER, params):
            row = ExpenseRow(cloud_account_id, resource, _day(epoch), cost, 1, *dimensions)
            groups.setdefault((resource, row.date), []).append((row, copies))
        ledger = {}
        for key, live in groups.items():
            if len(live) == 1 and live[0][1] == 1:
                ledger[key] = LedgerEntry(live[0][0].cost, 1, live[0][0])
            else:
                ledger[key] = LedgerEntry(sum(row.cost * copies for row, copies in live), sum(c for _, c in live))
        return {key: entry for key, entry in ledger.items() if entry.copies != 0}

    async def daily_costs(
        self, cloud_account_id: str, start: datetime, end: datetime, *, by: str = "resource_id"
    ) -> dict[tuple[str | None, datetime], float]:
        """(value of column ``by``, day) → cost, for days in [start, end)."""
        if by not in GROUP_COLUMNS:
            raise ValueError(f"cannot group expenses by {by!r}; choose one of {sorted(GROUP_COLUMNS)}")
        net = _NET_ROWS.format(key=by, extra="")
        params = {"account": cloud_account_id, "start": _epoch(start), "end": _epoch(end)}
        rows = await self._execute(_DAILY.format(net=net), params)
        return {(key, _day(epoch)): cost for key, epoch, cost in rows}

    async def select(self, query: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Rows of one read-only ``query`` run on this store's pool, for the ledger's readers.

        ``params`` are bound by the driver (``%(name)s``), which quotes them: callers put no
        user text into ``query`` itself (see ``k8scost.stores.expense_queries``).
        """
        return await self._execute(query, params)

    async def close(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.shutdown()
