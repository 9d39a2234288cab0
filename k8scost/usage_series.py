"""The customer series of live usage the SaaS takes besides the exporter's: which families,
and which labels each may carry.

One list for both ends: the customer's ``write_relabel_configs`` (the onboarding answer and
``cluster_config/customer/prometheus-remote-write.yaml``) forward exactly these families and
labels, and the ingress refuses any series of these families with another label. Names,
labels and types are the real exporters' (the kubelet's cAdvisor, kube-state-metrics v2,
node-exporter); the high-cardinality labels they also carry (cAdvisor's ``id``, ``image``,
``name``; kube-state-metrics' pod ``uid``) are on no list, so they never leave the cluster.

What the optimizations job (``jobs/optimizations.py``) reads of the estate, from
kube-state-metrics v2, is here too:

- each node's type: ``kube_node_labels`` with ``label_node_kubernetes_io_instance_type``,
  which kube-state-metrics exports only when started with
  ``--metric-labels-allowlist=nodes=[node.kubernetes.io/instance-type]``; its allocatable CPU
  and memory are ``kube_node_status_allocatable``'s;
- each pod's persistent volumes: ``kube_pod_spec_volumes_persistentvolumeclaims_info`` (pod →
  claim), ``kube_persistentvolumeclaim_info`` (claim → volume) and ``kube_persistentvolume_info``
  (a volume's ``local_path`` or ``host_path``: a local or hostPath PV, bound to its node);
- node-local storage: kube-state-metrics has no metric of a pod's emptyDir or inline hostPath
  volumes (nor has the kubelet or cAdvisor: ``kubelet_volume_stats_*`` cover PVCs only). The
  source taken is cluster-autoscaler's rule: it never moves a pod with local storage unless
  annotated ``cluster-autoscaler.kubernetes.io/safe-to-evict: "true"``, and never one
  annotated ``"false"``; that annotation is ``kube_pod_annotations``'
  ``annotation_cluster_autoscaler_kubernetes_io_safe_to_evict``, exported only with
  ``--metric-annotations-allowlist=pods=[cluster-autoscaler.kubernetes.io/safe-to-evict]``.
  With that allow-list kube-state-metrics exports ``kube_pod_annotations`` for every pod (the
  label only where the annotation is set), so a pod's series says its volumes were read. A
  pod with an emptyDir but without the annotation is not seen as bound to its node.

``KSM_ALLOWLISTS`` are those two flags. Their cost in series: one per node, one per pod and
three per persistent volume, against about four per container of cAdvisor's families
(``INGRESS_MAX_SERIES_PER_TENANT`` counts them all).

Every family also may carry ``COMMON_LABELS`` (what Prometheus and its service discovery add
to every target) and ``tenant_id``, which the ingress stamps whatever was sent.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# The exporter's own families (exporter/snapshot.py and exporter/collector.py) and the
# labels they carry: what the customer configuration always forwarded.
EXPORTER_METRICS_REGEX = "cloudtuner_kubecost_.*|kubecost_cluster_.*|cloudtuner_exporter_.*"
EXPORTER_LABELS: tuple[str, ...] = (
    "tenant_id", "cluster", "namespace", "pod", "container", "node", "controller_kind", "controller",
    "reason", "le",
)
# Added to every scraped series by Prometheus (job, instance), by kube-prometheus' service
# discovery (node) and by a Prometheus' external labels (cluster).
COMMON_LABELS: tuple[str, ...] = ("cluster", "job", "instance", "node")

COUNTER, GAUGE = "counter", "gauge"


@dataclasses.dataclass(frozen=True)
class Family:
    """One exporter family: its Prometheus type and the labels it may carry besides ``COMMON_LABELS``."""

    name: str
    type: str
    labels: tuple[str, ...]
    source: str

    @property
    def allowed_labels(self) -> frozenset[str]:
        """Every label a series of this family may carry, ``__name__`` and ``tenant_id`` included."""
        return frozenset(("__name__", "tenant_id", *COMMON_LABELS, *self.labels))


_CONTAINER = ("namespace", "pod", "container")
# kube-state-metrics turns a Kubernetes label or annotation into a Prometheus label only when
# its allow-list names it (``--metric-labels-allowlist``, ``--metric-annotations-allowlist``).
INSTANCE_TYPE_LABEL = "label_node_kubernetes_io_instance_type"  # node.kubernetes.io/instance-type
SAFE_TO_EVICT_LABEL = "annotation_cluster_autoscaler_kubernetes_io_safe_to_evict"
KSM_ALLOWLISTS = ("--metric-labels-allowlist=nodes=[node.kubernetes.io/instance-type]",
                  "--metric-annotations-allowlist=pods=[cluster-autoscaler.kubernetes.io/safe-to-evict]")
USAGE_FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        # cAdvisor (the kubelet's /metrics/cadvisor): per container cgroup.
        Family("container_cpu_usage_seconds_total", COUNTER, (*_CONTAINER, "cpu"), "cadvisor"),
        Family("container_memory_working_set_bytes", GAUGE, _CONTAINER, "cadvisor"),
        Family("container_cpu_cfs_periods_total", COUNTER, _CONTAINER, "cadvisor"),
        Family("container_cpu_cfs_throttled_periods_total", COUNTER, _CONTAINER, "cadvisor"),
        # kube-state-metrics v2.
        Family("kube_pod_container_resource_requests", GAUGE, (*_CONTAINER, "resource", "unit"), "kube-state-metrics"),
        Family("kube_pod_container_resource_limits", GAUGE, (*_CONTAINER, "resource", "unit"), "kube-state-metrics"),
        Family("kube_pod_container_status_last_terminated_reason", GAUGE, (*_CONTAINER, "reason"), "kube-state-metrics"),
        Family("kube_pod_container_status_restarts_total", COUNTER, _CONTAINER, "kube-state-metrics"),
        Family("kube_pod_owner", GAUGE, ("namespace", "pod", "owner_kind", "owner_name", "owner_is_controller"),
               "kube-state-metrics"),
        Family("kube_node_status_allocatable", GAUGE, ("resource", "unit"), "kube-state-metrics"),
        # What the optimizations job reads of the estate (module docstring: their allow-lists).
        Family("kube_node_labels", GAUGE, (INSTANCE_TYPE_LABEL,), "kube-state-metrics"),
        Family("kube_pod_annotations", GAUGE, ("namespace", "pod", SAFE_TO_EVICT_LABEL), "kube-state-metrics"),
        Family("kube_pod_spec_volumes_persistentvolumeclaims_info", GAUGE,
               ("namespace", "pod", "volume", "persistentvolumeclaim"), "kube-state-metrics"),
        Family("kube_persistentvolumeclaim_info", GAUGE,
               ("namespace", "persistentvolumeclaim", "storageclass", "volumename"), "kube-state-metrics"),
        Family("kube_persistentvolume_info", GAUGE, ("persistentvolume", "storageclass", "local_path", "host_path"),
               "kube-state-metrics"),
        # node-exporter.
        Family("node_cpu_seconds_total", COUNTER, ("cpu", "mode"), "node-exporter"),
        Family("node_memory_MemAvailable_bytes", GAUGE, (), "node-exporter"),
    )
}
# cAdvisor also reports the pod's and the node's own cgroups (no ``container`` label) and the
# pause container (``POD``): summed with the containers' they would count usage twice, and
# without ``id`` they would collide; they are not sent.
CADVISOR_PREFIX = "container_"


def forwarded_metrics_regex() -> str:
    """Every family the customer forwards: the exporter's and the usage families (a full match)."""
    return EXPORTER_METRICS_REGEX + "|" + "|".join(re.escape(name) for name in USAGE_FAMILIES)


def forwarded_labels() -> tuple[str, ...]:
    """Every label name any forwarded series may keep, sorted."""
    names = {"__name__", *EXPORTER_LABELS, *COMMON_LABELS}
    for family in USAGE_FAMILIES.values():
        names.update(family.labels)
    return tuple(sorted(names))


def write_relabel_configs() -> list[dict[str, Any]]:
    """The customer Prometheus' ``write_relabel_configs``: keep the families, drop cAdvisor's
    non-container cgroups, then every label on no list (``id``, ``image``, ``name``, ``uid``, …).

    A label is dropped from every family at once (relabelling has no per-family ``labelkeep``);
    a label kept for one family but carried by another is refused by the ingress, counted.
    """
    return [
        {"source_labels": ["__name__"], "regex": forwarded_metrics_regex(), "action": "keep"},
        {
            "source_labels": ["__name__", "container"],
            "regex": f"{CADVISOR_PREFIX}.+;(POD)?",
            "action": "drop",
        },
        {"regex": "|".join(forwarded_labels()), "action": "labelkeep"},
    ]
