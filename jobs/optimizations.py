"""Optimizations: each module's recommendations per tenant, as Ray tasks, for ``GET …/optimizations``.

    ray job submit --working-dir . -- python -m jobs.optimizations \\
        [--module k8s_rightsizing|k8s_cluster_rightsizing|k8s_spot_instances|k8s_cost_anomalies ...] \\
        [--organization-id ID | --cloud-account-id ID ...] [--end UNIX_SECONDS] [--interval-hours 24] \\
        [--min-history-days 7] [--profile production] [--spot-discount 0.6] [--node-type-discount TYPE=D ...] \\
        [--anomaly-days 7]

Without ``--module``, every module; without an account or organization, every live
Kubernetes account. Each tenant is one Ray task, all in parallel; a task reads the tenant's
inputs once and runs the asked modules on them, recording each module's run in MongoDB
(``k8scost.stores.optimizations``: started, progress per cluster, completed or failed) and,
once it completes, replacing the module's items of the tenant. The job log shows each
tenant's items and savings per module, and ``optimizations: 3/10 tenants (30 %)``.
Exit status: 0 every tenant done, 1 some failed or MongoDB or Ray unreachable (run again:
a run replaces, never adds), 2 bad arguments.

Inputs (``read_estate``):

- the ledger (ClickHouse): each cluster's daily cost (``K8s Cluster``: its history, and the
  anomaly series), its namespaces' and their pods' daily costs, and the pods with cost on
  the last complete day (the running ones, with their node and controller);
- MongoDB: the pods' controller kinds (``cloud_resource``), the rightsizing job's results
  (``k8s_rightsizing``: each container's current and recommended requests);
- the TSDB: each node's prices (the exporter's node price gauges, their last values over the
  day before the end), and the kube-state-metrics families of ``k8scost.usage_series`` the
  customer forwards (their last values from the last complete day's start to the end,
  ``promql.estate_queries``): each node's instance type (``kube_node_labels``) and allocatable
  CPU and memory (``kube_node_status_allocatable``), each pod's persistent volume claims and
  whether a claim's volume is local (``local_path`` or ``host_path``), and its
  cluster-autoscaler safe-to-evict annotation (``kube_pod_annotations``).

A cluster's current nodes are those with a price or a running pod; each becomes a
``NodeType`` (its instance type, allocatable, prices) or is named with what it lacks. A pod
is bound to its node (``Pod.local_storage``: cluster sizing keeps its node, spot says
``local-volume``) when a claim of it is bound to a local or hostPath volume or it is
annotated safe-to-evict ``"false"`` (cluster-autoscaler's rule; ``k8scost.usage_series``
says why emptyDir volumes are not seen), and holds a persistent volume when it has a claim.
A usage series without a ``cluster`` label (the shipped configuration adds none: an account
is one cluster) speaks for a node or pod of that name in any cluster of the account that has
no series of its own labelled with the cluster. The nodes' capacity type (spot or on demand)
is not read: a ready workload already on spot nodes is offered the discount again, on the
prices its nodes have.

What a customer does not send is never invented: a node without type, allocatable or price,
or a cluster whose running pods lack ``kube_pod_annotations`` series (kube-state-metrics
without the annotation allow-list, or a ``remote_write`` configured before these families),
makes the module's item say ``insufficient data: <what>`` and save 0.
A cluster with fewer than ``--min-history-days`` days in the ledger (anomalies: the
``7 × weeks`` days their baseline needs before the first day looked at) gets one item per
module saying ``insufficient history: N days``, never a recommendation.

Modules and their items (each item's ``saving`` is USD per month; ``fields`` its evidence):

- ``k8s_rightsizing``: the rightsizing job's over-provisioned groups, saving its
  ``monthly_savings``; resource: the group's namespace.
- ``k8s_cluster_rightsizing``: per cluster, the cheapest plan at ``--profile``
  (``k8scost.cluster_sizing``), saving its ``monthly_saving`` when positive; every profile's
  plan as evidence; resource: the cluster.
- ``k8s_spot_instances``: per workload ready for spot (``k8scost.spot_readiness``), saving
  its ``monthly_saving`` at the discounts given; resource: the namespace.
- ``k8s_cost_anomalies``: per anomaly of a cluster or namespace over the last
  ``--anomaly-days`` days (``k8scost.anomalies``), with the namespaces or pods that explain
  it. Saving 0: an anomaly is money already spent, not a monthly saving a change would
  bring, so adding it to ``total_saving`` would mix the two; its ``excess_cost`` (Σ of the
  departures from the baseline over its days, negative for a drop) is evidence.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ray
from ray.util import metrics

from jobs.tenant_runs import each_tenant, run_job
from k8scost import promql, raylocal
from k8scost.anomalies import Detection
from k8scost.anomalies import Params as AnomalyParams
from k8scost.anomalies import detect, explain
from k8scost.cluster_sizing import PROFILES, Container, Node, NodeType, Pod, size_all
from k8scost.forecast import insufficient_history
from k8scost.rightsizing import Status
from k8scost.settings import DAY, StoreSettings, from_env
from k8scost.spot_readiness import DEFAULT_SPOT_DISCOUNT, Rule, SpotParams, assess
from k8scost.stores.accounts import Account
from k8scost.stores.clickhouse import ExpenseStore
from k8scost.stores.expense_queries import ExpenseQueries, Scope
from k8scost.stores.mongo import connect
from k8scost.stores.optimizations import Module, OptimizationStore, item
from k8scost.stores.resources import RESOURCE_TYPES, Kind, Resource, ResourceStore
from k8scost.stores.rightsizing import RightsizingStore
from k8scost.tsdb import TsdbClient
from k8scost.usage_series import INSTANCE_TYPE_LABEL, KSM_ALLOWLISTS, SAFE_TO_EVICT_LABEL

log = logging.getLogger("jobs.optimizations")

CLUSTER, NAMESPACE, POD = (RESOURCE_TYPES[k] for k in (Kind.CLUSTER, Kind.NAMESPACE, Kind.POD))
MISSING_CAPACITY = ("insufficient data: node types and allocatable CPU and memory (kube-state-metrics' kube_node_labels "
                    "with label_node_kubernetes_io_instance_type, which needs "
                    f"{KSM_ALLOWLISTS[0]}, and kube_node_status_allocatable) or node prices")
MISSING_VOLUMES = ("insufficient data: pod volumes (kube-state-metrics' kube_pod_annotations, which needs "
                   f"{KSM_ALLOWLISTS[1]}, and its persistent volume families, for every running pod)")
MAX_PODS = 50_000  # running pods read per cluster (the ledger's page limit)

LAST_SUCCESS = metrics.Gauge(
    "cloudtuner_optimizations_last_success_timestamp_seconds",
    description="When a module's items of the tenant were last written.",
    tag_keys=("tenant", "module"),
)
FAILURES = metrics.Counter(
    "cloudtuner_optimizations_failures", description="Tenants whose optimizations run failed (after Ray's retries)."
)


@dataclasses.dataclass(frozen=True)
class Options:
    """What a run computes with; checked by ``parse_args``."""

    modules: tuple[Module, ...] = tuple(Module)
    interval_hours: float = 24.0  # the RayCronJob's period: next_run = this run's start + it
    min_history_days: int = 7  # the rightsizing window: less ledger history than that is too little
    profile: str = "production"
    spot: SpotParams = SpotParams()
    anomaly_days: int = 7
    anomalies: AnomalyParams = AnomalyParams()

    def document(self, module: Module) -> dict[str, Any]:
        """The options a module's run is shown with (``options`` of the answer)."""
        common = {"min_history_days": self.min_history_days}
        if module is Module.CLUSTER_RIGHTSIZING:
            return {**common, "profile": self.profile}
        if module is Module.SPOT_INSTANCES:
            return {**common, "spot_discount": self.spot.default_discount, "node_type_discounts": dict(self.spot.discounts)}
        if module is Module.COST_ANOMALIES:
            return {"days": self.anomaly_days, **dataclasses.asdict(self.anomalies)}
        return common


