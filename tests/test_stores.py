"""The ledger stores against the real servers: ClickHouse ``expenses`` and MongoDB ``cloud_resource``."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from asynch import Connection
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import DuplicateKeyError

from devstack import stack
from k8scost.settings import StoreSettings, from_env
from k8scost.stores import StoreUnavailable, migrations
from k8scost.settings import DAY
from k8scost.stores.clickhouse import ExpenseRow, ExpenseStore, LedgerEntry
from k8scost.stores.expense_queries import ExpenseQueries, Scope
from k8scost.stores.mongo import connect
from k8scost.stores.resources import COLLECTION, UPDATE_BATCH, Kind, Resource, ResourceStore, resource_id

# Fixtures on the loop of the test using them (the project's default is the session loop).
pytestmark = pytest.mark.services

DAY0 = datetime(2024, 1, 31, tzinfo=UTC)  # the last day of a month: rows span two partitions
DAY1 = DAY0 + timedelta(days=1)
DAY2 = DAY1 + timedelta(days=1)


def _dsn(database: str) -> str:
    base = from_env(StoreSettings).clickhouse_url
    return base.rsplit("/", 1)[0] + "/" + database


async def _clickhouse(query: str, database: str = "default") -> list[tuple]:
    """Run one statement outside the store under test."""
    async with Connection(dsn=_dsn(database)) as conn:
        async with conn.cursor() as cursor:
            await cursor.execute(query)
            return await cursor.fetchall() if cursor.description else []


@pytest_asyncio.fixture(loop_scope="function")
async def scratch_database(real_services: None) -> AsyncIterator[str]:
    """A ClickHouse database of this test alone, so migrations start from nothing."""
    name = f"test_{uuid.uuid4().hex}"
    await _clickhouse(f"CREATE DATABASE {name}")
    yield name
    await _clickhouse(f"DROP DATABASE IF EXISTS {name}")


@pytest_asyncio.fixture(loop_scope="function")
async def expenses(scratch_database: str) -> AsyncIterator[ExpenseStore]:
    """A migrated store on a scratch database: tests may stop or force its merges."""
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database)))
    await store.migrate()
    yield store
    await store.close()


@pytest.fixture
def account() -> str:
    return str(uuid.uuid4())


def _row(
    account: str, resource: str, day: datetime, cost: float, sign: int = 1, namespace: str | None = "ns"
) -> ExpenseRow:
    return ExpenseRow(account, resource, day, cost, sign, "cluster-a", namespace, "node-1", None)


# --- migrations ------------------------------------------------------------------------


async def test_migrations_apply_once_and_create_the_ledger_table(scratch_database: str) -> None:
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database)))
    try:
        assert await store.migrate() == [1, 2, 3, 4, 5]
        assert await store.migrate() == []
    finally:
        await store.close()

    columns = await _clickhouse(
        f"SELECT name, type FROM system.columns WHERE database = '{scratch_database}' AND table = 'expenses'"
    )
    assert columns == [
        ("cloud_account_id", "String"),
        ("resource_id", "String"),
        ("date", "DateTime"),
        ("cost", "Float64"),
        ("sign", "Int8"),
        ("k8s_cluster", "Nullable(String)"),
        ("k8s_namespace", "Nullable(String)"),
        ("k8s_node", "Nullable(String)"),
        ("k8s_service", "Nullable(String)"),
        ("resource_type", "String"),
        ("resource_name", "String"),
    ]
    [(engine, engine_full)] = await _clickhouse(
        f"SELECT engine, engine_full FROM system.tables WHERE database = '{scratch_database}' AND name = 'expenses'"
    )
    assert engine == "CollapsingMergeTree"
    assert engine_full.startswith(
        "CollapsingMergeTree(sign) PARTITION BY toYYYYMM(date) ORDER BY (cloud_account_id, resource_type, date, resource_id)"
    )
    records = await _clickhouse("SELECT version, name FROM schema_migrations ORDER BY version", scratch_database)
    assert records == [
        (1, "create expenses"), (2, "expenses name their resource and its type"), (3, "expenses sorted by resource type"),
        (4, "namespaces' daily costs kept by a view"), (5, "expenses expire after the retention"),
    ]
    [(version,)] = await _clickhouse("SELECT version()")
    if tuple(int(part) for part in version.split(".")[:2]) < migrations.TTL_SINCE:
        # 18.16 has no table TTL: version 5 is recorded, ExpenseStore.expire does its work.
        assert "TTL" not in engine_full
    else:
        assert "TTL toStartOfMonth(date) + toIntervalMonth(25)" in engine_full


async def test_concurrent_migrations_create_the_schema_once(scratch_database: str) -> None:
    stores = [ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database))) for _ in range(3)]
    try:
        results = await asyncio.gather(*(store.migrate() for store in stores))
        # Each version is applied by one of them at least; the same ALTER of version 2 run
        # again finds its columns there and counts as done.
        assert {v for result in results for v in result} == {1, 2, 3, 4, 5}
        assert all(result == sorted(set(result)) for result in results)
        assert await stores[0].migrate() == []
    finally:
        for store in stores:
            await store.close()
    tables = await _clickhouse(f"SELECT name FROM system.tables WHERE database = '{scratch_database}' ORDER BY name")
    assert tables == [("expenses",), ("expenses_namespace_daily",), ("expenses_namespace_daily_mv",), ("schema_migrations",)]
    versions = await _clickhouse("SELECT DISTINCT version FROM schema_migrations", scratch_database)
    assert sorted(versions) == [(1,), (2,), (3,), (4,), (5,)]


async def _ledger_of_version_2(database: str, account: str) -> list[ExpenseRow]:
    """A ledger as a store of migration 2 left it: sorted by account and day, with rows."""
    for migration in migrations.MIGRATIONS[:2]:
        await _clickhouse(migration.sql, database)
    await _clickhouse(migrations.BOOKKEEPING_DDL, database)
    rows = [_row(account, f"r{i}", DAY0 + timedelta(days=i % 40), 1.5 + i, 1) for i in range(200)]
    rows += [_row(account, "r0", DAY0, 1.5, -1), _row(account, "r0", DAY0, 9.0, 1)]  # a correction
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(database)))
    try:
        applied = [(m.version, m.name, datetime.now(UTC)) for m in migrations.MIGRATIONS[:2]]
        await store._execute(migrations.RECORD_INSERT, applied)
        await store.insert(rows)
    finally:
        await store.close()
    return rows


async def test_the_rebuild_keeps_every_row_once_under_concurrent_starts(scratch_database: str, account: str) -> None:
    rows = await _ledger_of_version_2(scratch_database, account)
    stores = [ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database))) for _ in range(4)]
    try:
        results = await asyncio.gather(*(store.migrate() for store in stores))
        assert all(result[0] == 3 for result in results)  # the losers waited for the winner's table
        live = await stores[0].ledger(account, sorted({row.date for row in rows}))
    finally:
        for store in stores:
            await store.close()
    expected: dict[tuple[str, datetime], float] = {}
    for row in rows:
        expected[(row.resource_id, row.date)] = expected.get((row.resource_id, row.date), 0.0) + row.cost * row.sign
    assert {key: entry.cost for key, entry in live.items()} == pytest.approx(expected)
    assert all(entry.copies == 1 for entry in live.values())
    [(count,)] = await _clickhouse("SELECT count() FROM expenses", scratch_database)
    assert count == len(rows)
    tables = await _clickhouse(f"SELECT name FROM system.tables WHERE database = '{scratch_database}' ORDER BY name")
    assert tables == [("expenses",), ("expenses_namespace_daily",), ("expenses_namespace_daily_mv",), ("schema_migrations",)]


async def test_a_rebuild_cut_short_is_taken_over(scratch_database: str, account: str) -> None:
    """A claimant died after claiming the rows and half-filling its new table: the next start finishes."""
    rows = await _ledger_of_version_2(scratch_database, account)
    await _clickhouse("RENAME TABLE expenses TO expenses_claimed_dead", scratch_database)
    await _clickhouse(migrations.EXPENSES_BY_TYPE_DDL.format(name="expenses_rebuilt_dead", source="expenses_claimed_dead"),
                      scratch_database)
    await _clickhouse("INSERT INTO expenses_rebuilt_dead SELECT * FROM expenses_claimed_dead LIMIT 50", scratch_database)
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database)))
    try:
        # A young claim is a claimant at work: it is waited for, not taken.
        waiting = asyncio.create_task(store._rebuild(migrations.MIGRATIONS[2]))
        await asyncio.sleep(1.5)
        assert not waiting.done()
        waiting.cancel()
        await store._rebuild(migrations.MIGRATIONS[2], stale_after=0.0)
    finally:
        await store.close()
    [(count, total)] = await _clickhouse("SELECT count(), sum(cost * sign) FROM expenses", scratch_database)
    assert (count, total) == (len(rows), pytest.approx(sum(row.cost * row.sign for row in rows)))
    tables = await _clickhouse(f"SELECT name FROM system.tables WHERE database = '{scratch_database}' ORDER BY name")
    assert tables == [("expenses",), ("schema_migrations",)]


def _namespace_row(account: str, cluster: str, namespace: str, day: datetime, cost: float, sign: int = 1) -> ExpenseRow:
    rid = f"ns/{cluster}/{namespace}"
    return ExpenseRow(account, rid, day, cost, sign, cluster, namespace, None, None, "K8s Namespace", namespace)


def _namespace_sums(rows: list[ExpenseRow]) -> dict[tuple[str, str, datetime], tuple[float, int]]:
    """Per (cluster, namespace, day) of the namespace rows: the summed signed cost and signs."""
    sums: dict[tuple[str, str, datetime], tuple[float, int]] = {}
    for row in rows:
        if row.resource_type == "K8s Namespace":
            key = (row.k8s_cluster, row.k8s_namespace, row.date)
            cost, signs = sums.get(key, (0.0, 0))
            sums[key] = (cost + row.cost * row.sign, signs + row.sign)
    return sums


def _assert_same_sums(got: dict, expected: dict) -> None:
    assert {key: signs for key, (_, signs) in got.items()} == {key: signs for key, (_, signs) in expected.items()}
    assert {key: cost for key, (cost, _) in got.items()} == pytest.approx({key: cost for key, (cost, _) in expected.items()})


async def _namespace_daily(database: str) -> dict[tuple[str, str, datetime], tuple[float, int]]:
    rows = await _clickhouse(
        "SELECT k8s_cluster, k8s_namespace, toUnixTimestamp(date), sum(cost), sum(sign) "
        "FROM expenses_namespace_daily GROUP BY k8s_cluster, k8s_namespace, date", database)
    return {(c, n, datetime.fromtimestamp(d, UTC)): (cost, int(signs)) for c, n, d, cost, signs in rows}


async def test_the_namespace_view_holds_the_rows_before_it_and_follows_every_write(
    scratch_database: str, account: str
) -> None:
    """Migration 4 over a ledger with rows: the table gets them once, then every later INSERT,
    corrections included, and nothing of another type; writers racing it, retrying on
    StoreUnavailable as the actors' cycles do, lose nothing and write nothing twice."""
    before = await _ledger_of_version_2(scratch_database, account)
    before += [_namespace_row(account, c, n, DAY0 + timedelta(days=d), 1.0 + d + i)
               for i, (c, n) in enumerate([("c1", "shop"), ("c1", "db"), ("c2", "shop")]) for d in range(3)]
    before.append(_namespace_row(account, "c1", "shop", DAY0, 1.0, -1))  # a correction, left uncollapsed
    before.append(_namespace_row(account, "c1", "shop", DAY0, 4.5))
    seed = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database)))
    try:
        await seed.insert(before[-11:])
    finally:
        await seed.close()
    later = [[_namespace_row(account, "c1", "shop", DAY1, 2.0, -1), _namespace_row(account, "c1", "shop", DAY1, 7.25)],
             [_namespace_row(account, "c3", "web", DAY2, 0.75), _row(account, "pod-z", DAY2, 99.0)]]
    stores = [ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database))) for _ in range(3)]

    async def write(rows: list[ExpenseRow]) -> int:
        failures = 0
        while True:
            try:
                await stores[2].insert(rows)
                return failures
            except StoreUnavailable:
                failures += 1
                await asyncio.sleep(0.05)

    try:
        results = await asyncio.gather(stores[0].migrate(), stores[1].migrate(), *(write(rows) for rows in later))
        assert {v for result in results[:2] for v in result} >= {4}
    finally:
        for store in stores:
            await store.close()
    written = before + [row for rows in later for row in rows]
    _assert_same_sums(await _namespace_daily(scratch_database), _namespace_sums(written))
    [(count,)] = await _clickhouse("SELECT count() FROM expenses", scratch_database)
    assert count == len(written)
    tables = await _clickhouse(f"SELECT name, engine FROM system.tables WHERE database = '{scratch_database}' ORDER BY name")
    assert tables == [("expenses", "CollapsingMergeTree"), ("expenses_namespace_daily", "SummingMergeTree"),
                      ("expenses_namespace_daily_mv", "MaterializedView"), ("schema_migrations", "MergeTree")]


