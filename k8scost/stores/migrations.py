"""The versioned schema of the ClickHouse ledger, applied at start by ``ExpenseStore.migrate``.

Every statement must be idempotent, because two processes may start at once and both
apply a version the other has not recorded yet. ``CREATE TABLE IF NOT EXISTS`` is (ClickHouse
serialises concurrent creations of one table). ClickHouse 18.16 has no
``ADD COLUMN IF NOT EXISTS``: a later ``ALTER`` must be written so that running it twice is
harmless, or its "column already exists" error treated as success.

Each applied version is recorded in ``schema_migrations``; concurrent starts may record one
twice, so readers take the distinct versions. A migration the server is too old for (``since``)
is recorded without being run: the store makes up for it another way.

Retention: a day of expenses is kept ``EXPENSES_RETENTION_YEARS`` years at least, and goes
with its whole month, the table's partition, once every day of that month is older:

    a row of month M expires at  start(M) + (12 · years + 1) months
                                  (``retention_months``), i.e. the months kept today are
    M ≥ month(today) − 12 · years.

Servers with table TTL (ClickHouse ≥ 19.6) get it declared (migration 5); on every server
``ExpenseStore.expire`` drops the partitions past it, the only way on 18.16, which has no TTL,
and the same months of the tables derived from ``expenses`` (migration 4's).
Both read the server's clock and time zone, so they agree on the boundary. ``expire`` follows a
change of the setting at once; a declared TTL keeps the months it was declared with, so a longer
retention also needs ``ALTER TABLE expenses MODIFY TTL`` by hand on such servers.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from k8scost.stores.resources import RESOURCE_TYPES, Kind


class Migration(NamedTuple):
    """One step of the schema: a single SQL statement.

    ``done_if_codes``: ClickHouse error codes that mean another process applied it first.
    """

    version: int
    name: str
    sql: str  # ``{retention_months}`` in it is filled from the store's settings
    done_if_codes: frozenset[int] = frozenset()
    # The first server release (major, minor) that runs it; older ones record it as applied.
    since: tuple[int, int] = (0, 0)
    # Set for a rebuild of ``expenses`` (what no ALTER can change on 18.16, its sorting
    # key): ``sql`` then creates the new table ``{name}`` from ``{source}``, and the store
    # copies the rows over and swaps the names (``ExpenseStore._rebuild``); done once
    # ``expenses`` has this sorting key, as system.tables shows it.
    sorting_key: str = ""
    # Set for a ``table`` kept up to date from ``expenses`` by the materialized ``view``:
    # ``sql`` creates it under the name ``{name}``, ``VIEW_SELECT`` fills it from ``{source}``
    # (``ExpenseStore._add_view``); done once the view exists and ``expenses`` is a table.
    table: str = ""
    view: str = ""


# A plain MergeTree: duplicate records are tolerated, and ReplacingMergeTree would only
# hide them after a merge anyway.
BOOKKEEPING_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version UInt32, name String, applied_at DateTime) "
    "ENGINE = MergeTree ORDER BY version"
)
APPLIED_QUERY = "SELECT DISTINCT version FROM schema_migrations"
RECORD_INSERT = "INSERT INTO schema_migrations (version, name, applied_at) VALUES"

# Retention drops whole partitions: months, in the server's time zone (ExpenseStore.expire
# checks the table still has this key before it drops anything).
PARTITION_KEY = "toYYYYMM(date)"

# The k8s_* columns stay out of the sorting key: Nullable columns may not be in it on 18.16
# (newer releases need allow_nullable_key), and readers filter by account and day first.
EXPENSES_DDL = """
CREATE TABLE IF NOT EXISTS expenses (
    cloud_account_id String,
    resource_id String,
    date DateTime,
    cost Float64,
    sign Int8,
    k8s_cluster Nullable(String),
    k8s_namespace Nullable(String),
    k8s_node Nullable(String),
    k8s_service Nullable(String)
)
ENGINE = CollapsingMergeTree(sign)
PARTITION BY toYYYYMM(date)
ORDER BY (cloud_account_id, date, resource_id)
"""

# What a row costs, named: readers sum one resource type at a time (a pod's cost is inside
# its namespace's, which is inside its cluster's) without asking MongoDB which ids are pods.
# One ALTER adds both, so either both exist or neither.
RESOURCE_COLUMNS_DDL = (
    "ALTER TABLE expenses ADD COLUMN resource_type String DEFAULT '' AFTER k8s_service, "
    "ADD COLUMN resource_name String DEFAULT '' AFTER resource_type"
)
# "Column already exists": ILLEGAL_COLUMN on 18.16, DUPLICATE_COLUMN on current releases.
_COLUMN_EXISTS = frozenset({44, 15})

# Readers sum one resource type at a time. With the type right after the account in the
# key, a namespace view of 90 days reads the namespace rows only, not every pod's: on the
# REST benchmark's 1.98 M rows (95 % pods) the namespace page went from 180 to 30 ms in
# ClickHouse 18.16.
BY_TYPE_KEY = "cloud_account_id, resource_type, date, resource_id"
EXPENSES_BY_TYPE_DDL = (
    "CREATE TABLE {name} AS {source} ENGINE = CollapsingMergeTree(sign) "
    f"PARTITION BY toYYYYMM(date) ORDER BY ({BY_TYPE_KEY})"
)

# Row TTL on the same boundary as the partitions ``expire`` drops (see the module docstring).
# Table TTL arrived in ClickHouse 19.6: 18.16 refuses the syntax, and relies on ExpenseStore.expire alone.
RETENTION_TTL_DDL = "ALTER TABLE expenses MODIFY TTL toStartOfMonth(date) + INTERVAL {retention_months} MONTH"
TTL_SINCE = (19, 6)


def retention_months(years: int) -> int:
    """Months after its month's start at which a row expires: ``12 · years + 1``."""
    if years < 1:
        raise ValueError(f"EXPENSES_RETENTION_YEARS must be at least 1, got {years}")
    return 12 * years + 1


