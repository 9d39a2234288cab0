"""The incremental cycle's math (k8scost.ledger), and what live rows tell of documents, without servers.

A fake Metroculus integrates simulated samples exactly as the real one asks the TSDB to
(k8scost.promql.integral: a point every resolution, the latest sample within the
lookback, buckets (t − step, t] read ``lag`` late), over the samples that have arrived
by the time of the read. Cycles run as a tenant runs them (plan, read, fold,
keep the closed hours) and are compared with a full read of the days at the same moment.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from k8scost import ledger
from k8scost.ledger import HOUR, Hours, Read
from k8scost.promql import CLUSTER_COST_COMPONENTS, IDLE_METRIC, LOOKBACK_SECONDS, NAMESPACE_METRIC, NODE_METRIC, POD_METRIC
from k8scost.settings import DAY
from k8scost.stores.clickhouse import ExpenseRow
from k8scost.stores.resources import RESOURCE_TYPES, Kind, Resource

ACCOUNT = "acc-1"
LAG = 1800
DELAY = 300
RESOLUTION = 60
SCRAPE = 60
DAY0 = datetime(2026, 11, 10, tzinfo=UTC)
DAYS = [DAY0, DAY0 + timedelta(days=1)]
T0 = int(DAY0.timestamp())
CPU, MANAGEMENT = CLUSTER_COST_COMPONENTS["cpu_cost"], CLUSTER_COST_COMPONENTS["management_cost"]


class Series:
    """One gauge's samples: (time, value, arrival), sorted by time."""

    def __init__(self, metric: str, labels: dict[str, str]) -> None:
        self.metric, self.labels = metric, {"cluster": "c1", **labels}
        self.times: list[float] = []
        self.samples: list[tuple[float, float, float]] = []

    def add(self, at: float, value: float, arrival: float) -> None:
        index = bisect.bisect(self.times, at)
        self.times.insert(index, at)
        self.samples.insert(index, (at, value, arrival))

    def value(self, point: int, now: float) -> float | None:
        """The latest sample at or before ``point``, within the lookback, arrived by ``now``."""
        index = bisect.bisect_right(self.times, point) - 1
        while index >= 0 and self.samples[index][0] >= point - LOOKBACK_SECONDS:
            if self.samples[index][2] <= now:
                return self.samples[index][1]
            index -= 1
        return None


def estate(end: float) -> list[Series]:
    """A cluster over [T0 − 2 h, end): pod a all along, pod b 10:00–14:30 of each day, idle and a fee.

    Samples every SCRAPE s, 30 s off the resolution's grid, arriving 90 s after their time
    (a scrape interval and a remote-write batch), within LEDGER_CLOSE_DELAY_SECONDS.
    """
    pod_a = Series(POD_METRIC, {"namespace": "ns", "pod": "a", "node": "n1", "controller_kind": "deployment", "controller": "a"})
    pod_b = Series(POD_METRIC, {"namespace": "ns", "pod": "b", "node": "n1", "controller_kind": "job", "controller": "b"})
    namespace = Series(NAMESPACE_METRIC, {"namespace": "ns"})
    node = Series(NODE_METRIC, {"node": "n1"})
    idle = Series(IDLE_METRIC, {})
    cpu, fee = Series(CPU, {}), Series(MANAGEMENT, {})
    at = T0 - 2 * HOUR + 30
    while at < end:
        in_day = (at - T0) % DAY
        a = 0.5 + 0.1 * math.sin(at / 5000)
        b = 1.25 if 10 * HOUR <= in_day < 14.5 * HOUR else None
        for series, value in ((pod_a, a), (pod_b, b), (namespace, a + (b or 0)), (node, a + (b or 0)),
                              (idle, 0.25), (cpu, a + (b or 0) + 0.25), (fee, 0.1)):
            if value is not None:
                series.add(at, value, at + 90)
        at += SCRAPE
    return [pod_a, pod_b, namespace, node, idle, cpu, fee]