async def test_a_namespace_view_migration_cut_short_is_taken_over(scratch_database: str, account: str) -> None:
    """A claimant died with the rows claimed, its placeholder and the view made: the next start
    finishes, and the table holds every namespace row once."""
    rows = await _ledger_of_version_2(scratch_database, account)
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database)))
    try:
        await store._rebuild(migrations.MIGRATIONS[2])
        rows += [_namespace_row(account, "c1", "shop", DAY0 + timedelta(days=d), 2.0 + d) for d in range(2)]
        await store.insert(rows[-2:])
        migration = migrations.MIGRATIONS[3]
        await _clickhouse("RENAME TABLE expenses TO expenses_claimed_dead", scratch_database)
        await _clickhouse(migration.sql.format(name=migration.table), scratch_database)
        await _clickhouse(f"INSERT INTO {migration.table} "
                          + migrations.VIEW_SELECT.format(source="expenses_claimed_dead"), scratch_database)
        await _clickhouse("CREATE VIEW expenses AS SELECT * FROM expenses_claimed_dead", scratch_database)
        await _clickhouse(f"CREATE MATERIALIZED VIEW {migration.view} TO {migration.table} AS "
                          + migrations.VIEW_SELECT.format(source="expenses"), scratch_database)
        waiting = asyncio.create_task(store._add_view(migration))
        await asyncio.sleep(1.5)
        assert not waiting.done()  # a young claim is a claimant at work
        waiting.cancel()
        await store._add_view(migration, stale_after=0.0)
        late = _namespace_row(account, "c1", "shop", DAY2, 3.5)
        await store.insert([late])
    finally:
        await store.close()
    _assert_same_sums(await _namespace_daily(scratch_database), _namespace_sums(rows + [late]))
    tables = await _clickhouse(f"SELECT name, engine FROM system.tables WHERE database = '{scratch_database}' ORDER BY name")
    assert tables == [("expenses", "CollapsingMergeTree"), ("expenses_namespace_daily", "SummingMergeTree"),
                      ("expenses_namespace_daily_mv", "MaterializedView"), ("schema_migrations", "MergeTree")]


