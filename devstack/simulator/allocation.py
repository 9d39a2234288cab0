"""OpenCost's allocation and assets API answered from a simulated estate: query parsing, aggregation, JSON shape.

Like OpenCost, data exists at a resolution (5 minutes by default): a window is served
for its complete resolution steps only, from its start rounded up to its end (or now)
rounded down (opencost#2096: ``window=1h`` answers ``minutes: 55`` most of the time).
Costs are exactly those of the reported ``start``/``end``, so cost ÷ hours is the true rate.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import datetime, timezone
from typing import Any

from devstack.simulator.model import (
    HOUR,
    IDLE,
    Allocation,
    cluster_allocations,
    find_cluster,
    idle_allocation,
    load_balancer_cost,
    node_cost,
)
from devstack.simulator.spec import Cluster, Estate

DAY = 86400.0
DEFAULT_RESOLUTION = 300.0
MAX_SETS = 5000  # bounds the work one request can ask for (step=1m over a year...)
AGGREGATES = ("cluster", "node", "namespace", "controllerKind", "controller", "pod", "container")
_FULL_KEY = ("cluster", "node", "namespace", "pod", "container")  # OpenCost's key when not aggregating
_UNALLOCATED = "__unallocated__"
_UNITS = {"m": 60.0, "h": HOUR, "d": DAY, "w": 7 * DAY}


class QueryError(ValueError):
    """A malformed query parameter; the HTTP layer answers 400 with its message."""


def error_body(message: str) -> dict[str, Any]:
    """OpenCost's body of a 400 answer."""
    return {"code": 400, "status": "error", "message": message}


