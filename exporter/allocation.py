"""Parse and validate Kubecost/OpenCost API answers into hourly-rate records.

Pure functions, no I/O. Whatever does not look like a well-formed answer raises
:class:`BadResponse`: a set with one bad entry is refused whole, never half-exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

IDLE = "__idle__"
GIB = 1024**3

# Properties that become labels; the aggregate's own fields (namespace, pod, ...) are
# also recoverable from the key, which is the aggregate's values joined by "/".
LABEL_PROPERTIES = ("namespace", "pod", "container", "node", "controller", "controllerKind")


class BadResponse(ValueError):
    """An answer that is not a valid allocation or assets response."""


class Rates(NamedTuple):
    """Costs of one allocation per hour of the window Kubecost covered."""

    cpu: float
    ram: float
    pv: float
    network: float
    load_balancer: float
    total: float


class Usage(NamedTuple):
    """Requests and usage of one allocation; None where Kubecost has no data (null)."""

    cpu_request: float | None
    cpu_usage_average: float | None
    cpu_usage_max: float | None
    memory_request: float | None
    memory_usage_average: float | None
    memory_usage_max: float | None


class Prices(NamedTuple):
    """What the allocated resources cost per unit (a node's prices, for a node aggregate); None without hours."""

    cpu_per_core_hour: float | None
    ram_per_gib_hour: float | None


@dataclass(frozen=True)
class Allocation:
    """One entry of an accumulated allocation set."""

    name: str
    labels: dict[str, str]
    rates: Rates
    usage: Usage
    prices: Prices

    @property
    def idle(self) -> bool:
        """True for the idle entry (also ``cluster/__idle__`` when Kubecost splits idle)."""
        return IDLE in self.name.split("/")


_RATE_FIELDS = ("cpuCost", "ramCost", "pvCost", "networkCost", "loadBalancerCost", "totalCost")


def parse_allocations(body: object, aggregate: str) -> list[Allocation]:
    """The allocations of an ``accumulate=true`` answer, aggregated by ``aggregate``.

    A rate is the entry's cost over the hours the whole set covers — the longest
    ``minutes`` of its entries — not over the entry's own running time: a pod that ran
    10 of 55 minutes costs 10/55 of its running rate, so that integrating the rates over
    time gives back the cost. Entries that did not run (``minutes`` 0 or null) are left out.
    """
    entries = _accumulated_set(body)
    running = {name: entry for name, entry in entries.items() if _hours(entry, name)}
    if not running:
        return []
    hours = max(_hours(entry, name) or 0.0 for name, entry in running.items())
    allocations = []
    for name, entry in running.items():
        rates = Rates(*(_cost(entry, field, name) / hours for field in _RATE_FIELDS))
        labels = _labels(name, entry, aggregate)
        allocations.append(Allocation(name, labels, rates, _usage(entry, name), _prices(entry, name)))
    return allocations


def parse_management_rate(body: object) -> float | None:
    """The hourly cluster-management cost of an ``aggregate=type`` assets answer, None if it has none."""
    rates = []
    for name, entry in _accumulated_set(body).items():
        if entry.get("type") != "ClusterManagement":
            continue
        hours = _hours(entry, name)
        if hours is not None:
            rates.append(_cost(entry, "totalCost", name) / hours)
    return sum(rates) if rates else None


def _accumulated_set(body: object) -> dict[str, dict[str, Any]]:
    """The one set of an ``accumulate=true`` answer (``data`` may also be empty: no data yet)."""
    if not isinstance(body, dict):
        raise BadResponse(f"answer is a {type(body).__name__}, not an object")
    if body.get("code") != 200:
        raise BadResponse(f"answer has code {body.get('code')!r}: {body.get('message', '')!r}")
    data = body.get("data")
    if not isinstance(data, list) or len(data) > 1:
        raise BadResponse("'data' is not a list of at most one accumulated set")
    entries = data[0] if data else {}
    if not isinstance(entries, dict):
        raise BadResponse("the accumulated set is not an object")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise BadResponse(f"{name!r} is not an object")
    return entries


def _number(entry: dict[str, Any], field: str, name: str) -> float | None:
    """A finite non-negative number, or None for absent/null (OpenCost writes NaN as null)."""
    value = entry.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BadResponse(f"{name!r}: {field}={value!r} is not a finite non-negative number")
    return float(value)


def _cost(entry: dict[str, Any], field: str, name: str) -> float:
    value = _number(entry, field, name)
    if value is None:
        raise BadResponse(f"{name!r}: {field} is missing or null")
    return value


def _hours(entry: dict[str, Any], name: str) -> float | None:
    """Covered time in hours; OpenCost may answer window=1h with 55 minutes, so never the nominal window."""
    minutes = _number(entry, "minutes", name)
    return minutes / 60 if minutes else None


def _usage(entry: dict[str, Any], name: str) -> Usage:
    cpu_average = _number(entry, "cpuCoreUsageAverage", name)
    memory_average = _number(entry, "ramByteUsageAverage", name)
    cpu_max = _number(entry, "cpuCoreUsageMax", name)
    memory_max = _number(entry, "ramByteUsageMax", name)
    return Usage(
        cpu_request=_number(entry, "cpuCoreRequestAverage", name),
        cpu_usage_average=cpu_average,
        # OpenCost has no max fields (only Kubecost does): the average is the best bound left.
        cpu_usage_max=cpu_average if cpu_max is None else cpu_max,
        memory_request=_number(entry, "ramByteRequestAverage", name),
        memory_usage_average=memory_average,
        memory_usage_max=memory_average if memory_max is None else memory_max,
    )


def _prices(entry: dict[str, Any], name: str) -> Prices:
    """Cost ÷ allocated quantity: ``cpuCost / cpuCoreHours`` and ``ramCost / ramByteHours`` per GiB.

    Kubecost prices every allocated core-hour and byte-hour of a node at the node's rate,
    so for ``aggregate=node`` these are the node's prices (its ``node_cpu_hourly_cost`` and
    ``node_ram_hourly_cost``). Absent or zero hours give None: nothing to divide by.
    """
    core_hours = _number(entry, "cpuCoreHours", name)
    byte_hours = _number(entry, "ramByteHours", name)
    return Prices(
        cpu_per_core_hour=_cost(entry, "cpuCost", name) / core_hours if core_hours else None,
        ram_per_gib_hour=_cost(entry, "ramCost", name) / (byte_hours / GIB) if byte_hours else None,
    )


def _labels(name: str, entry: dict[str, Any], aggregate: str) -> dict[str, str]:
    """Label values from ``properties``, falling back to the parts of the ``a/b/c`` key."""
    labels = dict(zip(aggregate.split(","), name.split("/")))
    properties = entry.get("properties")
    if isinstance(properties, dict):
        labels.update(
            (key, value) for key in LABEL_PROPERTIES if isinstance(value := properties.get(key), str) and value
        )
    return labels