# Each namespace's cost per cluster and day, as the design's ``expenses_namespace_daily``
# (a SummingMergeTree under a materialized view), for the daily breakdown by namespace.
# Unlike the design's, it reads the namespace rows only (a pod's row is inside its
# namespace's: the design's sum counts it twice) and keeps the cluster, so a cluster filter
# applies; ``sign`` sums the rows' signs, so a group is live while it is positive, as in
# ``expenses``. Measured on the REST benchmark's 90 days (94,564 namespace rows of 1.98 M)
# on 18.16: the breakdown's query went from 70–160 ms on ``expenses`` to 40–70 ms here,
# grouping on plain Strings instead of expenses' Nullable(String) columns.
NAMESPACE_DAILY = "expenses_namespace_daily"
NAMESPACE_DAILY_VIEW = f"{NAMESPACE_DAILY}_mv"
NAMESPACE_DAILY_DDL = """
CREATE TABLE {name} (
    cloud_account_id String,
    date DateTime,
    k8s_cluster String,
    k8s_namespace String,
    cost Float64,
    sign Int64
)
ENGINE = SummingMergeTree((cost, sign))
PARTITION BY toYYYYMM(date)
ORDER BY (cloud_account_id, date, k8s_cluster, k8s_namespace)
"""
VIEW_SELECT = (
    "SELECT cloud_account_id, date, ifNull(k8s_cluster, '') AS k8s_cluster, "
    "ifNull(k8s_namespace, '') AS k8s_namespace, cost * sign AS cost, toInt64(sign) AS sign "
    f"FROM {{source}} WHERE resource_type = '{RESOURCE_TYPES[Kind.NAMESPACE]}'"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create expenses", EXPENSES_DDL),
    Migration(2, "expenses name their resource and its type", RESOURCE_COLUMNS_DDL, _COLUMN_EXISTS),
    Migration(3, "expenses sorted by resource type", EXPENSES_BY_TYPE_DDL, sorting_key=BY_TYPE_KEY),
    Migration(4, "namespaces' daily costs kept by a view", NAMESPACE_DAILY_DDL,
              table=NAMESPACE_DAILY, view=NAMESPACE_DAILY_VIEW),
    Migration(5, "expenses expire after the retention", RETENTION_TTL_DDL, since=TTL_SINCE),
)


def pending(applied: Collection[int]) -> list[Migration]:
    """The migrations not in ``applied``, in version order."""
    return sorted((m for m in MIGRATIONS if m.version not in applied), key=lambda m: m.version)