def metroculus(series: list[Series], read: Read, now: float) -> dict:
    """``kubecost_metrics`` as Metroculus answers it, from the samples arrived by ``now``."""
    metrics: dict[str, list] = {metric: [] for metric in ledger.LEDGER_METRICS}
    for one in series:
        values = []
        for bucket_end in range(read.start + read.step, read.end + 1, read.step):
            at = bucket_end + LAG
            points = [one.value(p, now) for p in range(at - read.step + RESOLUTION, at + 1, RESOLUTION)]
            if any(v is not None for v in points):
                values.append([bucket_end, str(sum(v for v in points if v is not None) * RESOLUTION / 3600)])
        if values:
            metrics[one.metric].append({"metric": one.labels, "values": values})
    return {"step": read.step, "metrics": {m: {"status": "success", "data": {"result": r}} for m, r in metrics.items()}}


def full(series: list[Series], days: list[datetime], now: float) -> ledger.DailyCosts:
    """What a full-mode cycle reads at ``now``: each day as one bucket."""
    reads = [Read(int(d.timestamp()), int(d.timestamp()) + DAY, DAY) for d in days]
    return ledger.daily_costs(ACCOUNT, [metroculus(series, r, now) for r in reads], days)


def incremental(series: list[Series], days: list[datetime], now: float, hours: Hours | None,
                settle_seconds: float = 3600) -> tuple[ledger.CyclePlan, ledger.DailyCosts, Hours]:
    """One incremental cycle at ``now``, as Tenant._cycle runs it."""
    plan = ledger.plan_cycle(hours, days, now, LAG, DELAY, settle_seconds)
    closed = plan.base.plus(ledger.fold(ACCOUNT, [metroculus(series, r, now) for r in plan.closed_reads], days))
    daily = ledger.balanced(ACCOUNT, closed.plus(ledger.fold(ACCOUNT, [metroculus(series, r, now) for r in plan.open_reads], days)))
    settled_at = now if plan.settle else hours.settled_at
    return plan, daily, Hours(tuple(days), plan.closed_until, closed, settled_at)


def assert_same(got: ledger.DailyCosts, expected: ledger.DailyCosts) -> None:
    assert set(got.costs) == set(expected.costs)
    for key, cost in expected.costs.items():
        assert got.costs[key] == pytest.approx(cost, rel=1e-12, abs=1e-15), key
    assert got.resources == expected.resources


def rid(kind: Kind, namespace: str | None, name: str) -> str:
    return Resource(kind, "c1", namespace, name).id(ACCOUNT)


# --- the hours -------------------------------------------------------------------------------

def test_closed_and_readable_hours_follow_the_formulas() -> None:
    # 12:00: samples up to 11:25 are all due 5 min ago → hours of the ledger closed up to 11:00
    # (each read 30 min late); points up to 12:05 can hold a sample → hours up to 12:00.
    noon = T0 + 12 * HOUR
    assert ledger.closed_until(noon, LAG, DELAY) == T0 + 11 * HOUR
    assert ledger.read_until(noon, LAG) == T0 + 12 * HOUR
    assert ledger.closed_until(noon + 35 * 60, LAG, DELAY) == T0 + 12 * HOUR
    # 12:26: a point at 12:31 (TSDB time) takes the newest sample, so hour 12–13 is readable.
    assert ledger.read_until(noon + 26 * 60, LAG) == T0 + 13 * HOUR
    assert ledger.read_until(noon + 25 * 60, LAG) == T0 + 12 * HOUR


def test_a_settle_reads_closed_days_whole_and_today_hourly() -> None:
    now = T0 + DAY + 12 * HOUR  # noon of the second day
    plan = ledger.plan_cycle(None, DAYS, now, LAG, DELAY, 3600)
    assert plan.settle == "no hours kept"
    assert plan.closed_reads == [Read(T0, T0 + DAY, DAY), Read(T0 + DAY, T0 + DAY + 11 * HOUR, 11 * HOUR)]
    assert plan.open_reads == [Read(T0 + DAY + 11 * HOUR, T0 + DAY + 12 * HOUR, HOUR)]
    assert plan.closed_until == T0 + DAY + 11 * HOUR


