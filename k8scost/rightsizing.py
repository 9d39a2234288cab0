"""Container request rightsizing, the way Kubecost's requestSizingV2 does it. Pure: no I/O.

This is the ``request-sizing-v2`` recommender (``k8scost.usage_sizing.Recommender``). The
rightsizing job feeds it the exporter's container gauges, Kubecost's 1-hour allocation
averages (below); ``k8scost.usage_sizing`` feeds the same formula per-container usage
samples (``statistic`` and ``sized``), beside the VPA-style recommender.

Groups. A recommendation is per (cluster, namespace, controller kind, controller,
container): the pods of one controller are replicas of one container spec, so they get
one recommendation. A pod without controller is a group of its own (keyed by its name).

Inputs, per replica (one pod's container) and resource (CPU in cores, memory in bytes),
over the window (end − window_days, end], from the exporter's container gauges:

- ``statistic``: what the algorithm sizes on —
  ``max``: the peak usage, the highest sample of the ``*_usage_max_*`` gauge (each sample is
  the peak Kubecost saw over its allocation window; OpenCost has no peaks and the exporter
  then exports the average);
  ``quantile`` (q): the q-quantile of the ``*_usage_average_*`` samples (each the average
  usage over the exporter's allocation window, the finest usage the allocation API gives);
- ``usage_sum`` and ``request_sum``: the sums of its average-usage and request samples;
- ``request``: its latest request; ``running``: whether it was still exported at the end;
- ``price``: its node's price, USD per core-hour (CPU) or per GiB-hour (memory), from the
  exporter's node price gauges (the node's allocated cost ÷ allocated core- or GiB-hours).

Formulas, per resource, with t the target utilization (default 0.7) and floor 0.01 core
(10 m) or 20 MiB:

    statistic        = max(x_1 … x_n), or the q-quantile of the samples sorted x_(1) ≤ … ≤ x_(n):
                       x_(⌊h⌋+1) + (h − ⌊h⌋)(x_(⌊h⌋+2) − x_(⌊h⌋+1)), h = q(n − 1) (1-based; Prometheus'
                       max_over_time and quantile_over_time, as the job asks the TSDB)
    recommended      = max(floor, max over replicas r of statistic_r / t)
    efficiency       = Σ_r usage_sum_r / Σ_r request_sum_r            (None when nothing was requested)
    monthly savings  = Σ over running replicas r of (request_r − recommended) × price_r × 730 h
                       (memory: bytes / GiB × price per GiB-hour)

and for the group:

    total efficiency = Σ_r Σ_res usage_sum × price / Σ_r Σ_res request_sum × price
                     = the mean of the CPU and memory efficiencies weighted by their request cost
    monthly savings  = CPU savings + memory savings
    status           = over-provisioned (savings > 0), under-provisioned (savings < 0: the
                       recommended requests cost ``extra_monthly_cost`` = −savings more),
                       right-sized (0), not-running (no replica runs at the end: savings 0),
                       unknown (a running replica without price or request, or no usage)

Sized on usage series. When the job has a container's own usage samples (cAdvisor and
kube-state-metrics, ``k8scost.usage_sizing``), the recommended requests of its group are the
chosen recommender's on those samples (``recommend``'s ``usage``), and only the recommended
values change: efficiency and savings are computed as above. Every recommendation says which
(``sized_on``): ``usage series (<recommender>)``, or ``SIZED_ON_AVERAGES``.

The maximum over replicas is Kubecost's: a deployment whose replicas peaked at 120 m and
800 m gets 800 m / t for both. Efficiency sums samples, so it is the time-weighted average
usage over the average request. Savings count the replicas running at the window's end,
each at its own node's price: what applying the recommendation now saves per month (730
hours, Kubecost's month); replicas that ended inside the window still shape the
recommendation and the efficiency, not the savings.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GIB = 1024**3
MIB = 1024**2
HOURS_PER_MONTH = 730.0
MIN_CPU_CORES = 0.01  # Kubecost's minRecCPUMillicores default, 10 m
MIN_MEMORY_BYTES = 20 * MIB  # Kubecost's minRecRAMBytes default
MAX_WINDOW_DAYS = 30  # the TSDB keeps out-of-order samples 30 days; Kubecost advises 2 days or more
SIZED_ON_AVERAGES = "hourly averages: no usage series"


class Algorithm(enum.StrEnum):
    """What usage a recommendation is sized on."""

    MAX = "max"
    QUANTILE = "quantile"


class Status(enum.StrEnum):
    OVER = "over-provisioned"
    UNDER = "under-provisioned"
    RIGHT = "right-sized"
    NOT_RUNNING = "not-running"  # no replica runs at the window's end: nothing to save now
    UNKNOWN = "unknown"


class ParamsError(ValueError):
    """A parameter out of range; ``param`` names it (a ``Params`` field), ``reason`` says why."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Params:
    """How recommendations are computed; checked on construction (ParamsError)."""

    window_days: int = 7
    algorithm: Algorithm = Algorithm.MAX
    quantile: float = 0.95  # used by Algorithm.QUANTILE only
    target_cpu_utilization: float = 0.7
    target_memory_utilization: float = 0.7

    def __post_init__(self) -> None:
        if isinstance(self.window_days, bool) or not isinstance(self.window_days, int) or not (
            1 <= self.window_days <= MAX_WINDOW_DAYS
        ):
            raise ParamsError("window_days", f"{self.window_days!r} is not a whole number of days from 1 to {MAX_WINDOW_DAYS}")
        try:
            object.__setattr__(self, "algorithm", Algorithm(self.algorithm))
        except ValueError:
            raise ParamsError("algorithm", f"{self.algorithm!r} is not one of {', '.join(Algorithm)}") from None
        for name in ("quantile", "target_cpu_utilization", "target_memory_utilization"):
            value = getattr(self, name)
            # NaN fails both comparisons, so it is refused too.
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ParamsError(name, f"{value!r} is not a number in (0, 1]")

    def document(self) -> dict[str, Any]:
        """The parameters as stored beside the recommendations."""
        return {**dataclasses.asdict(self), "algorithm": str(self.algorithm)}