async def test_daily_breakdowns_read_the_namespace_table_once_it_exists(scratch_database: str, account: str) -> None:
    """A REST replica may start on a ledger not migrated yet: it reads ``expenses``, looks again
    after a minute, then reads the namespace table, with the same answer."""
    await _ledger_of_version_2(scratch_database, account)
    clock = [0.0]
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database)))
    queries = ExpenseQueries(store, clock=lambda: clock[0])
    rows = [_namespace_row(account, "c1", "shop", DAY0, 1.5), _namespace_row(account, "c2", "shop", DAY0, 2.0),
            _namespace_row(account, "c1", "db", DAY1, 4.0), _namespace_row(account, "c1", "db", DAY1, 4.0, -1),
            _namespace_row(account, "c1", "db", DAY1, 0.25), _row(account, "pod-a", DAY1, 99.0, namespace="db")]
    scope = Scope((account,), int(DAY0.timestamp()), int(DAY2.timestamp()), {"resource_type": ("K8s Namespace",)})
    expected = {int(DAY0.timestamp()): {"shop": 3.5}, int(DAY1.timestamp()): {"db": 0.25}}
    try:
        await store._rebuild(migrations.MIGRATIONS[2])
        await store.insert(rows)
        assert (await queries.daily(scope, "k8s_namespace")).by_day == expected
        assert await store.migrate() == [3, 4, 5]  # 3 found done (its sorting key), recorded
        clock[0] = 59.0
        await queries.daily(scope, "k8s_namespace")
        assert not queries._namespace_daily  # not looked at again yet
        clock[0] = 61.0
        assert (await queries.daily(scope, "k8s_namespace")).by_day == expected
        assert queries._namespace_daily
        # Read from the namespace table: a row put there alone shows (never done outside this test).
        await _clickhouse(f"INSERT INTO expenses_namespace_daily SELECT '{account}', toDateTime({int(DAY1.timestamp())}), "
                          "'c9', 'marker', 1.0, 1", scratch_database)
        assert (await queries.daily(scope, "k8s_namespace")).by_day[int(DAY1.timestamp())]["marker"] == 1.0
        # Pods are not in it: a breakdown of pods still reads expenses.
        pods = scope.replace(filters={"resource_type": ("",), "k8s_namespace": ("db",)})
        assert (await queries.daily(pods, "k8s_namespace")).by_day == {int(DAY1.timestamp()): {"db": 99.0}}
    finally:
        await store.close()