# --- inputs ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterEstate:
    """One cluster's inputs, as far as they exist.

    ``pods``: the running pods (each container's demand from the rightsizing job, its volume
    flags; pods it has no result for are in ``unsized``, not here); ``prices``: node → (USD
    per core-hour, per GiB-hour); ``node_types``: node → its type with allocatable capacity
    and prices, for the current nodes that have all three (None: none read);
    ``untyped``: the current nodes without, each as ``"<node> (<what it lacks>)"``;
    ``volumes_known``: whether every running pod's volume flags were read (False: some were
    not, and ``Pod``'s False flags mean nothing).
    """

    cluster: str
    history_days: int
    pods: tuple[Pod, ...] = ()
    unsized: tuple[str, ...] = ()
    prices: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    node_types: Mapping[str, NodeType] | None = None
    volumes_known: bool = False
    untyped: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TenantEstate:
    account: Account
    last_day: int  # the last complete UTC day
    clusters: tuple[ClusterEstate, ...]
    rightsizing: tuple[dict[str, Any], ...]  # the rightsizing job's documents
    # Anomaly series: cluster → daily cost; (cluster, namespace) → daily cost.
    cluster_costs: Mapping[str, Mapping[int, float]]
    namespace_costs: Mapping[tuple[str, str], Mapping[int, float]]


def _history(costs: Mapping[int, float], last_day: int) -> int:
    first = min((day for day in costs if 0 < day <= last_day), default=None)
    return 0 if first is None else (last_day - first) // DAY + 1


