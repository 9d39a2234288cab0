"""Sizing on usage samples: the VPA-style recommender and requestSizingV2, checked by hand. Pure tests.

Expected values are computed here from the published rules, not from the module: bucket
ends by walking the VPA's exponential buckets one by one, weights as powers of two.
"""

from __future__ import annotations

import math

import pytest

from devstack.workloads import generate, hourly_averages
from k8scost.rightsizing import GIB, MIB, Algorithm, Params, statistic
from k8scost.usage_sizing import (
    DecayingHistogram,
    Oom,
    Recommender,
    ReplicaUsage,
    Target,
    VpaParams,
    cpu_usage,
    memory_peaks,
    recommend,
    vpa_target,
)

DAY = 86_400.0
T = 1_730_419_200.0
CPU_FIRST, MEMORY_FIRST = 0.01, 1e7  # the VPA's first bucket sizes: 10 m, 10 MB


def bucket_end(value: float, first: float) -> float:
    """End of the VPA bucket holding ``value``: buckets of sizes first × 1.05^i laid end to end."""
    start, size = 0.0, first
    while start + size <= value:
        start += size
        size *= 1.05
    return start + size


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-9)


# --- the decaying histogram ----------------------------------------------------------------------


def test_a_sample_24_hours_older_weighs_half() -> None:
    h = DecayingHistogram(CPU_FIRST, 1.05, DAY)
    h.add(0.5, T)
    h.add(2.0, T - DAY)
    h.add(8.0, T - 2 * DAY)
    assert h.weights == {h.bucket(0.5): 1.0, h.bucket(2.0): approx(0.5), h.bucket(8.0): approx(0.25)}
    h.add(0.5, T)  # same bucket, same time: the weights add
    assert h.weights[h.bucket(0.5)] == 2.0
    # The order samples come in changes the scale, never the ratios.
    g = DecayingHistogram(CPU_FIRST, 1.05, DAY)
    g.add(2.0, T - DAY)
    g.add(0.5, T)
    assert g.weights[g.bucket(2.0)] / g.weights[g.bucket(0.5)] == approx(0.5)


def test_recency_moves_the_percentile() -> None:
    # Nine samples of 0.1 core and one of 1 core: at one instant the 90th percentile is 0.1's
    # bucket (9 of 10 reach 0.9). With the nine a day older they weigh 4.5 against 1: 4.5 < 0.9 × 5.5.
    same = DecayingHistogram(CPU_FIRST, 1.05, DAY)
    older = DecayingHistogram(CPU_FIRST, 1.05, DAY)
    for _ in range(9):
        same.add(0.1, T)
        older.add(0.1, T - DAY)
    same.add(1.0, T)
    older.add(1.0, T)
    assert same.percentile(0.9) == approx(bucket_end(0.1, CPU_FIRST))
    assert older.percentile(0.9) == approx(bucket_end(1.0, CPU_FIRST))
    assert DecayingHistogram(CPU_FIRST, 1.05, DAY).percentile(0.9) is None


# --- the VPA-style target --------------------------------------------------------------------------


def test_cpu_target_is_the_90th_percentile_bucket_end_plus_15_percent() -> None:
    # 0.1 … 1.0 core at one instant (15 s apart, the newest would weigh 2^(15 s / 24 h) more: at this
    # exact boundary, 9 of 10, that tips the percentile).
    samples = [(T, 0.1 * (i + 1)) for i in range(10)]
    target = vpa_target([ReplicaUsage(samples, [(T, 400 * MIB)])])
    assert target.cpu_cores == approx(bucket_end(0.9, CPU_FIRST) * 1.15)
    assert target.memory_bytes == approx(bucket_end(400 * MIB, MEMORY_FIRST) * 1.15)
    bare = vpa_target([ReplicaUsage(samples, [])], VpaParams(safety_margin=0.0))
    assert bare.cpu_cores == approx(bucket_end(0.9, CPU_FIRST))
    assert bucket_end(0.9, CPU_FIRST) / 0.9 < 1.05  # a bucket is at most 5 % wide


def test_replicas_of_a_group_share_one_histogram() -> None:
    a = ReplicaUsage([(T, 0.2)] * 5, [])
    b = ReplicaUsage([(T, 0.8)] * 5, [])
    # Ten samples: 0.5 of them are 0.2, so the median is 0.2's bucket and the 90th percentile 0.8's.
    assert vpa_target([a, b], VpaParams(cpu_percentile=0.5, safety_margin=0.0)).cpu_cores == approx(
        bucket_end(0.2, CPU_FIRST))
    assert vpa_target([a, b], VpaParams(safety_margin=0.0)).cpu_cores == approx(bucket_end(0.8, CPU_FIRST))