def test_only_breakdowns_of_unshared_namespaces_by_its_columns_fit_the_namespace_table() -> None:
    namespaces = Scope(("a",), 0, DAY, {"resource_type": ("K8s Namespace",), "k8s_cluster": ("c1",)})
    assert all(namespaces.fits_namespace_daily(by) for by in ("k8s_namespace", "k8s_cluster", "cloud_account_id"))
    assert not namespaces.fits_namespace_daily("resource_type")
    assert not namespaces.replace(share_tenancy=True).fits_namespace_daily("k8s_namespace")
    assert not namespaces.replace(filters={"resource_type": ("K8s Pod",)}).fits_namespace_daily("k8s_namespace")
    assert not namespaces.replace(filters={}).fits_namespace_daily("k8s_namespace")
    assert not namespaces.replace(
        filters={"resource_type": ("K8s Namespace",), "k8s_node": ("n1",)}).fits_namespace_daily("k8s_namespace")


# --- retention ------------------------------------------------------------------------


def _months_back(day: date, months: int, day_of_month: int) -> datetime:
    """``day_of_month`` of the month ``months`` before ``day``'s, a UTC midnight."""
    index = day.year * 12 + day.month - 1 - months
    return datetime(index // 12, index % 12 + 1, day_of_month, tzinfo=UTC)


async def test_expire_drops_the_months_past_the_retention_and_keeps_the_rest_exact(
    scratch_database: str, account: str
) -> None:
    [(today_text,)] = await _clickhouse("SELECT toString(today())")  # the server's clock, as expire reads it
    today = date.fromisoformat(today_text)
    # Months back from this one: 27 and 25 are wholly past two years, 24 is the oldest kept
    # (its first days are older than two years: a month goes only when all of it is).
    months_back = (27, 25, 24, 23, 12, 0)
    days = [_months_back(today, m, d) for m in months_back for d in (2, 27) if _months_back(today, m, d).date() <= today]
    rows = []
    for i, day in enumerate(days):
        # Each resource-day corrected once (−1 of the old cost, +1 of the new): days lose
        # or keep both rows together, and the namespace sum is of several resources.
        for r in range(3):
            rows += [_row(account, f"pod-{r}", day, 0.1 * (i + r)), _row(account, f"pod-{r}", day, 0.1 * (i + r), -1),
                     _row(account, f"pod-{r}", day, 1.25 * (i + 1) + 0.1 * r)]
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database), expenses_retention_years=2))
    try:
        await store.migrate()
        await store.insert(rows)
        window = (days[0], days[-1] + timedelta(days=1))
        before = await store.daily_costs(account, *window, by="k8s_namespace")

        dropped = await store.expire()
        month = lambda day: day.year * 100 + day.month  # noqa: E731
        assert dropped == [month(_months_back(today, 27, 1)), month(_months_back(today, 25, 1))]
        after = await store.daily_costs(account, *window, by="k8s_namespace")
        kept = [day for day in days if month(day) >= month(_months_back(today, 24, 1))]
        assert sorted(day for _, day in after) == kept
        expected = {("ns", day): sum(row.cost * row.sign for row in rows if row.date == day) for day in kept}
        assert after == pytest.approx(expected, rel=1e-12)
        assert after == {key: before[key] for key in after}  # what stays sums as before, to the bit
        [(left,)] = await _clickhouse(
            f"SELECT count() FROM expenses WHERE date < toDateTime({int(_months_back(today, 24, 1).timestamp())})",
            scratch_database,
        )
        assert left == 0
        assert await store.expire() == []  # nothing more to drop
    finally:
        await store.close()

    # A shorter retention is followed at once: one year keeps 12 months back and this one.
    shorter = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database), expenses_retention_years=1))
    try:
        assert await shorter.expire() == [month(_months_back(today, 24, 1)), month(_months_back(today, 23, 1))]
        remaining = await shorter.daily_costs(account, *window, by="k8s_namespace")
        assert sorted(day for _, day in remaining) == [day for day in kept if month(day) >= month(_months_back(today, 12, 1))]
    finally:
        await shorter.close()