def _demand(docs: Iterable[dict[str, Any]]) -> dict[tuple[str, ...], list[Container]]:
    """Containers by workload (cluster, namespace, controller kind, controller) or bare pod
    (cluster, namespace, "", "", pod), from the rightsizing job's documents."""
    found: dict[tuple[str, ...], list[Container]] = {}
    for doc in docs:
        key = (doc["cluster"], doc["namespace"], doc["controller_kind"] or "", doc["controller"] or "",
               "" if doc["controller"] else doc["pod"] or "")
        found.setdefault(key, []).append(Container(
            doc["container"], doc["current_cpu_cores"] or 0.0, doc["current_memory_bytes"] or 0.0,
            doc["recommended_cpu_cores"], doc["recommended_memory_bytes"],
        ))
    return found


async def node_prices(tsdb: TsdbClient, tenant_id: str, end: int) -> dict[tuple[str, str], list[float | None]]:
    """(cluster, node) → [USD per core-hour, per GiB-hour], their last values over the day before ``end``."""
    prices: dict[tuple[str, str], list[float | None]] = {}
    for index, metric in enumerate(promql.NODE_PRICE_METRICS.values()):
        query = f"max by (cluster, node) (last_over_time({promql.rightsizing_selector(metric, tenant_id)}"\
                f"[{promql.window(DAY)}]))"
        for series in (await tsdb.instant(query, end))["result"]:
            value = float(series["value"][1])
            if math.isfinite(value):
                key = (series["metric"].get("cluster", ""), series["metric"].get("node", ""))
                prices.setdefault(key, [None, None])[index] = value
    return prices


@dataclasses.dataclass(frozen=True)
class KubeFacts:
    """What kube-state-metrics said of a tenant's nodes and pods (``estate_facts``), keyed by
    the series' ``cluster`` label ("" when it has none) first."""

    instance_types: Mapping[tuple[str, str], str]  # (cluster, node) → type; a node seen with two has none
    allocatable: Mapping[tuple[str, str], tuple[float | None, float | None]]  # (cluster, node) → (cores, bytes)
    # (cluster, namespace, pod) → (bound to its node, holds a persistent volume), for each pod
    # with a kube_pod_annotations series: the pods whose volumes were read.
    volumes: Mapping[tuple[str, str, str], tuple[bool, bool]]

    def _lookup(self, mapping: Mapping[tuple[str, ...], Any], cluster: str, *key: str) -> Any:
        found = mapping.get((cluster, *key))
        return mapping.get(("", *key)) if found is None else found

    def node_type(self, cluster: str, node: str, prices: tuple[float, float] | None) -> NodeType | str:
        """The node's type, or what it lacks."""
        name = self._lookup(self.instance_types, cluster, node)
        cpu, memory = self._lookup(self.allocatable, cluster, node) or (None, None)
        lacking = [what for what, value in (("no instance type", name), ("no allocatable CPU", cpu),
                                            ("no allocatable memory", memory), ("no price", prices)) if value is None]
        if lacking:
            return f"{node} ({', '.join(lacking)})"
        assert name is not None and cpu is not None and memory is not None and prices is not None
        return NodeType(name, cpu, memory, *prices)

    def pod_volumes(self, cluster: str, namespace: str, pod: str) -> tuple[bool, bool] | None:
        """(bound to its node, holds a persistent volume), or None when not read."""
        return self._lookup(self.volumes, cluster, namespace, pod)


def estate_facts(answers: Mapping[str, Sequence[Mapping[str, Any]]]) -> KubeFacts:
    """``KubeFacts`` from the answers (``result`` lists) of ``promql.estate_queries``.

    A pod is bound to its node when it is annotated safe-to-evict ``"false"`` or one of its
    claims is bound to a volume with a ``local_path`` or ``host_path``; it holds a persistent
    volume when it has a claim. An unbound claim (no volume yet) is a persistent volume, not
    a local one.
    """
    def labels(name: str) -> Iterable[tuple[Mapping[str, str], float]]:
        for series in answers.get(name, ()):
            value = float(series["value"][1])
            if math.isfinite(value):
                yield series["metric"], value

    types: dict[tuple[str, str], set[str]] = {}
    for m, _ in labels("instance_type"):
        if m.get(INSTANCE_TYPE_LABEL):
            types.setdefault((m.get("cluster", ""), m.get("node", "")), set()).add(m[INSTANCE_TYPE_LABEL])
    allocatable: dict[tuple[str, str], list[float | None]] = {}
    for index, name in enumerate(("cpu_cores", "memory_bytes")):
        for m, value in labels(name):
            allocatable.setdefault((m.get("cluster", ""), m.get("node", "")), [None, None])[index] = value
    local = {(m.get("cluster", ""), m.get("persistentvolume", "")) for m, _ in labels("local_volumes")
             if m.get("local_path") or m.get("host_path")}
    bound_to = {(m.get("cluster", ""), m.get("namespace", ""), m.get("persistentvolumeclaim", "")): m.get("volumename", "")
                for m, _ in labels("volumes")}
    claims: dict[tuple[str, str, str], list[str]] = {}
    for m, _ in labels("claims"):
        key = (m.get("cluster", ""), m.get("namespace", ""), m.get("pod", ""))
        claims.setdefault(key, []).append(m.get("persistentvolumeclaim", ""))
    volumes: dict[tuple[str, str, str], tuple[bool, bool]] = {}
    for m, _ in labels("pods"):
        key = (m.get("cluster", ""), m.get("namespace", ""), m.get("pod", ""))
        cluster, namespace = key[:2]
        local_claim = any((cluster, bound_to.get((cluster, namespace, c), "")) in local for c in claims.get(key, ()))
        pinned = m.get(SAFE_TO_EVICT_LABEL) == "false" or local_claim
        was = volumes.get(key, (False, False))  # a pod whose annotation changed: either series may pin it
        volumes[key] = (was[0] or pinned, bool(claims.get(key)))
    return KubeFacts({key: next(iter(found)) for key, found in types.items() if len(found) == 1},
                     {key: (cpu, memory) for key, (cpu, memory) in allocatable.items()}, volumes)