def test_memory_is_sized_on_daily_peaks_weighted_by_their_day() -> None:
    # Day 0 peaks at 1 GiB, day 1 at 2 GiB, day 2 at 1.5 GiB (and much lower the rest of each day).
    memory = []
    for day, peak in enumerate((1 * GIB, 2 * GIB, 1.5 * GIB)):
        base = T + day * DAY
        memory += [(base, 300 * MIB), (base + 3600, peak), (base + 7200, 200 * MIB)]
    replica = ReplicaUsage([], memory)
    assert memory_peaks(replica, VpaParams()) == [(T + DAY, GIB), (T + 2 * DAY, 2 * GIB), (T + 3 * DAY, 1.5 * GIB)]
    # Weights 1, 2, 4 (each peak a day newer): total 7. The median (3.5) is reached at 1.5 GiB (1 + 4),
    # the 90th percentile (6.3) only at 2 GiB.
    median = vpa_target([replica], VpaParams(memory_percentile=0.5, safety_margin=0.0)).memory_bytes
    assert median == approx(bucket_end(1.5 * GIB, MEMORY_FIRST))
    assert vpa_target([replica]).memory_bytes == approx(bucket_end(2 * GIB, MEMORY_FIRST) * 1.15)
    assert vpa_target([replica]).cpu_cores is None  # no CPU sample: no CPU recommendation


def test_floors_are_25m_and_250_mib_per_pod_shared_by_its_containers() -> None:
    tiny = [ReplicaUsage([(T, 0.001)], [(T, 1 * MIB)])]
    assert vpa_target(tiny) == Target(0.025, 250 * MIB)
    assert vpa_target(tiny, containers_per_pod=2) == Target(0.0125, 125 * MIB)
    # Above the floor, the usage-based target wins.
    assert vpa_target([ReplicaUsage([(T, 0.03)], [(T, 300 * MIB)])]).cpu_cores == approx(
        bucket_end(0.03, CPU_FIRST) * 1.15)


def test_an_oom_kill_bumps_the_memory_the_container_had() -> None:
    # Request 1 GiB, peak 300 MiB before the kill: 1 GiB × 1.2 (> 1 GiB + 100 MiB).
    big = ReplicaUsage([], [(T, 300 * MIB)], [Oom(T + 60, 1 * GIB)])
    assert memory_peaks(big, VpaParams()) == [(T + DAY, approx(1.2 * GIB))]
    assert vpa_target([big]).memory_bytes == approx(bucket_end(1.2 * GIB, MEMORY_FIRST) * 1.15)
    # Request 200 MiB, but 250 MiB used before the kill: 250 + 100 MiB (> 250 × 1.2).
    small = ReplicaUsage([], [(T, 250 * MIB)], [Oom(T + 60, 200 * MIB)])
    assert memory_peaks(small, VpaParams()) == [(T + DAY, 350 * MIB)]
    # A kill on the next day takes that day's peak so far, not an earlier day's.
    later = ReplicaUsage([], [(T, 2 * GIB), (T + DAY + 10, 100 * MIB)], [Oom(T + DAY + 60, 50 * MIB)])
    assert memory_peaks(later, VpaParams()) == [(T + DAY, 2 * GIB), (T + 2 * DAY, 200 * MIB)]
    # A kill alone is evidence enough for a memory recommendation.
    assert vpa_target([ReplicaUsage([], [], [Oom(T, GIB)])]).memory_bytes == approx(
        bucket_end(1.2 * GIB, MEMORY_FIRST) * 1.15)


# --- requestSizingV2 on samples ------------------------------------------------------------------


def test_request_sizing_v2_by_hand() -> None:
    a = ReplicaUsage([(T, 0.1), (T + 15, 0.3), (T + 30, 0.2)], [(T, 300 * MIB), (T + 15, 500 * MIB)])
    b = ReplicaUsage([(T, 0.05), (T + 15, 0.4)], [(T, 1 * MIB)])
    peak = recommend(Recommender.REQUEST_SIZING_V2, [a, b], Params())
    assert (peak.cpu_cores, peak.memory_bytes) == (approx(0.4 / 0.7), approx(500 * MIB / 0.7))
    # Medians: a's 0.2 (sorted 0.1 0.2 0.3), b's 0.05 + 0.5 × (0.4 − 0.05) = 0.225; the larger over 0.8.
    median = recommend(Recommender.REQUEST_SIZING_V2, [a, b],
                       Params(algorithm=Algorithm.QUANTILE, quantile=0.5, target_cpu_utilization=0.8))
    assert median.cpu_cores == approx(0.225 / 0.8)
    assert median.memory_bytes == approx(400 * MIB / 0.7)
    floors = recommend(Recommender.REQUEST_SIZING_V2, [ReplicaUsage([(T, 0.001)], [(T, MIB)])], Params())
    assert floors == Target(0.01, 20 * MIB)


