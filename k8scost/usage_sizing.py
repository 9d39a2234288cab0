"""Container requests sized on usage samples: the VPA recommender's way, or Kubecost's requestSizingV2. Pure: no I/O.

Inputs, per replica (one pod's container) of a group (the replicas of one controller's
container, as in ``k8scost.rightsizing``):

- CPU usage samples (t, cores). ``cpu_usage`` makes them from a cumulative counter
  (cAdvisor's ``container_cpu_usage_seconds_total``), sample pairs (t_i, c_i), (t_i+1, c_i+1):

      usage at t_i = (c_i+1 − c_i) / (t_i+1 − t_i)      only when c_i+1 ≥ c_i and t_i+1 − t_i ≤ max_gap

  A smaller value is a counter reset (the container restarted): its usage over that
  interval is unknown, so the interval has no sample; so has a longer interval (a gap,
  default 300 s: Prometheus' lookback). Gaps stay gaps: nothing is interpolated.
- Memory samples (t, working-set bytes), and OOM kills (t, the container's memory request
  at the kill, which is what the VPA records).

A resource without any sample (and memory without an OOM kill either) has no
recommendation (None: insufficient data); usage is never invented.

``Recommender.VPA``, in the spirit of the Kubernetes VPA recommender's target, with its
published defaults (flags and constants of vertical-pod-autoscaler/pkg/recommender):

    decay weight     w(t) = 2^((t − t_ref) / H), H = 24 h: a sample 24 h older weighs half
                     (t_ref = the first sample added; only the ratios matter)
    buckets          exponential, bucket i = [s_i, s_i+1), s_i = f (r^i − 1) / (r − 1), r = 1.05,
                     f = 0.01 core (CPU) or 10^7 bytes (memory); a value falls in one bucket
    percentile_p     = s_k+1, the end of the first bucket k at which the cumulative weight from
                     the bottom reaches p × the total weight
    CPU histogram    every usage sample of every replica, weight w(t) (the VPA also multiplies
                     by the request, ≥ 0.1 core: a constant request drops out of percentiles)
    memory peaks     per replica, intervals [t0 + kI, t0 + (k+1)I), I = 24 h, t0 its first memory
                     sample or OOM kill; one sample per interval: the maximum of its samples and
                     OOM bumps, weight w(t0 + (k+1)I)
    OOM bump         at a kill: used = max(request at the kill, the interval's sample peak so far),
                     bump = max(used × 1.2, used + 100 MiB)
    target           = max(floor / containers per pod, percentile_p × (1 + m)),
                     p = 0.9 (CPU and memory peaks), m = 0.15, floors 25 m CPU and 250 MiB per pod

``Recommender.REQUEST_SIZING_V2``: ``k8scost.rightsizing``'s formula on the samples, per
resource max(floor, max over replicas of statistic(samples) ÷ target utilization), floors
10 m and 20 MiB, statistic the peak or a quantile (``rightsizing.Params``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Sequence

from k8scost import rightsizing
from k8scost.rightsizing import MIB

DEFAULT_MAX_GAP_SECONDS = 300.0  # Prometheus' lookback: a longer interval between two counter samples is a gap


class Recommender(enum.StrEnum):
    """How requests are sized on usage samples."""

    VPA = "vpa"
    REQUEST_SIZING_V2 = "request-sizing-v2"


@dataclasses.dataclass(frozen=True)
class Oom:
    """An OOM kill: when, and the container's memory request then (bytes)."""

    timestamp: float
    request_bytes: float


@dataclasses.dataclass(frozen=True)
class ReplicaUsage:
    """One replica's samples over the window: (t, cores), (t, bytes), OOM kills."""

    cpu: Sequence[tuple[float, float]]
    memory: Sequence[tuple[float, float]]
    ooms: Sequence[Oom] = ()


@dataclasses.dataclass(frozen=True)
class VpaParams:
    """The VPA recommender's defaults (its flag or constant in the comment)."""

    half_life_seconds: float = 86_400.0  # cpu- and memory-histogram-decay-half-life
    cpu_percentile: float = 0.9  # target-cpu-percentile
    memory_percentile: float = 0.9  # target-memory-percentile
    safety_margin: float = 0.15  # recommendation-margin-fraction
    pod_min_cpu_cores: float = 0.025  # pod-recommendation-min-cpu-millicores 25
    pod_min_memory_bytes: float = 250 * MIB  # pod-recommendation-min-memory-mb 250 (× 1024²)
    oom_bump_ratio: float = 1.2  # DefaultOOMBumpUpRatio
    oom_min_bump_bytes: float = 100 * MIB  # DefaultOOMMinBumpUp
    memory_interval_seconds: float = 86_400.0  # memory-aggregation-interval
    cpu_first_bucket: float = 0.01  # cores
    memory_first_bucket: float = 1e7  # bytes
    bucket_growth: float = 1.05


@dataclasses.dataclass(frozen=True)
class Target:
    """Recommended requests of a group; None: no sample of that resource (insufficient data)."""

    cpu_cores: float | None
    memory_bytes: float | None