async def kube_facts(tsdb: TsdbClient, tenant_id: str, start: int, end: int) -> KubeFacts:
    """What kube-state-metrics said over (start, end], at ``end``."""
    queries = promql.estate_queries(tenant_id, end - start)
    answers = await asyncio.gather(*(tsdb.instant(query, end) for query in queries.values()))
    return estate_facts({name: answer["result"] for name, answer in zip(queries, answers)})


async def read_estate(
    account: Account, end: int, options: Options, expenses: ExpenseQueries, resources: ResourceStore,
    rightsizing: RightsizingStore, tsdb: TsdbClient,
) -> TenantEstate:
    """The tenant's inputs for the days up to the last complete one before ``end``."""
    last_day = end // DAY * DAY - DAY
    lookback = max(options.min_history_days, 7 * options.anomalies.weeks + options.anomaly_days)
    start = last_day - (lookback - 1) * DAY
    ids = (account.id,)
    clusters = (await expenses.daily(Scope(ids, start, last_day + DAY, {"resource_type": (CLUSTER,)}),
                                     "k8s_cluster")).per_key()
    namespace_costs: dict[tuple[str, str], Mapping[int, float]] = {}
    for cluster in clusters:
        scope = Scope(ids, start, last_day + DAY, {"resource_type": (NAMESPACE,), "k8s_cluster": (cluster,)})
        for namespace, costs in (await expenses.daily(scope, "k8s_namespace")).per_key().items():
            namespace_costs[cluster, namespace] = costs
    found, _ = await rightsizing.find(ids, {}, limit=MAX_PODS)
    demand = _demand(found)
    kinds = {doc["_id"]: (doc.get("meta") or {}).get("controller_kind", "")
             for doc in await resources.find(account.id, resource_type=POD)}
    prices = await node_prices(tsdb, account.id, end)
    facts = await kube_facts(tsdb, account.id, last_day, end)
    estates = []
    for cluster, costs in sorted(clusters.items()):
        scope = Scope(ids, last_day, last_day + DAY, {"resource_type": (POD,), "k8s_cluster": (cluster,)})
        running = (await expenses.resource_page(scope, MAX_PODS)).resources
        pods, unsized, volumes_known = [], [], True
        for r in running:
            kind, controller = kinds.get(r.resource_id, ""), r.k8s_service or ""
            namespace = r.k8s_namespace or ""
            key = (cluster, namespace, kind, controller, "" if controller else r.resource_name)
            containers = demand.get(key)
            if containers is None:
                unsized.append(f"{namespace}/{r.resource_name}")
                continue
            flags = facts.pod_volumes(cluster, namespace, r.resource_name)
            volumes_known = volumes_known and flags is not None
            pods.append(Pod(namespace, r.resource_name, r.k8s_node or "", kind, controller, tuple(containers),
                            *(flags or (False, False))))
        priced = {node: (cpu, ram) for (c, node), (cpu, ram) in prices.items() if c == cluster and None not in (cpu, ram)}
        node_types, untyped = {}, []
        for node in sorted({*priced, *(r.k8s_node for r in running if r.k8s_node)}):
            typed = facts.node_type(cluster, node, priced.get(node))
            if isinstance(typed, NodeType):
                node_types[node] = typed
            else:
                untyped.append(typed)
        estates.append(ClusterEstate(
            cluster, _history(costs, last_day), tuple(pods), tuple(unsized), priced, node_types or None,
            volumes_known, tuple(untyped),
        ))
    return TenantEstate(account, last_day, tuple(estates), tuple(found), clusters, namespace_costs)


# --- the modules: items from an estate ---------------------------------------------------------


def _resource(account: Account, resource: Resource) -> dict[str, str]:
    return {"resource_id": resource.id(account.id), "cloud_resource_id": resource.cloud_resource_id(),
            "resource_name": resource.name}