def test_the_quantile_interpolates_as_prometheus_does() -> None:
    # quantile_over_time(0.95) of 1…5: rank 0.95 × 4 = 3.8, between the 4th and 5th values.
    assert statistic([5.0, 1.0, 4.0, 2.0, 3.0], Algorithm.QUANTILE, 0.95) == approx(4.8)
    assert statistic([5.0, 1.0], Algorithm.MAX, 0.95) == 5.0
    assert statistic([7.0], Algorithm.QUANTILE, 0.5) == 7.0
    assert statistic([], Algorithm.MAX, 0.95) is None


# --- gaps and counter resets ---------------------------------------------------------------------


@pytest.mark.parametrize("recommender", list(Recommender))
def test_no_samples_give_no_recommendation_never_invented_usage(recommender: Recommender) -> None:
    assert recommend(recommender, [ReplicaUsage([], [])]) == Target(None, None)
    assert recommend(recommender, []) == Target(None, None)
    only_cpu = recommend(recommender, [ReplicaUsage([(T, 0.5)], [])])
    assert only_cpu.cpu_cores is not None and only_cpu.memory_bytes is None


def test_a_gap_in_the_counter_is_no_sample() -> None:
    counter = [(T, 0.0), (T + 15, 15.0), (T + 615, 615.0), (T + 630, 630.0)]  # 10 minutes unscraped
    assert cpu_usage(counter) == [(T, 1.0), (T + 615, 1.0)]
    assert cpu_usage(counter, max_gap=600) == [(T, 1.0), (T + 15, 1.0), (T + 615, 1.0)]


def test_counter_resets_do_not_create_usage() -> None:
    # 1 core throughout; the container restarts between T + 30 and T + 45 and counts again from 0.
    counter = [(T, 100.0), (T + 15, 115.0), (T + 30, 130.0), (T + 45, 2.0), (T + 60, 17.0)]
    usage = cpu_usage(counter)
    assert usage == [(T, 1.0), (T + 15, 1.0), (T + 45, 1.0)]
    target = recommend(Recommender.VPA, [ReplicaUsage(usage, [])], vpa=VpaParams(safety_margin=0.0))
    assert target.cpu_cores == approx(bucket_end(1.0, CPU_FIRST))
    peak = recommend(Recommender.REQUEST_SIZING_V2, [ReplicaUsage(usage, [])])
    assert peak.cpu_cores == approx(1.0 / 0.7)


# --- the evaluation's workloads ------------------------------------------------------------------


def test_hourly_averages_are_per_clock_hour_and_skip_empty_hours() -> None:
    samples = [(T, 1.0), (T + 1800, 3.0), (T + 3600, 5.0), (T + 4 * 3600 + 5, 7.0)]
    assert hourly_averages(samples) == [(T, 2.0), (T + 3600, 5.0), (T + 4 * 3600, 7.0)]


def test_an_oom_prone_container_is_killed_at_its_limit_and_its_counter_restarts() -> None:
    workload = generate("oom-prone", 0, seed=3, replicas=2, history_days=2, eval_days=1)
    kills = [o for r in workload.replicas for o in r.ooms]
    assert kills, "two jobs a day reaching up to 2.2 × base memory should hit the 1.5 × limit in 2 days"
    for replica in workload.replicas:
        scraped = {t for t, _ in replica.counter}
        limit = replica.ooms[0].request_bytes if replica.ooms else math.inf
        assert max(v for _, v in replica.memory) < limit
        for oom in replica.ooms:
            assert oom.timestamp not in scraped  # restarting: nothing scraped at the kill
            before = max(c for t, c in replica.counter if t < oom.timestamp)
            after = min(c for t, c in replica.counter if t > oom.timestamp)
            assert after < before
        usage = cpu_usage(replica.counter)
        assert len(usage) == len(replica.counter) - 1 - len(replica.ooms)  # each restart's interval left out
        assert all(0 <= cores < 1.5 for _, cores in usage)  # never a reset read as a burst
    # Nothing of the evaluation day is in what the recommenders see.
    history_end = workload.replicas[0].counter[0][0] + 2 * DAY
    assert all(t < history_end for r in workload.replicas for t, _ in [*r.counter, *r.memory])