async def test_expire_drops_the_same_months_of_the_namespace_table(scratch_database: str, account: str) -> None:
    [(today_text,)] = await _clickhouse("SELECT toString(today())")
    today = date.fromisoformat(today_text)
    old, kept = _months_back(today, 30, 3), _months_back(today, 1, 3)
    rows = [_namespace_row(account, "c1", "shop", old, 5.0), _namespace_row(account, "c1", "shop", kept, 2.5)]
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database), expenses_retention_years=2))
    try:
        await store.migrate()
        await store.insert(rows)
        assert await store.expire() == [old.year * 100 + old.month]
    finally:
        await store.close()
    assert await _namespace_daily(scratch_database) == {("c1", "shop", kept): (2.5, 1)}


async def test_expire_refuses_a_table_partitioned_otherwise(scratch_database: str, account: str) -> None:
    await _clickhouse(
        "CREATE TABLE expenses (date DateTime, cost Float64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(date) ORDER BY date",
        scratch_database,
    )
    await _clickhouse("INSERT INTO expenses SELECT toDateTime('2001-01-01 00:00:00'), 1.0", scratch_database)
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database)))
    try:
        with pytest.raises(RuntimeError, match="toYYYYMMDD"):
            await store.expire()
    finally:
        await store.close()
    assert await _clickhouse("SELECT count() FROM expenses", scratch_database) == [(1,)]


async def test_expire_before_the_table_exists_does_nothing(scratch_database: str) -> None:
    store = ExpenseStore(StoreSettings(clickhouse_url=_dsn(scratch_database)))
    try:
        assert await store.expire() == []
    finally:
        await store.close()


def test_the_retention_is_at_least_a_year() -> None:
    assert migrations.retention_months(2) == 25
    with pytest.raises(ValueError, match="EXPENSES_RETENTION_YEARS"):
        ExpenseStore(StoreSettings(expenses_retention_years=0))


# --- the expenses ledger ---------------------------------------------------------------


def costs(ledger: dict) -> dict:
    """The ledger without its live rows: (cost, copies) per (resource, day)."""
    return {key: LedgerEntry(entry.cost, entry.copies) for key, entry in ledger.items()}