def _short_history(module: Module, account: Account, estate: ClusterEstate, needed: int) -> dict[str, Any] | None:
    """The cluster's one item saying its history is too short, or None when it is long enough."""
    if estate.history_days >= needed:
        return None
    return item(module, account.id, account.organization_id, ("history", estate.cluster),
                **_resource(account, Resource(Kind.CLUSTER, estate.cluster, None, estate.cluster)), saving=0.0,
                fields={"k8s_cluster": estate.cluster, "insufficient": insufficient_history(estate.history_days),
                        "history_days": estate.history_days, "needed_days": needed})


def rightsizing_items(tenant: TenantEstate, options: Options) -> tuple[list[dict[str, Any]], list[str]]:
    """``k8s_rightsizing``: the rightsizing job's over-provisioned groups."""
    account = tenant.account
    if not tenant.rightsizing:
        return [], ["insufficient data: the rightsizing job (python -m jobs.rightsizing) has no result for this account"]
    history = {c.cluster: c for c in tenant.clusters}
    items, short = [], {}
    for doc in tenant.rightsizing:
        if doc["status"] != str(Status.OVER):
            continue
        # A cluster without ledger days (gone, or not costed yet) has no history at all.
        cluster = history.get(doc["cluster"], ClusterEstate(doc["cluster"], 0))
        if cluster.history_days < options.min_history_days:
            short[cluster.cluster] = cluster
            continue
        namespace = Resource(Kind.NAMESPACE, doc["cluster"], doc["namespace"], doc["namespace"])
        fields = {k: doc[k] for k in (
            "cluster", "namespace", "controller_kind", "controller", "pod", "container", "replicas",
            "current_cpu_cores", "recommended_cpu_cores", "cpu_efficiency", "cpu_monthly_savings",
            "current_memory_bytes", "recommended_memory_bytes", "memory_efficiency", "memory_monthly_savings",
            "total_efficiency")}
        items.append(item(Module.RIGHTSIZING, account.id, account.organization_id, (doc["_id"],),
                          **{**_resource(account, namespace),
                             "resource_name": f"{doc['controller'] or doc['pod']}/{doc['container']}"},
                          saving=doc["monthly_savings"], fields={**fields, "evidence": doc["run"]}))
    for estate in short.values():
        items.append(_short_history(Module.RIGHTSIZING, account, estate, options.min_history_days))
    return items, []


def _plan(plan: Any) -> dict[str, Any]:
    return {
        "profile": plan.profile.name, "target_utilization": plan.profile.target_utilization,
        "min_nodes": plan.profile.min_nodes, "monthly_cost": plan.monthly_cost,
        "current_monthly_cost": plan.current_monthly_cost, "monthly_saving": plan.monthly_saving,
        # A list, not the type → count map: FerretDB refuses keys with a ".", which instance types have.
        "node_counts": [{"node_type": t, "count": n} for t, n in sorted(plan.node_counts.items())], "kept_nodes": sorted(n.kept for n in plan.nodes if n.kept),
        "unplaceable": list(plan.unplaceable), "daemonset_cpu_cores": plan.daemonset_cpu,
        "daemonset_memory_bytes": plan.daemonset_memory,
    }


def cluster_sizing_items(tenant: TenantEstate, options: Options) -> list[dict[str, Any]]:
    """``k8s_cluster_rightsizing``: one item per cluster whose plan at the profile saves."""
    account, items = tenant.account, []
    for estate in tenant.clusters:
        short = _short_history(Module.CLUSTER_RIGHTSIZING, account, estate, options.min_history_days)
        cluster = Resource(Kind.CLUSTER, estate.cluster, None, estate.cluster)
        missing = _missing_sizing(estate)
        if short is not None or missing:
            items.append(short or item(
                Module.CLUSTER_RIGHTSIZING, account.id, account.organization_id, ("cluster", estate.cluster),
                **_resource(account, cluster), saving=0.0,
                fields={"k8s_cluster": estate.cluster, "insufficient": "; ".join(missing)}))
            continue
        assert estate.node_types is not None
        nodes = [Node(name, t) for name, t in sorted(estate.node_types.items())]
        plans = {p.profile.name: p for p in size_all(estate.pods, nodes)}
        chosen = plans[options.profile]
        if not chosen.monthly_saving or chosen.monthly_saving <= 0:
            continue  # already as cheap as the profile allows: nothing to recommend
        items.append(item(Module.CLUSTER_RIGHTSIZING, account.id, account.organization_id, ("cluster", estate.cluster),
                          **_resource(account, cluster), saving=chosen.monthly_saving,
                          fields={"k8s_cluster": estate.cluster, "profile": options.profile,
                                  "current_nodes": len(nodes), "planned_nodes": len(chosen.nodes),
                                  "evidence": {"plans": [_plan(p) for p in plans.values()],
                                               "pods": len(estate.pods)}}))
    return items