def parse_duration(text: str, what: str) -> float:
    """Seconds in an OpenCost duration such as ``30m``, ``1h``, ``7d``, ``2w``."""
    match = re.fullmatch(r"(\d+)([mhdw])", text.strip())
    if not match or int(match.group(1)) == 0:
        raise QueryError(f"invalid {what} {text!r}: expected a positive duration like 30m, 1h, 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _instant(text: str) -> float:
    if re.fullmatch(r"\d+", text):
        return float(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"invalid time {text!r}: expected RFC3339 or Unix seconds") from None
    if parsed.tzinfo is None:
        raise QueryError(f"invalid time {text!r}: RFC3339 needs a zone, e.g. Z")
    return parsed.timestamp()


def parse_window(text: str, now: float) -> tuple[float, float]:
    """The [start, end) a ``window`` parameter asks for, at time ``now``."""
    text = text.strip()
    midnight = now - now % DAY
    if text == "today":
        return midnight, midnight + DAY
    if text == "yesterday":
        return midnight - DAY, midnight
    if "," in text:
        first, _, second = text.partition(",")
        start, end = _instant(first.strip()), _instant(second.strip())
        if end <= start:
            raise QueryError(f"invalid window {text!r}: end is not after start")
        return start, end
    try:
        return now - parse_duration(text, "window"), now
    except QueryError:
        raise QueryError(
            f"invalid window {text!r}: expected e.g. 1h, 7d, today, yesterday, or a start,end pair") from None


def data_span(start: float, end: float, now: float, resolution: float) -> tuple[float, float]:
    """The complete resolution steps of [start, min(end, now)); empty when end <= start."""
    return math.ceil(start / resolution) * resolution, math.floor(min(end, now) / resolution) * resolution


def parse_aggregate(text: str) -> tuple[str, ...]:
    """The properties of an ``aggregate`` parameter; empty text means no aggregation."""
    if not text.strip():
        return _FULL_KEY
    props = tuple(p.strip() for p in text.split(","))
    for prop in props:
        if prop not in AGGREGATES:
            raise QueryError(f"invalid aggregate {prop!r}: expected one of {', '.join(AGGREGATES)}")
    return props


def _flag(params: dict[str, str], name: str, default: bool) -> bool:
    value = params.get(name, "").strip().lower()
    if not value:
        return default
    if value not in ("true", "false"):
        raise QueryError(f"invalid {name} {params[name]!r}: expected true or false")
    return value == "true"


def _key(properties: dict[str, Any], aggregate: tuple[str, ...]) -> str:
    """OpenCost's name of the aggregate holding an allocation: its property values joined by '/'."""
    parts = []
    for prop in aggregate:
        if prop == "controller":
            value = f"{properties['controllerKind']}:{properties['controller']}" if properties.get("controller") else ""
        else:
            value = properties.get(prop, "")
        parts.append(value or _UNALLOCATED)
    return "/".join(parts)


@functools.lru_cache(maxsize=4096)  # most allocations of a set share their start and end
def rfc3339(ts: float) -> str:
    """RFC3339 UTC time to the second, as OpenCost prints it."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: float) -> float | int | None:
    """OpenCost's number: 5 decimals, integral values without decimals, NaN as null."""
    if value != value:  # NaN
        return None
    return round(value, 5) if value % 1 else int(value)  # the cheap order: this runs a million times per answer


def _efficiency(request: float, usage: float) -> float:
    """Usage ÷ request; 1 when only usage exists (as OpenCost); NaN when neither does."""
    if request > 0:
        return usage / request
    return 1.0 if usage > 0 else math.nan


def _total_efficiency(cpu_eff: float, cpu_cost: float, ram_eff: float, ram_cost: float) -> float:
    """Cost-weighted mean of the CPU and RAM efficiencies (a NaN one weighs nothing); NaN when nothing costs."""
    cost = cpu_cost + ram_cost
    if cost <= 0 or (cpu_eff != cpu_eff and ram_eff != ram_eff):
        return math.nan
    cpu = cpu_eff * cpu_cost if cpu_eff == cpu_eff else 0.0
    ram = ram_eff * ram_cost if ram_eff == ram_eff else 0.0
    return (cpu + ram) / cost


# Every field of an OpenCost allocation, in its order; the simulator has no GPU, adjustment, shared or external cost.
_TEMPLATE: dict[str, Any] = dict.fromkeys((
    "name", "properties", "window", "start", "end", "minutes", "cpuCores", "cpuCoreRequestAverage",
    "cpuCoreUsageAverage", "cpuCoreUsageMax", "cpuCoreHours", "cpuCost", "cpuCostAdjustment", "cpuEfficiency",
    "gpuCount", "gpuHours", "gpuCost", "gpuCostAdjustment", "networkTransferBytes", "networkReceiveBytes",
    "networkCost", "networkCrossZoneCost", "networkCrossRegionCost", "networkInternetCost", "networkCostAdjustment",
    "loadBalancerCost", "loadBalancerCostAdjustment", "pvBytes", "pvByteHours", "pvCost", "pvs", "pvCostAdjustment",
    "ramBytes", "ramByteRequestAverage", "ramByteUsageAverage", "ramByteUsageMax", "ramByteHours", "ramCost",
    "ramCostAdjustment", "ramEfficiency", "externalCost", "sharedCost", "totalCost", "totalEfficiency",
    "proportionalAssetResourceCosts", "lbAllocations", "sharedCostBreakdown"), 0)
_TEMPLATE["lbAllocations"] = None


def _render(name: str, a: Allocation, window: dict[str, str]) -> dict[str, Any]:
    """One allocation in OpenCost's JSON shape (plus Kubecost's usage maxima)."""
    seconds = a.end - a.start
    per_second = 1 / seconds if seconds > 0 else 0.0
    cpu_request, cpu_usage = a.cpu_request_core_seconds * per_second, a.cpu_usage_core_seconds * per_second
    ram_request, ram_usage = a.ram_request_byte_seconds * per_second, a.ram_usage_byte_seconds * per_second
    cpu_eff, ram_eff = _efficiency(cpu_request, cpu_usage), _efficiency(ram_request, ram_usage)
    network = _num(a.network_cost)
    rendered = _TEMPLATE.copy()  # a copy keeps the template's key order; filling it is cheaper than building
    rendered.update({
        "name": name, "properties": a.properties, "window": window,
        "start": rfc3339(a.start), "end": rfc3339(a.end), "minutes": _num(seconds / 60),
        "cpuCores": _num(a.cpu_core_seconds * per_second), "cpuCoreRequestAverage": _num(cpu_request),
        "cpuCoreUsageAverage": _num(cpu_usage), "cpuCoreUsageMax": _num(a.cpu_usage_max),
        "cpuCoreHours": _num(a.cpu_core_seconds / HOUR), "cpuCost": _num(a.cpu_cost), "cpuEfficiency": _num(cpu_eff),
        "networkCost": network, "networkInternetCost": network, "loadBalancerCost": _num(a.load_balancer_cost),
        "pvBytes": _num(a.pv_byte_seconds * per_second), "pvByteHours": _num(a.pv_byte_seconds / HOUR),
        "pvCost": _num(a.pv_cost),
        "pvs": {k: {"byteHours": _num(b / HOUR), "cost": _num(c)} for k, (b, c) in a.pvs.items()} or None,
        "ramBytes": _num(a.ram_byte_seconds * per_second), "ramByteRequestAverage": _num(ram_request),
        "ramByteUsageAverage": _num(ram_usage), "ramByteUsageMax": _num(a.ram_usage_max),
        "ramByteHours": _num(a.ram_byte_seconds / HOUR), "ramCost": _num(a.ram_cost), "ramEfficiency": _num(ram_eff),
        "totalCost": _num(a.total_cost),
        "totalEfficiency": _num(_total_efficiency(cpu_eff, a.cpu_cost, ram_eff, a.ram_cost)),
        "proportionalAssetResourceCosts": {}, "sharedCostBreakdown": {},
    })
    return rendered


def allocation_set(estate: Estate, cluster: Cluster, start: float, end: float, now: float,
                   aggregate: tuple[str, ...], include_idle: bool, resolution: float) -> dict[str, Any]:
    """One allocation set of the window [start, end), keyed by aggregate name."""
    a, b = data_span(start, end, now, resolution)
    if b <= a:
        return {}
    allocations = cluster_allocations(estate, cluster, a, b)
    # Idle first: aggregating merges allocations in place.
    idle = idle_allocation(cluster, a, b, allocations) if include_idle else None
    groups: dict[str, Allocation] = {}
    for allocation in allocations:
        key = _key(allocation.properties, aggregate)
        group = groups.get(key)
        if group is None:
            groups[key] = allocation
        else:
            group.merge(allocation)
    if idle is not None:
        groups[IDLE] = idle
    window = {"start": rfc3339(start), "end": rfc3339(end)}
    return {key: _render(key, group, window) for key, group in groups.items()}


def _windows(params: dict[str, str], now: float) -> list[tuple[float, float]]:
    """The windows of the sets to answer: one, or one per ``step`` when ``accumulate=false``."""
    if not params.get("window", "").strip():
        raise QueryError("missing window parameter")
    start, end = parse_window(params["window"], now)
    accumulate = _flag(params, "accumulate", False)
    if accumulate or not params.get("step", "").strip():
        return [(start, end)]
    step = parse_duration(params["step"], "step")
    if (end - start) / step > MAX_SETS:
        raise QueryError(f"window {params['window']!r} at step {params['step']!r} makes more than {MAX_SETS} sets")
    return [(start + i * step, min(start + (i + 1) * step, end)) for i in range(math.ceil((end - start) / step))]


def allocation_response(estate: Estate, cluster_name: str, query_params: dict[str, str], now: float) -> dict[str, Any]:
    """The body OpenCost's ``GET /allocation`` gives for ``query_params`` at time ``now``; QueryError if malformed."""
    cluster = find_cluster(estate, cluster_name)
    now = math.floor(now)  # OpenCost works to the second
    aggregate = parse_aggregate(query_params.get("aggregate", ""))
    include_idle = _flag(query_params, "includeIdle", False) or _flag(query_params, "idle", False)
    resolution = parse_duration(query_params.get("resolution") or "5m", "resolution")
    sets = [allocation_set(estate, cluster, start, end, now, aggregate, include_idle, resolution)
            for start, end in _windows(query_params, now)]
    return {"code": 200, "status": "success", "data": sets}


def assets_response(estate: Estate, cluster_name: str, query_params: dict[str, str], now: float) -> dict[str, Any]:
    """The body of ``GET /model/assets?window=..&aggregate=type&accumulate=true``: one set of costs per asset type."""
    cluster = find_cluster(estate, cluster_name)
    now = math.floor(now)
    if query_params.get("aggregate", "type") != "type":
        raise QueryError(f"invalid aggregate {query_params['aggregate']!r}: the simulator serves aggregate=type only")
    _flag(query_params, "accumulate", True)  # validated only: assets always come as one accumulated set
    if not query_params.get("window", "").strip():
        raise QueryError("missing window parameter")
    start, end = parse_window(query_params["window"], now)
    a, b = data_span(start, end, now, parse_duration(query_params.get("resolution") or "5m", "resolution"))
    if b <= a:
        return {"code": 200, "status": "success", "data": [{}]}
    window = {"start": rfc3339(start), "end": rfc3339(end)}
    cpu = sum(node_cost(n, a, b)[0] for n in cluster.nodes)
    ram = sum(node_cost(n, a, b)[1] for n in cluster.nodes)
    costs = {
        "ClusterManagement": {"totalCost": cluster.management_cost_per_hour * (b - a) / HOUR},
        "Node": {"cpuCost": cpu, "ramCost": ram, "totalCost": cpu + ram},
        "Disk": {"totalCost": sum(x.pv_cost for x in cluster_allocations(estate, cluster, a, b))},
        "LoadBalancer": {"totalCost": load_balancer_cost(cluster, a, b)},
    }
    assets = {
        kind: {"type": kind, "properties": {"cluster": cluster.name}, "window": window, "start": rfc3339(a),
               "end": rfc3339(b), "minutes": _num((b - a) / 60), **{k: _num(v) for k, v in values.items()}}
        for kind, values in costs.items()
    }
    return {"code": 200, "status": "success", "data": [assets]}