async def test_corrections_leave_the_latest_value_once(
    expenses: ExpenseStore, scratch_database: str, account: str
) -> None:
    await expenses.insert(
        [_row(account, "pod-a", DAY0, 0.1), _row(account, "pod-a", DAY1, 2.5), _row(account, "pod-b", DAY0, 1 / 3)]
    )
    # A later cycle corrects pod-a's first day twice over and pod-b's once.
    await expenses.insert([_row(account, "pod-a", DAY0, 0.1, -1), _row(account, "pod-a", DAY0, 0.2)])
    await expenses.insert(
        [
            _row(account, "pod-a", DAY0, 0.2, -1),
            _row(account, "pod-a", DAY0, 0.7),
            _row(account, "pod-b", DAY0, 1 / 3, -1),
            _row(account, "pod-b", DAY0, 1e-17),
        ]
    )

    ledger = await expenses.ledger(account, [DAY0, DAY1, DAY2])
    assert ledger[("pod-a", DAY0)].row == _row(account, "pod-a", DAY0, 0.7)
    assert costs(ledger) == {
        ("pod-a", DAY0): LedgerEntry(0.7, 1),
        ("pod-a", DAY1): LedgerEntry(2.5, 1),
        ("pod-b", DAY0): LedgerEntry(1e-17, 1),
    }
    assert all(day.tzinfo is not None for _, day in ledger)
    assert costs(await expenses.ledger(account, [DAY1])) == {("pod-a", DAY1): LedgerEntry(2.5, 1)}
    assert await expenses.ledger(account, []) == {}

    assert await expenses.daily_costs(account, DAY0, DAY2) == {
        ("pod-a", DAY0): 0.7,
        ("pod-a", DAY1): 2.5,
        ("pod-b", DAY0): 1e-17,
    }
    assert await expenses.daily_costs(account, DAY1, DAY2) == {("pod-a", DAY1): 2.5}

    # Merging collapses the corrected rows away and leaves the ledger as it was.
    await _clickhouse("OPTIMIZE TABLE expenses PARTITION 202401 FINAL", scratch_database)
    assert await _clickhouse("SELECT count() FROM expenses WHERE toYYYYMM(date) = 202401", scratch_database) == [(2,)]
    assert costs(await expenses.ledger(account, [DAY0, DAY1, DAY2])) == costs(ledger)


async def test_floats_read_back_bit_for_bit(expenses: ExpenseStore, account: str) -> None:
    costs = [0.1, 0.2, 1 / 3, 123456.789012345, 5e-324, 1.7976931348623157e308, 0.30000000000000004]
    await expenses.insert([_row(account, f"pod-{i}", DAY0, cost) for i, cost in enumerate(costs)])
    # Correct each to the next: a float sum of a, −a and b in another order could drift.
    await expenses.insert(
        [
            row
            for i, cost in enumerate(costs)
            for row in (_row(account, f"pod-{i}", DAY0, cost, -1), _row(account, f"pod-{i}", DAY0, costs[i - 1]))
        ]
    )
    ledger = await expenses.ledger(account, [DAY0])
    assert {resource: entry.cost for (resource, _), entry in ledger.items()} == {
        f"pod-{i}": costs[i - 1] for i in range(len(costs))
    }


async def test_a_duplicated_row_shows_two_copies_until_a_merge(
    expenses: ExpenseStore, scratch_database: str, account: str
) -> None:
    # A merge keeps only the last of several +1 rows: stopped, so the duplicate stays visible.
    await _clickhouse(f"SYSTEM STOP MERGES {scratch_database}.expenses")
    await expenses.insert([_row(account, "pod-a", DAY0, 1.25)])
    await expenses.insert([_row(account, "pod-a", DAY0, 1.25)])  # a cycle retried after it had written
    assert costs(await expenses.ledger(account, [DAY0])) == {("pod-a", DAY0): LedgerEntry(2.5, 2)}

    # The repair: one −1 leaves one copy.
    await expenses.insert([_row(account, "pod-a", DAY0, 1.25, -1)])
    assert costs(await expenses.ledger(account, [DAY0])) == {("pod-a", DAY0): LedgerEntry(1.25, 1)}

    # Unrepaired, a merge collapses the duplicate by itself: the repair must not race one.
    await expenses.insert([_row(account, "pod-b", DAY0, 0.5), _row(account, "pod-b", DAY0, 0.5)])
    assert costs(await expenses.ledger(account, [DAY0]))[("pod-b", DAY0)] == LedgerEntry(1.0, 2)
    await _clickhouse(f"SYSTEM START MERGES {scratch_database}.expenses")
    await _clickhouse("OPTIMIZE TABLE expenses PARTITION 202401 FINAL", scratch_database)
    assert costs(await expenses.ledger(account, [DAY0])) == {
        ("pod-a", DAY0): LedgerEntry(1.25, 1),
        ("pod-b", DAY0): LedgerEntry(0.5, 1),
    }


async def test_daily_costs_group_by_an_allowed_column_only(expenses: ExpenseStore, account: str) -> None:
    await expenses.insert(
        [
            _row(account, "pod-a", DAY0, 1.5, namespace="shop"),
            _row(account, "pod-b", DAY0, 2.25, namespace="shop"),
            _row(account, "pod-c", DAY0, 4.0, namespace=None),
            _row(account, "pod-a", DAY1, 8.0, namespace="shop"),
        ]
    )
    await expenses.insert(
        [_row(account, "pod-b", DAY0, 2.25, -1, "shop"), _row(account, "pod-b", DAY0, 0.5, 1, "shop")]
    )
    assert await expenses.daily_costs(account, DAY0, DAY2, by="k8s_namespace") == {
        ("shop", DAY0): 2.0,
        (None, DAY0): 4.0,
        ("shop", DAY1): 8.0,
    }
    assert await expenses.daily_costs(account, DAY0, DAY2, by="k8s_cluster") == {
        ("cluster-a", DAY0): 6.0,
        ("cluster-a", DAY1): 8.0,
    }
    with pytest.raises(ValueError, match="cannot group"):
        await expenses.daily_costs(account, DAY0, DAY2, by="cost) FROM system.one --")