@dataclasses.dataclass(frozen=True, order=True)
class GroupKey:
    """What one recommendation is for; ``pod`` is empty for a controller's replicas."""

    cluster: str
    namespace: str
    controller_kind: str
    controller: str
    pod: str
    container: str


def group_key(cluster: str, namespace: str, pod: str, container: str, controller_kind: str, controller: str) -> GroupKey:
    """The group of one pod's container: its controller's, or its own when it has none."""
    if controller:
        return GroupKey(cluster, namespace, controller_kind, controller, "", container)
    return GroupKey(cluster, namespace, "", "", pod, container)


@dataclasses.dataclass(frozen=True)
class Observed:
    """One resource of one replica over the window (see the module docstring)."""

    statistic: float | None
    usage_sum: float
    request_sum: float
    request: float | None
    price: float | None  # USD per core-hour (CPU) or per GiB-hour (memory)


@dataclasses.dataclass(frozen=True)
class Replica:
    """One pod's container over the window."""

    pod: str
    node: str
    running: bool
    cpu: Observed
    memory: Observed


@dataclasses.dataclass(frozen=True)
class ResourceRecommendation:
    """One resource of a group: current and recommended request, efficiency, savings."""

    current_request: float | None  # the largest latest request of the running replicas (of all, if none runs)
    recommended_request: float | None  # None: no usage seen
    efficiency: float | None
    monthly_savings: float | None  # None: unknown (no usage, or a running replica without price or request)


@dataclasses.dataclass(frozen=True)
class Recommendation:
    key: GroupKey
    replicas: int  # running at the window's end
    pods: int  # seen in the window
    cpu: ResourceRecommendation
    memory: ResourceRecommendation
    total_efficiency: float | None
    sized_on: str = SIZED_ON_AVERAGES

    @property
    def monthly_savings(self) -> float | None:
        if self.cpu.monthly_savings is None or self.memory.monthly_savings is None:
            return None
        return self.cpu.monthly_savings + self.memory.monthly_savings

    @property
    def extra_monthly_cost(self) -> float:
        """What the recommended requests cost more than the current ones (under-provisioned), else 0."""
        savings = self.monthly_savings
        return -savings if savings is not None and savings < 0 else 0.0

    @property
    def status(self) -> Status:
        savings = self.monthly_savings
        if savings is None:
            return Status.UNKNOWN
        if not self.replicas:
            return Status.NOT_RUNNING
        return Status.OVER if savings > 0 else Status.UNDER if savings < 0 else Status.RIGHT


@dataclasses.dataclass(frozen=True)
class _Resource:
    name: str  # the Replica field
    floor: float
    unit: float  # request units in one price unit: 1 core, or GiB in bytes


