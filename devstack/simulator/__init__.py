"""Kubecost/OpenCost allocation simulator: serves the allocation API of a declarative estate, with exact ground truth.

It stands in for a customer's Kubecost in tests and demos, and for its cAdvisor,
kube-state-metrics and node-exporter (:mod:`devstack.simulator.usage`); :func:`ground_truth` gives
the exact cost of any cluster, node, namespace or pod over any time range, so the whole
pipeline's accuracy can be checked. Everything is deterministic for a given seed.
"""

from devstack.simulator.allocation import QueryError, allocation_response, assets_response
from devstack.simulator.model import Costs, UsageStats, cluster_management_cost, ground_truth, usage_stats
from devstack.simulator.server import create_app
from devstack.simulator.spec import (
    PV,
    Cluster,
    Container,
    Estate,
    LoadBalancer,
    Namespace,
    Node,
    Pod,
    from_json,
    generate_estate,
    to_json,
    validate,
)

__all__ = [
    "PV",
    "Cluster",
    "Container",
    "Costs",
    "Estate",
    "LoadBalancer",
    "Namespace",
    "Node",
    "Pod",
    "QueryError",
    "UsageStats",
    "allocation_response",
    "assets_response",
    "cluster_management_cost",
    "create_app",
    "from_json",
    "generate_estate",
    "ground_truth",
    "to_json",
    "usage_stats",
    "validate",
]