async def test_naive_dates_are_refused(expenses: ExpenseStore, account: str) -> None:
    with pytest.raises(ValueError, match="tz-aware"):
        await expenses.insert([_row(account, "pod-a", DAY0.replace(tzinfo=None), 1.0)])
    assert await expenses.ledger(account, [DAY0]) == {}


async def test_a_clickhouse_restart_fails_calls_then_the_same_store_recovers(
    expenses: ExpenseStore, account: str
) -> None:
    await expenses.insert([_row(account, "pod-a", DAY0, 3.5)])
    # Several pooled connections, all of which the restart kills.
    await asyncio.gather(*(expenses.ledger(account, [DAY0]) for _ in range(3)))

    restart = await asyncio.create_subprocess_exec(str(stack.SERVICES), "restart", "clickhouse", cwd=stack.ROOT)
    failure: StoreUnavailable | None = None
    try:
        while failure is None and restart.returncode is None:
            try:
                await expenses.ledger(account, [DAY0])
            except StoreUnavailable as exc:
                failure = exc
            await asyncio.sleep(0.05)
    finally:
        assert await restart.wait() == 0
    assert failure is not None and failure.__cause__ is not None

    for _ in range(3):  # every pooled connection works again, not just the first
        assert costs(await expenses.ledger(account, [DAY0])) == {("pod-a", DAY0): LedgerEntry(3.5, 1)}
    await expenses.insert([_row(account, "pod-a", DAY0, 3.5, -1), _row(account, "pod-a", DAY0, 4.0)])
    assert costs(await expenses.ledger(account, [DAY0])) == {("pod-a", DAY0): LedgerEntry(4.0, 1)}


# --- resources in MongoDB --------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="function")
async def mongo(real_services: None) -> Any:
    return connect(from_env(StoreSettings))


@pytest_asyncio.fixture(loop_scope="function")
async def resources(mongo: Any) -> ResourceStore:
    store = ResourceStore(mongo)
    await store.ensure_indexes()
    return store


def _cluster_objects() -> list[Resource]:
    return [
        Resource(Kind.CLUSTER, "east", None, "east"),
        Resource(Kind.NODE, "east", None, "node-1", node="node-1"),
        Resource(Kind.NAMESPACE, "east", "shop", "shop"),
        Resource(Kind.NAMESPACE, "west", "shop", "shop"),
        Resource(
            Kind.POD, "east", "shop", "web-1", node="node-1", service="web", meta={"controller_kind": "Deployment"}
        ),
    ]


async def _raw_documents(mongo: Any, account: str) -> list[bytes]:
    raw = mongo.get_collection(COLLECTION, codec_options=CodecOptions(document_class=RawBSONDocument))
    return [doc.raw async for doc in raw.find({"cloud_account_id": account}).sort("_id", 1)]


def test_resource_ids_are_stable_and_distinct_per_cluster() -> None:
    account = str(uuid.uuid4())
    east = resource_id(account, "east", Kind.NAMESPACE, "shop", "shop")
    assert east == resource_id(account, "east", Kind.NAMESPACE, "shop", "shop")
    assert str(uuid.UUID(east)) == east
    assert east != resource_id(account, "west", Kind.NAMESPACE, "shop", "shop")
    assert east != resource_id(str(uuid.uuid4()), "east", Kind.NAMESPACE, "shop", "shop")
    assert east != resource_id(account, "east", Kind.POD, "shop", "shop")
    assert len({r.id(account) for r in _cluster_objects()}) == len(_cluster_objects())


async def test_upsert_writes_optscale_documents(resources: ResourceStore, account: str) -> None:
    await resources.upsert(account, "org-1", _cluster_objects(), 1706659200, 1706745600)

    docs = await resources.find(account)
    assert [(d["cloud_resource_id"], d["resource_type"]) for d in docs] == [
        ("k8s-cluster/east", "K8s Cluster"),
        ("k8s-namespace/east/shop", "K8s Namespace"),
        ("k8s-namespace/west/shop", "K8s Namespace"),
        ("k8s-node/east/node-1", "K8s Node"),
        ("k8s-pod/east/shop/web-1", "K8s Pod"),
    ]
    [pod] = await resources.find(account, resource_type="K8s Pod")
    assert pod == {
        "_id": resource_id(account, "east", Kind.POD, "shop", "web-1"),
        "cloud_resource_id": "k8s-pod/east/shop/web-1",
        "cloud_account_id": account,
        "organization_id": "org-1",
        "name": "web-1",
        "resource_type": "K8s Pod",
        "service_name": "Kubernetes",
        "region": None,
        "k8s_cluster": "east",
        "k8s_namespace": "shop",
        "k8s_node": "node-1",
        "k8s_service": "web",
        "tags": {},
        "meta": {"controller_kind": "Deployment"},
        "first_seen": 1706659200,
        "last_seen": 1706745600,
        "active": True,
        "deleted_at": 0,
    }
    assert [d["k8s_cluster"] for d in await resources.find(account, k8s_namespace="shop")] == ["east", "west", "east"]
    with pytest.raises(ValueError):
        await resources.find(account, k8s_node={"$ne": None})
    with pytest.raises(ValueError):
        await resources.find(account, **{"$where": "1"})