def test_an_incremental_cycle_reads_only_the_hours_since() -> None:
    now = T0 + DAY + 12 * HOUR
    hours = Hours(tuple(DAYS), T0 + DAY + 10 * HOUR, ledger.SeriesCosts(), settled_at=now - 600)
    plan = ledger.plan_cycle(hours, DAYS, now, LAG, DELAY, 3600)
    assert plan.settle is None
    assert plan.closed_reads == [Read(T0 + DAY + 10 * HOUR, T0 + DAY + 11 * HOUR, HOUR)]
    assert plan.open_reads == [Read(T0 + DAY + 11 * HOUR, T0 + DAY + 12 * HOUR, HOUR)]
    # Nothing closed since the last cycle: the open hour alone.
    hours = Hours(tuple(DAYS), T0 + DAY + 11 * HOUR, ledger.SeriesCosts(), settled_at=now - 600)
    plan = ledger.plan_cycle(hours, DAYS, now, LAG, DELAY, 3600)
    assert (plan.closed_reads, plan.open_reads) == ([], [Read(T0 + DAY + 11 * HOUR, T0 + DAY + 12 * HOUR, HOUR)])


@pytest.mark.parametrize(("now", "kept_until", "days", "reason"), [
    (T0 + DAY + 12 * HOUR, T0 + DAY + 11 * HOUR, DAYS, None),
    (T0 + DAY + 12 * HOUR + 3600, T0 + DAY + 12 * HOUR, DAYS, "schedule"),
    # the first day's last hour (read until 00:30) closes at 00:35 of the second
    (T0 + DAY + 35 * 60, T0 + DAY - HOUR, DAYS, "day closed"),
    (T0 + DAY + 34 * 60, T0 + DAY - HOUR, DAYS, None),
    # midnight: the new day began after the hours kept end, so nothing of it is missing
    (T0 + DAY + 60, T0 + DAY - HOUR, [DAY0 + timedelta(days=1), DAY0 + timedelta(days=2)], None),
    # a day asked that the hours kept skipped
    (T0 + DAY + 12 * HOUR, T0 + DAY + 11 * HOUR, [DAY0 - timedelta(days=1), DAY0], "days changed"),
])
def test_when_a_cycle_settles(now: float, kept_until: int, days: list[datetime], reason: str | None) -> None:
    hours = Hours(tuple(DAYS), kept_until, ledger.SeriesCosts(), settled_at=now - (3600 if reason == "schedule" else 600))
    closed = ledger.closed_until(now, LAG, DELAY)
    assert ledger.settle_reason(hours, days, now, closed, 3600) == reason
    # days asked for by name are read whole, whatever the hours kept
    assert ledger.settle_reason(hours, days, now, closed, 3600, asked=True) == "days asked"


def test_a_late_write_on_record_since_the_last_settle_makes_the_next_cycle_settle() -> None:
    now = T0 + DAY + 12 * HOUR
    closed = ledger.closed_until(now, LAG, DELAY)

    def reason(seen: float | None, record: float | None) -> str | None:
        hours = Hours(tuple(DAYS), closed, ledger.SeriesCosts(), settled_at=now - 600, late_seen=seen)
        return ledger.settle_reason(hours, DAYS, now, closed, 3600, late_landed_at=record)

    assert reason(None, None) is None
    assert reason(None, now - 7200) == "late samples"  # the first record since the settle
    assert reason(now - 7200, now - 7200) is None  # the record the settle read first: its write is in
    assert reason(now - 7200, now - 60) == "late samples"
    # settled_at and the record's time are never compared: the ingress's clock is another machine's
    assert reason(now - 7200, now - 3600) == "late samples"


def test_past_days_are_read_once() -> None:
    now = T0 + 5 * DAY
    plan = ledger.plan_cycle(None, DAYS, now, LAG, DELAY, 3600)
    assert plan.closed_reads == [Read(T0, T0 + DAY, DAY), Read(T0 + DAY, T0 + 2 * DAY, DAY)] and not plan.open_reads
    hours = Hours(tuple(DAYS), plan.closed_until, ledger.SeriesCosts(), now)
    again = ledger.plan_cycle(hours, DAYS, now + 300, LAG, DELAY, 3600)
    assert (again.settle, again.closed_reads, again.open_reads) == (None, [], [])


# --- cycles against a full read --------------------------------------------------------------