def _missing_sizing(estate: ClusterEstate) -> list[str]:
    missing = []
    if estate.node_types is None or estate.untyped:
        some = f" of {len(estate.untyped)} nodes, e.g. {estate.untyped[0]}" if estate.untyped else ""
        missing.append(MISSING_CAPACITY + some)
    if not estate.volumes_known:
        missing.append(MISSING_VOLUMES)
    if estate.unsized:
        missing.append(f"insufficient data: requests of {len(estate.unsized)} running pods (the rightsizing job "
                       f"has no result for them, e.g. {estate.unsized[0]})")
    return missing


def spot_items(tenant: TenantEstate, options: Options) -> list[dict[str, Any]]:
    """``k8s_spot_instances``: the workloads ready for spot, or that would be but for missing data."""
    account, items = tenant.account, []
    for estate in tenant.clusters:
        short = _short_history(Module.SPOT_INSTANCES, account, estate, options.min_history_days)
        if short is not None:
            items.append(short)
            continue
        priced = {*estate.prices, *(estate.node_types or ())}  # a node's type carries its prices too
        nodes = [Node(name, estate.node_types[name] if estate.node_types and name in estate.node_types else
                      NodeType("", 0.0, 0.0, *estate.prices.get(name, (0.0, 0.0))))
                 for name in sorted({p.node for p in estate.pods})]
        for verdict in assess(estate.pods, nodes, options.spot):
            # Rules the missing volume flags cannot change decide a not-ready verdict anyway.
            if verdict.rule is not Rule.READY:
                continue
            k = verdict.key
            pods = [p for p in estate.pods if (p.namespace, p.controller) == (k.namespace, k.controller)
                    and p.controller_kind.lower() == k.controller_kind]
            missing = [] if estate.volumes_known else [MISSING_VOLUMES]
            unpriced = sorted({p.node for p in pods} - priced)
            if unpriced:
                missing.append(f"insufficient data: prices of nodes {', '.join(unpriced)} (no node price gauge)")
            namespace = Resource(Kind.NAMESPACE, estate.cluster, k.namespace, k.namespace)
            items.append(item(
                Module.SPOT_INSTANCES, account.id, account.organization_id,
                (estate.cluster, k.namespace, k.controller_kind, k.controller),
                **{**_resource(account, namespace), "resource_name": f"{k.controller_kind}/{k.controller}"},
                saving=0.0 if missing else verdict.monthly_saving,
                fields={"k8s_cluster": estate.cluster, "k8s_namespace": k.namespace,
                        "controller_kind": k.controller_kind, "controller": k.controller,
                        "replicas": verdict.replicas, "rule": str(verdict.rule),
                        "monthly_cost": None if missing else verdict.monthly_cost,
                        "nodes": sorted({p.node for p in pods}),
                        **({"insufficient": "; ".join(missing)} if missing else {})}))
    return items


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def anomaly_items(tenant: TenantEstate, options: Options, pod_costs: Mapping[tuple[str, str], Mapping[str, Mapping[int, float]]]) -> list[dict[str, Any]]:
    """``k8s_cost_anomalies``: the anomalies of the last ``anomaly_days`` days, per cluster and namespace.

    ``pod_costs``: (cluster, namespace) → pod → daily cost, for the namespaces with an anomaly
    (``anomalous_namespaces`` names them, so only those are read).
    """
    account, params, items = tenant.account, options.anomalies, []
    first = tenant.last_day - (options.anomaly_days - 1) * DAY

    def add(kind: Kind, cluster: str, namespace: str | None, detection: Detection,
            parts: Mapping[str, Mapping[int, float]]) -> None:
        name = namespace if namespace is not None else cluster
        resource = Resource(kind, cluster, namespace, name)
        where = {"k8s_cluster": cluster, "k8s_namespace": namespace}
        for anomaly in detection.anomalies:
            peak = anomaly.peak
            items.append(item(
                Module.COST_ANOMALIES, account.id, account.organization_id,
                (str(kind), cluster, namespace or "", str(anomaly.start)), **_resource(account, resource), saving=0.0,
                fields={**where, "direction": str(anomaly.direction), "start": anomaly.start, "end": anomaly.end,
                        "days": len(anomaly.days), "excess_cost": anomaly.delta,
                        "evidence": {"peak_day": peak.day, "cost": peak.cost, "baseline": peak.baseline,
                                     "score": _finite(peak.score), "relative_change": _finite(peak.relative_change),
                                     "explained_by": [dataclasses.asdict(c) for c in explain(anomaly, parts, params)]}}))

    for cluster, costs in sorted(tenant.cluster_costs.items()):
        detection = detect(costs, first, tenant.last_day, params)
        if detection.insufficient:
            resource = Resource(Kind.CLUSTER, cluster, None, cluster)
            items.append(item(Module.COST_ANOMALIES, account.id, account.organization_id, ("history", cluster),
                              **_resource(account, resource), saving=0.0,
                              fields={"k8s_cluster": cluster, "insufficient": detection.insufficient,
                                      "history_days": detection.history_days, "needed_days": 7 * params.weeks + 1}))
            continue
        namespaces = {ns: c for (cl, ns), c in tenant.namespace_costs.items() if cl == cluster}
        add(Kind.CLUSTER, cluster, None, detection, namespaces)
        for namespace, ns_costs in sorted(namespaces.items()):
            found = detect(ns_costs, first, tenant.last_day, params)
            if found.anomalies:
                add(Kind.NAMESPACE, cluster, namespace, found, pod_costs.get((cluster, namespace), {}))
    return items