def cpu_usage(counter: Sequence[tuple[float, float]], max_gap: float = DEFAULT_MAX_GAP_SECONDS) -> list[tuple[float, float]]:
    """CPU usage samples (t, cores) from a cumulative counter's samples (t, core-seconds), in time order.

    Resets (a smaller value) and gaps longer than ``max_gap`` give no sample (module docstring).
    """
    usage = []
    for (t0, c0), (t1, c1) in zip(counter, counter[1:]):
        if c1 >= c0 and 0 < t1 - t0 <= max_gap:
            usage.append((t0, (c1 - c0) / (t1 - t0)))
    return usage


class DecayingHistogram:
    """The VPA's decaying histogram: exponential buckets, weights halving every ``half_life``."""

    def __init__(self, first_bucket: float, growth: float, half_life: float) -> None:
        self._first = first_bucket
        self._growth = growth
        self._half_life = half_life
        self._reference: float | None = None
        self.weights: dict[int, float] = {}  # bucket index → summed weight

    def bucket(self, value: float) -> int:
        """Index of the bucket holding ``value`` (bucket 0 below the first bucket's end)."""
        if value < self._first:
            return 0
        return int(math.log(value * (self._growth - 1) / self._first + 1) / math.log(self._growth))

    def bucket_start(self, index: int) -> float:
        return self._first * (self._growth**index - 1) / (self._growth - 1)

    def add(self, value: float, timestamp: float) -> None:
        if self._reference is None:
            self._reference = timestamp
        index = self.bucket(value)
        self.weights[index] = self.weights.get(index, 0.0) + 2.0 ** ((timestamp - self._reference) / self._half_life)

    def percentile(self, p: float) -> float | None:
        """The end of the bucket where the cumulative weight reaches ``p`` of the total; None when empty."""
        if not self.weights:
            return None
        threshold = p * sum(self.weights.values())
        cumulative = 0.0
        buckets = sorted(self.weights)
        for index in buckets:
            cumulative += self.weights[index]
            if cumulative >= threshold:
                break
        return self.bucket_start(index + 1)


def memory_peaks(replica: ReplicaUsage, params: VpaParams) -> list[tuple[float, float]]:
    """One (interval end, peak) per memory interval of the replica that has a sample or an OOM bump."""
    events = sorted([(t, 0, v) for t, v in replica.memory] + [(o.timestamp, 1, o.request_bytes) for o in replica.ooms])
    if not events:
        return []
    start = events[0][0]
    interval = params.memory_interval_seconds
    samples: dict[int, float] = {}  # interval → peak of its samples so far
    peaks: dict[int, float] = {}  # interval → peak of its samples and OOM bumps
    for t, is_oom, value in events:
        k = int((t - start) // interval)
        if is_oom:
            used = max(value, samples.get(k, 0.0))
            value = max(used * params.oom_bump_ratio, used + params.oom_min_bump_bytes)
        else:
            samples[k] = max(samples.get(k, 0.0), value)
        peaks[k] = max(peaks.get(k, 0.0), value)
    return [(start + (k + 1) * interval, peak) for k, peak in sorted(peaks.items())]


def vpa_target(replicas: Sequence[ReplicaUsage], params: VpaParams = VpaParams(), containers_per_pod: int = 1) -> Target:
    """The VPA-style target of a group (module docstring)."""
    cpu = DecayingHistogram(params.cpu_first_bucket, params.bucket_growth, params.half_life_seconds)
    memory = DecayingHistogram(params.memory_first_bucket, params.bucket_growth, params.half_life_seconds)
    for replica in replicas:
        for t, cores in replica.cpu:
            cpu.add(cores, t)
        for t, peak in memory_peaks(replica, params):
            memory.add(peak, t)

    def target(percentile: float | None, pod_floor: float) -> float | None:
        if percentile is None:
            return None
        return max(pod_floor / containers_per_pod, percentile * (1 + params.safety_margin))

    return Target(
        target(cpu.percentile(params.cpu_percentile), params.pod_min_cpu_cores),
        target(memory.percentile(params.memory_percentile), params.pod_min_memory_bytes),
    )


def request_sizing_v2_target(replicas: Sequence[ReplicaUsage], params: rightsizing.Params) -> Target:
    """Kubecost's requestSizingV2 on the samples (``k8scost.rightsizing``'s formula)."""

    def statistics(series: Iterable[Sequence[tuple[float, float]]]) -> list[float | None]:
        return [rightsizing.statistic([v for _, v in s], params.algorithm, params.quantile) for s in series]

    return Target(
        rightsizing.sized(statistics(r.cpu for r in replicas), params.target_cpu_utilization, rightsizing.MIN_CPU_CORES),
        rightsizing.sized(
            statistics(r.memory for r in replicas), params.target_memory_utilization, rightsizing.MIN_MEMORY_BYTES
        ),
    )


def recommend(
    recommender: Recommender,
    replicas: Sequence[ReplicaUsage],
    params: rightsizing.Params = rightsizing.Params(),
    vpa: VpaParams = VpaParams(),
    containers_per_pod: int = 1,
) -> Target:
    """The group's recommended requests by ``recommender``."""
    if Recommender(recommender) is Recommender.VPA:
        return vpa_target(replicas, vpa, containers_per_pod)
    return request_sizing_v2_target(replicas, params)
