"""Parameters of the expense endpoints, checked before anything reaches a store.

The query string is parsed here rather than by FastAPI's signature binding so that unknown
and repeated parameters are refused (FastAPI ignores the first and keeps the last of the
second), and every problem is a 400 whose message names the parameter. The same spec
documents the parameters in the OpenAPI schema (``openapi_parameters``) and parses the
JSON body of ``expenses_async`` (``items_from_body``).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from k8scost.stores.expense_queries import BREAKDOWN_COLUMNS, FILTER_COLUMNS
from k8scost.stores.resources import SUMMABLE_TYPES
from k8scost.settings import DAY, RestApiSettings
from serve_apps.restapi.errors import bad_request

RESOURCE_TYPE_NAMES = SUMMABLE_TYPES
NAMESPACE = "K8s Namespace"
_UNSIGNED = re.compile(r"[0-9]{1,12}")
_MAX_VALUE_LENGTH = 1024
_MAX_VALUES = 1000

# Repeatable filters: the accounts, then the ledger's columns.
FILTER_PARAMS = ("cloud_account_id", *FILTER_COLUMNS)
RANGE_PARAMS = ("start_date", "end_date")
SHARE_PARAM = "share_tenancy_costs"
CLEAN_PARAMS = frozenset({*RANGE_PARAMS, *FILTER_PARAMS, "limit", SHARE_PARAM})
FILTERS_PARAMS = frozenset({*RANGE_PARAMS, *FILTER_PARAMS})
BREAKDOWN_PARAMS = frozenset({*RANGE_PARAMS, *FILTER_PARAMS, "breakdown_by", SHARE_PARAM})
_BOOLEANS = {"true": True, "false": False}

_DOCS: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "start_date": ("Unix seconds; days whose UTC start is in [start_date, end_date) count.", True, {"type": "integer"}),
    "end_date": ("Unix seconds, after start_date.", True, {"type": "integer"}),
    "cloud_account_id": ("Repeatable: only these accounts (of the organization).", False, {"type": "string"}),
    "k8s_cluster": ("Repeatable: only these clusters.", False, {"type": "string"}),
    "k8s_namespace": ("Repeatable: only these namespaces.", False, {"type": "string"}),
    "k8s_node": ("Repeatable: only these nodes.", False, {"type": "string"}),
    "k8s_service": ("Repeatable: only these services.", False, {"type": "string"}),
    "resource_type": (
        "Resource type whose costs are summed (types overlap: pods lie inside namespaces, "
        "namespaces inside clusters).",
        False,
        {"type": "string", "enum": list(RESOURCE_TYPE_NAMES)},
    ),
    "limit": ("Most resources listed, costliest first.", False, {"type": "integer"}),
    "breakdown_by": (
        "Column the daily costs are grouped by.",
        True,
        {"type": "string", "enum": list(BREAKDOWN_COLUMNS)},
    ),
    SHARE_PARAM: (
        "Namespace sums only: share each cluster-day's __management__ and __unallocated__ lines "
        "over its namespaces in proportion to their cost (idle excluded), as Kubecost's "
        "shareTenancyCosts; default false, the lines shown as namespaces of their own.",
        False,
        {"type": "boolean"},
    ),
}


@dataclasses.dataclass(frozen=True)
class ExpenseRequest:
    """A checked request: the range, the filters as given, and the endpoint's extras."""

    start: int
    end: int
    accounts: tuple[str, ...]  # asked account ids; empty means all of the organization's
    filters: dict[str, tuple[str, ...]]  # FILTER_COLUMNS → values, resource_type included
    limit: int = 0
    breakdown_by: str = ""
    share_tenancy: bool = False

    @property
    def first_day(self) -> int:
        """The UTC start of the day holding ``start``: ledger days are whole days."""
        return self.start - self.start % DAY


def openapi_parameters(allowed: Iterable[str]) -> dict[str, Any]:
    """``openapi_extra`` documenting the query parameters this module parses."""
    parameters = []
    for name in sorted(allowed, key=list(_DOCS).index):
        doc, required, schema = _DOCS[name]
        if name in FILTER_PARAMS:
            schema = {"type": "array", "items": schema}
        parameters.append({"name": name, "in": "query", "required": required, "description": doc, "schema": schema})
    return {"parameters": parameters}


def items_from_body(body: Any) -> list[tuple[str, str]]:
    """A JSON object's fields as query items: a list value repeats its parameter."""
    if not isinstance(body, Mapping):
        raise bad_request("body: must be a JSON object of the clean_expenses parameters")
    items: list[tuple[str, str]] = []
    for name, value in body.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                item = str(item).lower()  # as the query string spells it
            elif not isinstance(item, str | int):
                raise bad_request(f"{name}: values must be strings, integers or booleans")
            items.append((str(name), str(item)))
    return items