def anomalous_namespaces(tenant: TenantEstate, options: Options) -> list[tuple[str, str]]:
    """The (cluster, namespace) pairs with an anomaly in the days looked at: their pods are read."""
    first = tenant.last_day - (options.anomaly_days - 1) * DAY
    return [key for key, costs in sorted(tenant.namespace_costs.items())
            if detect(costs, first, tenant.last_day, options.anomalies).anomalies]


# --- one tenant --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TenantReport:
    account_id: str
    items: dict[str, int]  # module → items
    savings: dict[str, float]  # module → Σ item savings
    seconds: float


async def optimize_tenant(
    account: Account, end: int, options: Options, store: OptimizationStore, expenses: ExpenseQueries,
    resources: ResourceStore, rightsizing: RightsizingStore, tsdb: TsdbClient,
) -> TenantReport:
    """Every asked module over one tenant, recorded in ``store``."""
    started = time.perf_counter()
    now = int(time.time())
    await store.ensure_indexes()
    for module in options.modules:
        await store.start_run(module, account.id, account.organization_id, now,
                              now + int(options.interval_hours * 3600), options.document(module))
    counts, savings = {}, {}
    try:
        tenant = await read_estate(account, end, options, expenses, resources, rightsizing, tsdb)
        for module in options.modules:
            notes: list[str] = []
            total = len(tenant.clusters)
            if module is Module.RIGHTSIZING:
                items, notes = rightsizing_items(tenant, options)
            elif module is Module.CLUSTER_RIGHTSIZING:
                items = cluster_sizing_items(tenant, options)
            elif module is Module.SPOT_INSTANCES:
                items = spot_items(tenant, options)
            else:
                pod_costs = {}
                pairs = anomalous_namespaces(tenant, options)
                # From the baseline's start of the earliest day looked at: any of them may be a peak.
                start = tenant.last_day - (options.anomaly_days - 1 + 7 * options.anomalies.weeks) * DAY
                for done, (cluster, namespace) in enumerate(pairs):
                    scope = Scope((account.id,), start, tenant.last_day + DAY,
                                  {"resource_type": (POD,), "k8s_cluster": (cluster,), "k8s_namespace": (namespace,)})
                    pod_costs[cluster, namespace] = (await expenses.daily_per_resource(scope)).per_key()
                    await store.progress(module, account.id, done + 1, len(pairs) + 1)
                items = anomaly_items(tenant, options, pod_costs)
            await store.progress(module, account.id, total, total)
            await store.complete_run(module, account.id, items, notes)
            LAST_SUCCESS.set(time.time(), tags={"tenant": account.id, "module": str(module)})
            counts[str(module)] = len(items)
            savings[str(module)] = sum(i["saving"] for i in items)
    except Exception as exc:
        for module in options.modules:
            if str(module) not in counts:
                await store.fail_run(module, account.id, f"{type(exc).__name__}: {exc}")
        raise
    return TenantReport(account.id, counts, savings, time.perf_counter() - started)


async def run_tenant(account: Account, end: int, options: Options, stores: StoreSettings, tsdb_timeout: float) -> TenantReport:
    """``optimize_tenant`` with its own clients (one per event loop)."""
    db = connect(stores)
    ledger = ExpenseStore(stores)
    tsdb = TsdbClient(stores.tsdb_url, timeout=tsdb_timeout, connections=4)
    try:
        return await optimize_tenant(account, end, options, OptimizationStore(db), ExpenseQueries(ledger),
                                     ResourceStore(db), RightsizingStore(db), tsdb)
    finally:
        await tsdb.aclose()
        await ledger.close()
        db.client.close()


@ray.remote(max_retries=2, retry_exceptions=True)
def optimize_task(account: Account, end: int, options: Options, stores: StoreSettings, tsdb_timeout: float) -> TenantReport:
    """One tenant, on a Ray worker. Retried on errors (a store outage): a run replaces."""
    return asyncio.run(run_tenant(account, end, options, stores, tsdb_timeout))


# --- the run -----------------------------------------------------------------------------------