async def test_upsert_is_idempotent_and_widens_the_seen_interval(
    resources: ResourceStore, mongo: Any, account: str
) -> None:
    await resources.upsert(account, "org-1", _cluster_objects(), 1000, 2000)
    first = await _raw_documents(mongo, account)
    await resources.upsert(account, "org-1", _cluster_objects(), 1000, 2000)
    assert await _raw_documents(mongo, account) == first

    # A narrower interval (an old day recomputed) moves nothing.
    await resources.upsert(account, "org-1", _cluster_objects(), 1500, 1800)
    assert await _raw_documents(mongo, account) == first

    await resources.upsert(account, "org-1", _cluster_objects()[:1], 500, 1900)
    await resources.upsert(account, "org-1", _cluster_objects()[:1], 1200, 3000)
    [cluster] = await resources.find(account, resource_type="K8s Cluster")
    assert (cluster["first_seen"], cluster["last_seen"]) == (500, 3000)
    [pod] = await resources.find(account, resource_type="K8s Pod")
    assert (pod["first_seen"], pod["last_seen"]) == (1000, 2000)


async def test_resource_indexes_are_the_designs_and_built_idempotently(real_services: None) -> None:
    settings = from_env(StoreSettings, mongodb_database=f"test_indexes_{uuid.uuid4().hex[:12]}")
    db = connect(settings)
    try:
        # What an earlier release left behind: its namespace index, now a prefix of the design's.
        await db[COLLECTION].create_index([("cloud_account_id", 1), ("k8s_namespace", 1)])
        store = ResourceStore(db)
        await asyncio.gather(store.ensure_indexes(), store.ensure_indexes())  # two processes starting at once
        await store.ensure_indexes()
        indexes = {tuple(index["key"].items()): index.get("unique", False) async for index in db[COLLECTION].list_indexes()}
    finally:
        await db.client.drop_database(settings.mongodb_database)
    assert indexes == {
        (("_id", 1),): False,
        (("cloud_account_id", 1), ("cloud_resource_id", 1)): True,
        (("cloud_account_id", 1), ("k8s_cluster", 1)): False,
        (("cloud_account_id", 1), ("k8s_node", 1)): False,
        (("cloud_account_id", 1), ("k8s_service", 1)): False,
        (("cloud_account_id", 1), ("resource_type", 1)): False,
        # The design's production notes, as written there.
        (("cloud_account_id", 1), ("k8s_namespace", 1), ("deleted_at", 1)): False,
        (("k8s_namespace", 1), ("last_seen", -1)): False,
    }


async def test_refreshing_hundreds_of_existing_resources_completes(resources: ResourceStore, account: str) -> None:
    # More updates than one command may carry on FerretDB 1.24 (which hung at 100).
    pods = [Resource(Kind.POD, "c1", "ns", f"pod-{i}", node="n1") for i in range(3 * UPDATE_BATCH + 7)]
    await resources.upsert(account, "org-1", pods, 1000, 2000)
    await asyncio.wait_for(resources.upsert(account, "org-1", pods, 1000, 5000), 60)
    found = await resources.find(account, resource_type="K8s Pod")
    assert len(found) == len(pods)
    assert {doc["last_seen"] for doc in found} == {5000}


async def test_the_unique_index_refuses_a_second_document_for_one_resource(
    resources: ResourceStore, mongo: Any, account: str
) -> None:
    await resources.upsert(account, "org-1", _cluster_objects()[:1], 1000, 2000)
    with pytest.raises(DuplicateKeyError):
        await mongo[COLLECTION].insert_one(
            {"_id": str(uuid.uuid4()), "cloud_account_id": account, "cloud_resource_id": "k8s-cluster/east"}
        )
    assert len(await resources.find(account)) == 1


@pytest.mark.skipif(bool(os.environ.get("MONGODB_URL")), reason="an external MongoDB is not ours to stop")
async def test_a_stopped_mongodb_raises_store_unavailable_then_recovers(resources: ResourceStore, account: str) -> None:
    await resources.upsert(account, "org-1", _cluster_objects()[:1], 1000, 2000)
    stack.services("stop", "mongodb")
    try:
        with pytest.raises(StoreUnavailable) as failure:
            await resources.upsert(account, "org-1", _cluster_objects(), 1000, 2000)
        assert failure.value.__cause__ is not None
    finally:
        stack.services("start", "mongodb")
    await resources.upsert(account, "org-1", _cluster_objects(), 1000, 2000)
    assert len(await resources.find(account)) == len(_cluster_objects())