def split_query(
    items: Iterable[tuple[str, str]], allowed: AbstractSet[str], repeatable: Iterable[str]
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """The single-valued parameters, and the values of each ``repeatable`` one given; 400 for
    an unknown parameter, a single one given twice, or a malformed value."""
    pairs = list(items)
    repeatable = tuple(repeatable)
    counts = Counter(name for name, _ in pairs)
    unknown = sorted(set(counts) - set(allowed))
    if unknown:
        shown = ", ".join(name[:64] for name in unknown)
        raise bad_request(f"unknown query parameter(s): {shown}; allowed: {', '.join(sorted(allowed))}")
    repeated = sorted(name for name, count in counts.items() if count > 1 and name not in repeatable)
    if repeated:
        raise bad_request(f"query parameter(s) given more than once: {', '.join(repeated)}")
    single = {name: value for name, value in pairs if name not in repeatable}
    multi: dict[str, tuple[str, ...]] = {}
    for name in repeatable:
        values = tuple(dict.fromkeys(value for key, value in pairs if key == name))  # deduplicated, in order
        _check_values(name, values)
        if values:
            multi[name] = values
    return single, multi


def parse(items: Iterable[tuple[str, str]], allowed: frozenset[str], settings: RestApiSettings) -> ExpenseRequest:
    """The checked request, or ``ApiError`` 400 naming the first parameter at fault."""
    single, multi = split_query(items, allowed, FILTER_PARAMS)

    start, end = _timestamp(single, "start_date"), _timestamp(single, "end_date")
    if start >= end:
        raise bad_request(f"start_date ({start}) must be before end_date ({end})")
    if end - start > settings.max_range_days * DAY:
        raise bad_request(
            f"end_date - start_date: {end - start} s is longer than the maximum of {settings.max_range_days} days"
        )
    limit = 0
    if "limit" in allowed:
        limit = _integer(single, "limit", settings.default_limit, 1, settings.max_limit)
    breakdown_by = ""
    if "breakdown_by" in allowed:
        breakdown_by = single.get("breakdown_by", "")
        if breakdown_by not in BREAKDOWN_COLUMNS:
            raise bad_request(f"breakdown_by: {breakdown_by[:64]!r} is not one of {', '.join(BREAKDOWN_COLUMNS)}")
    share = single.get(SHARE_PARAM, "false")
    if share not in _BOOLEANS:
        raise bad_request(f"{SHARE_PARAM}: {share[:64]!r} is not true or false")
    accounts = multi.pop("cloud_account_id", ())
    return ExpenseRequest(start, end, accounts, multi, limit, breakdown_by, _BOOLEANS[share])


def _check_values(name: str, values: tuple[str, ...]) -> None:
    if len(values) > _MAX_VALUES:
        raise bad_request(f"{name}: more than {_MAX_VALUES} values")
    for value in values:
        if not value or len(value) > _MAX_VALUE_LENGTH:
            raise bad_request(f"{name}: values must be 1 to {_MAX_VALUE_LENGTH} characters")
    if name == "resource_type":
        wrong = [value for value in values if value not in RESOURCE_TYPE_NAMES]
        if wrong:
            raise bad_request(f"resource_type: {wrong[0][:64]!r} is not one of {', '.join(RESOURCE_TYPE_NAMES)}")


def _timestamp(values: dict[str, str], name: str) -> int:
    raw = values.get(name)
    if not raw:
        raise bad_request(f"{name}: missing")
    if not _UNSIGNED.fullmatch(raw):
        raise bad_request(f"{name}: {raw[:64]!r} is not a Unix timestamp in whole seconds")
    return int(raw)


def _integer(values: dict[str, str], name: str, default: int, lowest: int, highest: int) -> int:
    raw = values.get(name)
    if raw is None:
        return default
    if not _UNSIGNED.fullmatch(raw) or not lowest <= int(raw) <= highest:
        raise bad_request(f"{name}: {raw[:64]!r} is not an integer from {lowest} to {highest}")
    return int(raw)


def summed_type(request: ExpenseRequest, default: str | None) -> str | None:
    """The one resource type a sum is over: the asked one, else ``default``.

    None (only for a breakdown by resource_type) means every type, each its own key.
    """
    asked = request.filters.get("resource_type", ())
    if len(asked) > 1:
        raise bad_request(
            "resource_type: give one type; costs of several types overlap (pods lie inside namespaces, "
            "namespaces inside clusters) and their sum would count them twice"
        )
    return asked[0] if asked else default