async def optimize(accounts: Sequence[Account], end: int, options: Options, stores: StoreSettings,
                   task_cpus: float, tsdb_timeout: float) -> dict[str, Any]:
    """A Ray task per account, all submitted at once; the run's summary."""
    started = time.perf_counter()
    reports, failed = await each_tenant(
        "optimizations", accounts,
        lambda a: optimize_task.options(num_cpus=task_cpus, name=f"optimizations {a.id}").remote(
            a, end, options, stores, tsdb_timeout),
        lambda r: ", ".join(f"{m} {r.items[m]} items, {r.savings[m]:.2f} USD/month" for m in r.items)
        + f" in {r.seconds:.2f} s",
        FAILURES,
    )
    modules = [str(m) for m in options.modules]
    return {
        "accounts": len(accounts),
        "done": len(reports),
        "failed": failed,
        "modules": modules,
        "items": {m: sum(r.items.get(m, 0) for r in reports) for m in modules},
        "saving": {m: round(sum(r.savings.get(m, 0.0) for r in reports), 2) for m in modules},
        "seconds": round(time.perf_counter() - started, 3),
    }


def _discount(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not TYPE=DISCOUNT") from None


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Options]:
    """The arguments and checked options; exits 2 naming the flag at fault."""
    parser = argparse.ArgumentParser(prog="python -m jobs.optimizations", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cloud-account-id", action="append", metavar="ID", help="an account (repeatable)")
    which.add_argument("--organization-id", metavar="ID", help="every Kubernetes account of the organization")
    parser.add_argument("--module", action="append", choices=[str(m) for m in Module],
                        help="a module to run (repeatable; default every one)")
    parser.add_argument("--end", type=int, default=None, metavar="UNIX_SECONDS",
                        help="the run looks at the complete UTC days before it (default: now)")
    parser.add_argument("--interval-hours", type=float, default=24.0,
                        help="hours until the next scheduled run, shown as next_run (default 24: the RayCronJob's)")
    parser.add_argument("--min-history-days", type=int, default=7,
                        help="ledger days a cluster needs before it is sized (default 7, the rightsizing window)")
    parser.add_argument("--profile", choices=[p.name for p in PROFILES], default="production",
                        help="the cluster sizing profile whose plan is recommended (default production)")
    parser.add_argument("--spot-discount", type=float, default=DEFAULT_SPOT_DISCOUNT,
                        help=f"spot discount of node types not named (default {DEFAULT_SPOT_DISCOUNT})")
    parser.add_argument("--node-type-discount", action="append", type=_discount, default=[], metavar="TYPE=D",
                        help="spot discount of one node type (repeatable)")
    parser.add_argument("--anomaly-days", type=int, default=7, help="days looked at for anomalies (default 7)")
    parser.add_argument("--task-cpus", type=float, default=0.5, help="CPUs each tenant's task reserves (default 0.5)")
    parser.add_argument("--tsdb-timeout", type=float, default=60.0, help="seconds to wait for a TSDB query (default 60)")
    parser.add_argument("--address", default=raylocal.default_address(),
                        help="Ray GCS address, host:port (default: $RAY_ADDRESS, as `ray job submit` sets it, "
                             f"else {raylocal.LOCAL_ADDRESS})")
    args = parser.parse_args(argv)
    now = int(time.time())
    if args.end is None:
        args.end = now
    elif not 0 < args.end <= now + 60:
        parser.error(f"--end: {args.end} is not a Unix time up to now ({now})")
    for flag, value, low, high in (("--interval-hours", args.interval_hours, 0.01, 24 * 366),
                                   ("--min-history-days", args.min_history_days, 1, 366),
                                   ("--anomaly-days", args.anomaly_days, 1, 92),
                                   ("--task-cpus", args.task_cpus, 0.01, 64),
                                   ("--tsdb-timeout", args.tsdb_timeout, 1, 3600)):
        if not low <= value <= high:  # NaN fails too
            parser.error(f"{flag}: {value!r} is not from {low} to {high}")
    try:
        spot = SpotParams(args.spot_discount, dict(args.node_type_discount))
    except ValueError as exc:
        parser.error(f"--spot-discount / --node-type-discount: {exc}")
    modules = tuple(Module(m) for m in dict.fromkeys(args.module or [str(m) for m in Module]))
    options = Options(modules, args.interval_hours, args.min_history_days, args.profile, spot, args.anomaly_days)
    return args, options


def main(argv: Sequence[str] | None = None) -> int:
    args, options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    stores = from_env(StoreSettings)

    async def run(accounts: list[Account]) -> dict[str, Any]:
        log.info("optimizations: %d tenants, modules %s", len(accounts), ", ".join(options.modules))
        return await optimize(accounts, args.end, options, stores, args.task_cpus, args.tsdb_timeout)

    return run_job("optimizations", stores, args.cloud_account_id, args.organization_id, args.address, run)

if __name__ == "__main__":
    sys.exit(main())