def test_hourly_buckets_add_up_to_the_day() -> None:
    series = estate(T0 + 2 * DAY + 2 * HOUR)
    now = T0 + 3 * DAY
    hourly = [metroculus(series, Read(T0, T0 + DAY, HOUR), now)]
    assert_same(ledger.daily_costs(ACCOUNT, hourly, [DAY0]), full(series, [DAY0], now))
    # and the fee and the namespaces balance the cluster (module docstring)
    day = full(series, [DAY0], now).costs
    cluster = day[rid(Kind.CLUSTER, None, "c1"), DAY0]
    lines = [day[rid(Kind.NAMESPACE, name, name), DAY0] for name in ("ns", "__idle__", "__management__", "__unallocated__")]
    assert sum(lines) == pytest.approx(cluster, rel=1e-12)


def test_incremental_cycles_cost_what_a_full_read_costs() -> None:
    series = estate(T0 + 2 * DAY)
    hours, reasons, hours_read = None, [], []
    # From the evening of the first day past its close: every 5 minutes (CYCLE_SECONDS), and
    # at each hour's edges: 10 s after its last point is due (its last sample not arrived
    # yet), and 2 minutes before, when the next hour's first points already take a sample.
    edges = range(T0 + 20 * HOUR + LAG, T0 + DAY + 3 * HOUR, HOUR)
    cycles = sorted({*range(T0 + 20 * HOUR, T0 + DAY + 3 * HOUR, 300), *(h + 10 for h in edges), *(h - 120 for h in edges)})
    for now in cycles:
        plan, daily, hours = incremental(series, DAYS, now, hours)
        reasons.append(plan.settle)
        hours_read.append(sum(r.end - r.start for r in plan.open_reads + plan.closed_reads) / HOUR)
        assert_same(daily, full(series, DAYS, now))
    assert {"no hours kept", "schedule", "day closed"} <= set(reasons)
    # A full read covers every open hour, up to 48; a cycle between settles one or two.
    assert max(read for read, reason in zip(hours_read, reasons) if reason is None) <= 2


def test_late_samples_land_at_the_next_settle() -> None:
    end = T0 + DAY + 16 * HOUR
    series = estate(end)
    pod_a = series[0]
    now = T0 + DAY + 12 * HOUR
    _, _, hours = incremental(series, DAYS, now, None)  # a settle
    # Samples of 09:00–09:30 (read for the ledger's 08:30–09:00, closed hours) arrive late,
    # with a doubled rate: a sender catching up after an outage.
    for k in range(30):
        at = T0 + DAY + 9 * HOUR + 45 + 60 * k
        pod_a.add(at, 2.0, now + 60)
    later = now + 600
    plan, daily, hours = incremental(series, DAYS, later, hours)
    assert plan.settle is None
    expected = full(series, DAYS, later)
    key = (rid(Kind.POD, "ns", "a"), DAYS[1])
    assert daily.costs[key] < expected.costs[key] - 0.3 * 0.5  # the late half hour is not read yet
    plan, daily, hours = incremental(series, DAYS, now + 3600, hours)
    assert plan.settle == "schedule"
    assert_same(daily, full(series, DAYS, now + 3600))


# --- what live rows tell of the resource documents -------------------------------------------

def row(resource: Resource, day: datetime, cost: float = 1.0) -> ExpenseRow:
    return ExpenseRow(ACCOUNT, resource.id(ACCOUNT), day, cost, 1, resource.cluster, resource.namespace,
                      resource.node, resource.service, RESOURCE_TYPES[resource.kind], resource.name)


def test_live_rows_tell_which_documents_exist_and_with_what() -> None:
    pod = Resource(Kind.POD, "c1", "ns", "a", node="n1", service="a")
    moved = Resource(Kind.POD, "c1", "ns", "b", node="n1", service="b")
    component = Resource(Kind.CLUSTER_COST, "c1", None, "cpu_cost")
    day0, day1 = DAYS
    rows = [row(pod, day0), row(pod, day1), row(moved, day0), row(replace(moved, node="n2"), day1), row(component, day1)]
    # A component has no document; a pod whose rows disagree is left to its next change.
    assert ledger.documents_of_rows({}, rows) == {pod.id(ACCOUNT): row(pod, day0)[5:]}
    # What this process wrote itself wins over rows.
    mine = {pod.id(ACCOUNT): row(replace(pod, node="n3"), day1)[5:]}
    assert ledger.documents_of_rows(mine, rows) == mine
