"""Parameters of the expense endpoints, checked before anything reaches a store.

The query string is parsed here (with ``k8scost.query_params``) rather than by FastAPI's
signature binding so that unknown and repeated parameters are refused (FastAPI ignores the
first and keeps the last of the second), and every problem is a ``BadParameter`` (400)
naming the parameter. The same spec documents the parameters in the OpenAPI schema
(``openapi_parameters``) and parses the JSON body of ``expenses_async`` (``items_from_body``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

from k8scost.query_params import BadParameter, QueryParams
from k8scost.settings import DAY, RestApiSettings
from k8scost.stores.expense_queries import BREAKDOWN_COLUMNS, FILTER_COLUMNS
from k8scost.stores.resources import SUMMABLE_TYPES

RESOURCE_TYPE_NAMES = SUMMABLE_TYPES
NAMESPACE = "K8s Namespace"

# Repeatable filters: the accounts, then the ledger's columns.
FILTER_PARAMS = ("cloud_account_id", *FILTER_COLUMNS)
RANGE_PARAMS = ("start_date", "end_date")
SHARE_PARAM = "share_tenancy_costs"
CLEAN_PARAMS = frozenset({*RANGE_PARAMS, *FILTER_PARAMS, "limit", SHARE_PARAM})
FILTERS_PARAMS = frozenset({*RANGE_PARAMS, *FILTER_PARAMS})
BREAKDOWN_PARAMS = frozenset({*RANGE_PARAMS, *FILTER_PARAMS, "breakdown_by", SHARE_PARAM})

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


def openapi_parameters(allowed: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    """``openapi_extra`` documenting the query parameters this module parses; ``optional``:
    those of them with a default on this route (a default range)."""
    parameters = []
    for name in sorted(allowed, key=list(_DOCS).index):
        doc, required, schema = _DOCS[name]
        required = required and name not in optional
        if name in FILTER_PARAMS:
            schema = {"type": "array", "items": schema}
        parameters.append({"name": name, "in": "query", "required": required, "description": doc, "schema": schema})
    return {"parameters": parameters}


def items_from_body(body: Any) -> list[tuple[str, str]]:
    """A JSON object's fields as query items: a list value repeats its parameter."""
    if not isinstance(body, Mapping):
        raise BadParameter("body", "body: must be a JSON object of the clean_expenses parameters")
    items: list[tuple[str, str]] = []
    for name, value in body.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                item = str(item).lower()  # as the query string spells it
            elif not isinstance(item, str | int):
                raise BadParameter(str(name), f"{name}: values must be strings, integers or booleans")
            items.append((str(name), str(item)))
    return items


def items_from_design_body(body: Any) -> list[tuple[str, str]]:
    """The design's (NGUI's) body as query items: the range and extras as fields, the
    filters under ``filter`` (``{"start_date": …, "end_date": …, "filter": {"k8s_namespace": "default"}}``)."""
    if not isinstance(body, Mapping):
        raise BadParameter("body", "body: must be a JSON object: start_date, end_date and a filter object")
    filters = body.get("filter", {})
    if not isinstance(filters, Mapping):
        raise BadParameter("filter", "filter: must be a JSON object of filter → value or list of values")
    unknown = [str(name) for name in filters if name not in FILTER_PARAMS]
    if unknown:
        message = f"filter.{unknown[0][:64]}: not a filter; filters: {', '.join(FILTER_PARAMS)}"
        raise BadParameter(f"filter.{unknown[0]}", message)
    return items_from_body({name: value for name, value in body.items() if name != "filter"}) + items_from_body(filters)


def parse(
    items: Iterable[tuple[str, str]],
    allowed: frozenset[str],
    settings: RestApiSettings,
    read_elsewhere: frozenset[str] = frozenset(),
    default_range: bool = False,
) -> ExpenseRequest:
    """The checked request, or ``BadParameter`` naming the first parameter at fault.

    ``read_elsewhere``: parameters a route's dependency reads (``organization_id`` of the
    design's routes), accepted here once and ignored. ``default_range``: without
    start_date and end_date, the longest range allowed (``max_range_days``) ending now.
    """
    query = QueryParams(items, allowed | read_elsewhere, FILTER_PARAMS)
    filters = {
        name: values
        for name in FILTER_PARAMS
        if (values := query.values(name, RESOURCE_TYPE_NAMES if name == "resource_type" else None))
    }
    now = int(time.time())
    default = (now - settings.max_range_days * DAY, now) if default_range else None
    start, end = query.date_range(settings.max_range_days, default)
    limit = 0
    if "limit" in allowed:
        limit = query.integer("limit", settings.default_limit, 1, settings.max_limit)
    breakdown_by = query.choice("breakdown_by", BREAKDOWN_COLUMNS) if "breakdown_by" in allowed else ""
    share = query.boolean(SHARE_PARAM, False)
    accounts = filters.pop("cloud_account_id", ())
    return ExpenseRequest(start, end, accounts, filters, limit, breakdown_by, share)


def summed_type(request: ExpenseRequest, default: str | None) -> str | None:
    """The one resource type a sum is over: the asked one, else ``default``.

    None (only for a breakdown by resource_type) means every type, each its own key.
    """
    asked = request.filters.get("resource_type", ())
    if len(asked) > 1:
        raise BadParameter(
            "resource_type",
            "resource_type: give one type; costs of several types overlap (pods lie inside namespaces, "
            "namespaces inside clusters) and their sum would count them twice",
        )
    return asked[0] if asked else default
