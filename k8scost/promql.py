"""PromQL for cost queries, built so that a query can only ever read one tenant's series.

Every selector carries ``tenant_id="<tenant>"`` with the value escaped, names only a
known cost metric and only well-formed label names: no caller input reaches a query
unchecked, whatever validation happened before.
"""

from __future__ import annotations

import re

TENANT_LABEL = "tenant_id"

# The Phase 1 cluster gauges: together, with the management fee, a cluster's whole bill.
CLUSTER_COST_METRICS: tuple[str, ...] = (
    "kubecost_cluster_management_cost",
    "kubecost_cluster_cpu_cost",
    "kubecost_cluster_memory_cost",
    "kubecost_cluster_storage_cost",
    "kubecost_cluster_network_cost",
    "kubecost_cluster_load_balancer_cost",
)
# Every metric a cost query may read; each is an hourly rate in USD, labelled tenant_id.
COST_METRICS: tuple[str, ...] = (
    "cloudtuner_kubecost_namespace_total_cost",
    "cloudtuner_kubecost_namespace_cpu_cost",
    "cloudtuner_kubecost_namespace_ram_cost",
    "cloudtuner_kubecost_namespace_pv_cost",
    "cloudtuner_kubecost_pod_total_cost",
    "cloudtuner_kubecost_pod_cpu_cost",
    "cloudtuner_kubecost_pod_ram_cost",
    "cloudtuner_kubecost_node_total_cost",
    "cloudtuner_kubecost_node_cpu_cost",
    "cloudtuner_kubecost_node_ram_cost",
    "cloudtuner_kubecost_idle_cost",
    *CLUSTER_COST_METRICS,
)

# Label names as Prometheus allows them, minus the reserved ``__`` prefix (``__name__``).
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def escape_label_value(value: str) -> str:
    """``value`` made safe inside a double-quoted PromQL string (backslash, quote, newline)."""
    return value.translate(_ESCAPES)


def selector(metric: str, tenant_id: str, **matchers: str) -> str:
    """``metric{tenant_id="<tenant_id>", name="value", ...}``: equality matchers only.

    Raises ValueError for a metric outside ``COST_METRICS``, an empty tenant or a bad label name.
    """
    if metric not in COST_METRICS:
        raise ValueError(f"unknown cost metric {metric!r}")
    if not tenant_id:
        raise ValueError("tenant_id must not be empty")
    for name in matchers:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
    pairs = {TENANT_LABEL: tenant_id, **matchers}
    return metric + "{" + ", ".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs.items()) + "}"


def window(seconds: int) -> str:
    """A range duration covering exactly (t − seconds, t] when evaluated at t.

    Prometheus 2.x range selectors are closed on the left, [t − range, t] (3.x made them
    left-open); one millisecond less gives the same half-open window on both, so a sample
    exactly on a boundary counts in one window only.
    """
    return f"{seconds * 1000 - 1}ms"


def integral(expr: str, range_seconds: int, resolution_seconds: int) -> str:
    """The cost in USD over (t − range, t] of ``expr``, an hourly-rate gauge, evaluated at t.

    A subquery samples ``expr`` every ``resolution_seconds``; each point takes the latest
    sample within Prometheus' lookback (5 minutes) and nothing after a staleness marker,
    so a vanished pod stops costing at once and a gap costs at most the lookback at the
    last rate. Each point stands for the ``resolution_seconds`` that end at it.

    Alignment: Prometheus places subquery points at multiples of the resolution since the
    epoch, and ``window`` makes the range (t − range, t]. Evaluated at t = end with
    range = end − start, both multiples of the resolution, the points are start + res, …,
    end: the cost over (start, end], each step costed at its right end.
    """
    if range_seconds <= 0 or resolution_seconds <= 0 or range_seconds % resolution_seconds:
        raise ValueError(f"range {range_seconds}s must be a positive multiple of the resolution {resolution_seconds}s")
    return f"sum_over_time(({expr})[{window(range_seconds)}:{resolution_seconds}s]) * {resolution_seconds} / 3600"