_CPU = _Resource("cpu", MIN_CPU_CORES, 1.0)
_MEMORY = _Resource("memory", MIN_MEMORY_BYTES, float(GIB))


def statistic(samples: Sequence[float], algorithm: Algorithm, quantile: float) -> float | None:
    """What one replica is sized on: the peak or the quantile of its samples (None without any)."""
    if not samples:
        return None
    if algorithm is Algorithm.MAX:
        return max(samples)
    ordered = sorted(samples)
    rank = quantile * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def sized(statistics: Iterable[float | None], target: float, floor: float) -> float | None:
    """The recommended request of a group: max(floor, max statistic ÷ target); None without any statistic."""
    known = [s for s in statistics if s is not None]
    return max(floor, max(known) / target) if known else None


@dataclasses.dataclass(frozen=True)
class UsageSized:
    """A group's requests as a recommender sized them on its usage samples (None: no sample)."""

    recommender: str
    cpu_cores: float | None
    memory_bytes: float | None


def _recommend_resource(
    resource: _Resource, replicas: Sequence[Replica], target: float, usage: UsageSized | None
) -> ResourceRecommendation:
    observed = [getattr(r, resource.name) for r in replicas]
    if usage is None:
        recommended = sized((o.statistic for o in observed), target, resource.floor)
    else:
        recommended = usage.cpu_cores if resource is _CPU else usage.memory_bytes
    request_sum = sum(o.request_sum for o in observed)
    efficiency = sum(o.usage_sum for o in observed) / request_sum if request_sum > 0 else None
    running = [o for r, o in zip(replicas, observed) if r.running]
    requests = [o.request for o in (running or observed) if o.request is not None]
    savings: float | None = None
    if recommended is not None and all(o.request is not None and o.price is not None for o in running):
        savings = sum(
            (o.request - recommended) / resource.unit * o.price * HOURS_PER_MONTH  # type: ignore[operator]
            for o in running
        )
    return ResourceRecommendation(max(requests) if requests else None, recommended, efficiency, savings)


def _total_efficiency(replicas: Sequence[Replica]) -> float | None:
    """Usage cost ÷ request cost over both resources, each at its replica's node price."""
    usage = request = 0.0
    for replica in replicas:
        for resource in (_CPU, _MEMORY):
            observed: Observed = getattr(replica, resource.name)
            if observed.price is None:
                return None
            usage += observed.usage_sum / resource.unit * observed.price
            request += observed.request_sum / resource.unit * observed.price
    return usage / request if request > 0 else None


def recommend(key: GroupKey, replicas: Sequence[Replica], params: Params, usage: UsageSized | None = None) -> Recommendation:
    """The recommendation of one group from its replicas (at least one); its requests sized on
    ``usage`` when given, else on the hourly averages (module docstring)."""
    if not replicas:
        raise ValueError(f"group {key} has no replica")
    return Recommendation(
        key,
        replicas=sum(1 for r in replicas if r.running),
        pods=len({r.pod for r in replicas}),
        cpu=_recommend_resource(_CPU, replicas, params.target_cpu_utilization, usage),
        memory=_recommend_resource(_MEMORY, replicas, params.target_memory_utilization, usage),
        total_efficiency=_total_efficiency(replicas),
        sized_on=SIZED_ON_AVERAGES if usage is None else f"usage series ({usage.recommender})",
    )


def recommend_all(
    groups: Mapping[GroupKey, Sequence[Replica]], params: Params, usage: Mapping[GroupKey, UsageSized] | None = None
) -> list[Recommendation]:
    """Every group's recommendation, the largest savings first (unknown savings last); a group
    of ``usage`` sized on its usage samples."""
    usage = usage or {}
    recommendations = [recommend(key, replicas, params, usage.get(key)) for key, replicas in groups.items()]
    return sorted(recommendations, key=_savings_order)


def _savings_order(r: Recommendation) -> tuple[bool, float, GroupKey]:
    savings = r.monthly_savings
    return (savings is None, -(savings or 0.0), r.key)


def group(replicas: Iterable[tuple[GroupKey, Replica]]) -> dict[GroupKey, list[Replica]]:
    """Replicas gathered by their group."""
    groups: dict[GroupKey, list[Replica]] = {}
    for key, replica in replicas:
        groups.setdefault(key, []).append(replica)
    return groups
