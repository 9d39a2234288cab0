"""The usage exporters of a simulated cluster: what the kubelet's cAdvisor, kube-state-metrics
and node-exporter would expose at an instant, from the same model as its costs.

Ground truth, for a container running at t (its pod started, not ended), with ``u(s)`` its CPU
usage and ``m(s)`` its memory usage from ``model.segments`` (changes, spikes and usage factors
included) and ``s0`` its last start (the pod's start or its last restart):

- ``container_cpu_usage_seconds_total`` = ∫ u over [s0, t): a counter, reset by a restart;
- ``container_memory_working_set_bytes`` = m(t);
- with a CPU limit L (cAdvisor reports CFS counters only then), in 100 ms CFS periods:
  ``container_cpu_cfs_periods_total`` = 10 × (t − s0) and
  ``container_cpu_cfs_throttled_periods_total`` = 10 × the seconds of [s0, t) with u ≥ L;
- kube-state-metrics: requests and limits in force at t (only those set, as it does),
  ``kube_pod_container_status_restarts_total`` = restarts up to t, and
  ``kube_pod_container_status_last_terminated_reason`` = 1 for the last one's reason;
- kube-state-metrics, as started with ``usage_series.KSM_ALLOWLISTS``: per running pod
  ``kube_pod_annotations`` = 1 (its safe-to-evict annotation as a label, when set), per
  volume of it ``kube_pod_spec_volumes_persistentvolumeclaims_info`` = 1 (volume ``data``,
  ``data-1``, …; claim ``<volume>-<pod>``, as a StatefulSet names them),
  ``kube_persistentvolumeclaim_info`` = 1 and ``kube_persistentvolume_info`` = 1 (a local PV
  with its ``local_path``, else an EBS one with the CSI labels the relabelling drops), all
  while the pod runs; per node ``kube_node_labels`` = 1 with its instance type;
- node-exporter, per node booted at ``boot`` (an hour before the cluster's first pod): with
  B(t) = ∫ Σ u over [boot, t) of the node's containers, each of its ``cores`` CPUs reports
  ``user`` = B / cores and ``idle`` = (t − boot) − B / cores (``system`` 0), and
  ``node_memory_MemAvailable_bytes`` = capacity − Σ m(t), at least 0.

Each cAdvisor pod also has its pod cgroup's series (no ``container`` label), as the real
one: the shipped relabelling must drop them. ``node`` stands for the label the scrape's
service discovery adds per kubelet and node-exporter target (one endpoint serves them all).

Counters are integrated incrementally between scrapes (``UsageExporters`` remembers the last
instant it was asked), from the pod's start again if asked for an earlier one. A restart
starts a new container (new ``id`` and ``name``, counters from 0), as the runtime does; the
pod cgroup's counter goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable

from devstack.simulator.model import container_stream, find_cluster, segments
from devstack.simulator.spec import SAFE_TO_EVICT, Cluster, Container, Estate, Pod
from k8scost.usage_series import INSTANCE_TYPE_LABEL, SAFE_TO_EVICT_LABEL, USAGE_FAMILIES

# Each exporter's path here, by the source ``k8scost.usage_series`` names.
PATHS = {"cadvisor": "/metrics/cadvisor", "kube-state-metrics": "/kube-state-metrics/metrics",
         "node-exporter": "/node-exporter/metrics"}

CFS_PERIODS_PER_SECOND = 10  # the kernel's default CFS period is 100 ms
NODE_MAX_PODS = 110  # the kubelet's default
_KINDS = {"deployment": "ReplicaSet", "statefulset": "StatefulSet", "daemonset": "DaemonSet", "job": "Job"}


@dataclasses.dataclass
class _Counters:
    """One container's CPU and throttled seconds since its pod started, as of ``at``, and
    both as of its last restart before ``at`` (its cAdvisor counters are the difference)."""

    at: float
    cpu_seconds: float = 0.0
    throttled_seconds: float = 0.0
    at_restart: tuple[float, float] = (0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class ContainerTruth:
    """A running container at one instant: every value its exporters report."""

    cpu_cores: float
    ram_bytes: float
    cpu_seconds: float
    pod_cpu_seconds: float  # since the pod started: what its pod cgroup counts, restarts or not
    cfs_periods: float | None  # None without a CPU limit
    cfs_throttled_periods: float | None
    cpu_request: float
    ram_request: float
    restarts: int
    last_terminated_reason: str | None


def _last_start(pod: Pod, container: Container, t: float) -> tuple[float, int, str | None]:
    """(last start, restarts so far, the last one's reason) at t."""
    since, count, reason = pod.start, 0, None
    for at, why in container.restarts:
        if pod.start < at <= t:
            since, count, reason = at, count + 1, why
    return since, count, reason


def _state(container: Container, t: float) -> tuple[float, float]:
    """(cpu request, ram request) in force at t."""
    request = (container.cpu_request_cores, container.ram_request_bytes)
    for change in container.changes:
        if change[0] <= t:
            request = (change[1], change[2])
    return request


def _running(pod: Pod, t: float) -> bool:
    return pod.start <= t and (pod.end is None or t < pod.end)


def _uid(*parts: str) -> str:
    digest = hashlib.blake2b("/".join(parts).encode(), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


def _labels(labels: dict[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in labels.items()) + "}"


class UsageExporters:
    """The three exporters of ``cluster_name`` of ``estate``; ``text(t)`` is the exposition at t."""

    def __init__(self, estate: Estate, cluster_name: str) -> None:
        self.estate = estate
        self.cluster: Cluster = find_cluster(estate, cluster_name)
        starts = [pod.start for ns in self.cluster.namespaces for pod in ns.pods]
        self.boot = (min(starts) if starts else 0.0) - 3600.0
        self._counters: dict[tuple[str, str, str], _Counters] = {}
        self._busy_at = self.boot
        self._busy: dict[str, float] = {}  # node → core-seconds its containers used since boot, as of _busy_at

    def container(self, namespace: str, pod: Pod, container: Container, t: float) -> ContainerTruth | None:
        """The container's values at t, or None when its pod does not run then."""
        if not _running(pod, t):
            return None
        since, restarts, reason = _last_start(pod, container, t)
        key = (namespace, pod.name, container.name)
        counters = self._counters.get(key)
        if counters is None or counters.at > t:
            counters = self._counters[key] = _Counters(pod.start)
        stream = container_stream(self.estate, self.cluster.name, namespace, pod.name, container.name)
        limit = container.cpu_limit_cores
        # Up to each restart crossed, then to t: a restart's instant is where its counters start.
        crossed = [at for at, _ in container.restarts if counters.at < at <= t]
        for bound in [*crossed, t]:
            for start, end, _, _, cpu, _ in segments(container, counters.at, bound, self.estate.usage_period_seconds,
                                                     self.estate.usage_variation, stream):
                counters.cpu_seconds += cpu * (end - start)
                if limit and cpu >= limit:
                    counters.throttled_seconds += end - start
            counters.at = bound
            if bound in crossed:
                counters.at_restart = (counters.cpu_seconds, counters.throttled_seconds)
        cpu_seconds = counters.cpu_seconds - counters.at_restart[0]
        throttled_seconds = counters.throttled_seconds - counters.at_restart[1]
        cpu_now = ram_now = 0.0
        # The usage at t itself: the stretch that starts at t.
        for _, _, _, _, cpu_now, ram_now in segments(container, t, math.nextafter(t, math.inf),
                                                     self.estate.usage_period_seconds, self.estate.usage_variation,
                                                     stream):
            break
        cpu_request, ram_request = _state(container, t)
        periods = CFS_PERIODS_PER_SECOND * (t - since) if limit else None
        throttled = CFS_PERIODS_PER_SECOND * throttled_seconds if limit else None
        return ContainerTruth(cpu_now, ram_now, cpu_seconds, counters.cpu_seconds, periods, throttled, cpu_request,
                              ram_request, restarts, reason)

    def node_busy(self, t: float) -> dict[str, float]:
        """Core-seconds each node's containers used over [boot, t)."""
        if self._busy_at > t:
            self._busy_at, self._busy = self.boot, {}
        at, busy = self._busy_at, self._busy
        for ns in self.cluster.namespaces:
            for pod in ns.pods:
                start, end = max(at, pod.start), min(t, math.inf if pod.end is None else pod.end)
                for container in pod.containers if start < end else ():
                    stream = container_stream(self.estate, self.cluster.name, ns.name, pod.name, container.name)
                    for a, b, _, _, cpu, _ in segments(container, start, end, self.estate.usage_period_seconds,
                                                       self.estate.usage_variation, stream):
                        busy[pod.node] = busy.get(pod.node, 0.0) + cpu * (b - a)
        self._busy_at = t
        return busy

    def text(self, t: float, source: str | None = None) -> str:
        """The exposition at t (Prometheus text format 0.0.4) of one exporter (a source of
        ``k8scost.usage_series``), or of all three."""
        lines = []
        for name, (kind, help_, samples) in self._families(t).items():
            if source is None or USAGE_FAMILIES[name].source == source:
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}",
                          *(f"{name}{_labels(labels)} {value!r}" for labels, value in samples)]
        return "\n".join(lines) + "\n"

    def series(self, t: float) -> list[tuple[dict[str, str], float]]:
        """Every series of the three exporters at t: (labels with ``__name__``, value)."""
        return [({"__name__": name, **labels}, value)
                for name, (_, _, samples) in self._families(t).items() for labels, value in samples]

    def estate_series(self, t: float) -> list[tuple[dict[str, str], float]]:
        """The kube-state-metrics series of the nodes' types and capacity and the pods' volumes
        at t (labels with ``__name__``, value): cheap, no usage integrated, for replayed history."""
        found: list[tuple[dict[str, str], float]] = []
        self._estate_families(
            t, lambda name, kind, help_, labels, value: found.append(({"__name__": name, **labels}, value)))
        return found

    def _estate_families(self, t: float, add: Callable[[str, str, str, dict[str, str], float], None]) -> None:
        """``add`` each series of the nodes' labels and allocatable and the running pods' annotations and volumes."""
        for ns in self.cluster.namespaces:
            for pod in ns.pods:
                if not _running(pod, t):
                    continue
                uid = _uid(self.cluster.name, ns.name, pod.name)
                base = {"namespace": ns.name, "pod": pod.name}
                evict = pod.annotations.get(SAFE_TO_EVICT)
                add("kube_pod_annotations", "gauge", "Kubernetes annotations converted to Prometheus labels.",
                    {**base, "uid": uid, **({SAFE_TO_EVICT_LABEL: evict} if evict is not None else {})}, 1.0)
                for index, pv in enumerate(pod.pvs):
                    volume = "data" if index == 0 else f"data-{index}"
                    claim = f"{volume}-{pod.name}"
                    storageclass = "local-storage" if pv.local_path else "gp3"
                    add("kube_pod_spec_volumes_persistentvolumeclaims_info", "gauge",
                        "Information about persistentvolumeclaim volumes in a pod.",
                        {**base, "uid": uid, "volume": volume, "persistentvolumeclaim": claim}, 1.0)
                    add("kube_persistentvolumeclaim_info", "gauge", "Information about persistent volume claim.",
                        {"namespace": ns.name, "persistentvolumeclaim": claim, "storageclass": storageclass,
                         "volumename": pv.name}, 1.0)
                    handle = f"vol-{hashlib.blake2b(pv.name.encode(), digest_size=9).hexdigest()[:17]}"
                    where = ({"local_path": pv.local_path, "local_fs": "ext4"} if pv.local_path else
                             {"csi_driver": "ebs.csi.aws.com", "csi_volume_handle": handle})
                    add("kube_persistentvolume_info", "gauge", "Information about persistentvolume.",
                        {"persistentvolume": pv.name, "storageclass": storageclass, **where}, 1.0)
        for node in self.cluster.nodes:
            labels = {"node": node.name}
            add("kube_node_labels", "gauge", "Kubernetes labels converted to Prometheus labels.",
                {**labels, **({INSTANCE_TYPE_LABEL: node.instance_type} if node.instance_type else {})}, 1.0)
            for resource, unit, value in (("cpu", "core", node.cpu_cores), ("memory", "byte", node.ram_bytes),
                                          ("pods", "integer", float(NODE_MAX_PODS))):
                add("kube_node_status_allocatable", "gauge",
                    "The allocatable for different resources of a node that are available for scheduling.",
                    {**labels, "resource": resource, "unit": unit}, value)

    def _families(self, t: float) -> dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]]:
        """Family name → (type, help, [(labels, value)]) at t."""
        families: dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]] = {}

        def add(name: str, kind: str, help_: str, labels: dict[str, str], value: float) -> None:
            families.setdefault(name, (kind, help_, []))[2].append((labels, value))

        self._estate_families(t, add)
        cluster = self.cluster.name
        ram_on_node: dict[str, float] = {}
        for ns in self.cluster.namespaces:
            for pod in ns.pods:
                if not _running(pod, t):
                    continue
                uid = _uid(cluster, ns.name, pod.name)
                base = {"namespace": ns.name, "pod": pod.name}
                kind = _KINDS.get(pod.controller_kind)
                owner = pod.controller if kind != "ReplicaSet" else pod.name.rsplit("-", 1)[0]
                add("kube_pod_owner", "gauge", "Information about the Pod's owner.",
                    {**base, "uid": uid, "owner_kind": kind or "<none>", "owner_name": owner if kind else "<none>",
                     "owner_is_controller": "true" if kind else "<none>"}, 1.0)
                pod_cpu = pod_ram = pod_cpu_seconds = 0.0
                for container in pod.containers:
                    truth = self.container(ns.name, pod, container, t)
                    assert truth is not None
                    pod_cpu_seconds += truth.pod_cpu_seconds
                    pod_ram += truth.ram_bytes
                    pod_cpu += truth.cpu_cores
                    # A restart is a new container: new id, as the runtime gives it.
                    cid = hashlib.blake2b(f"{uid}/{container.name}/{truth.restarts}".encode(), digest_size=32).hexdigest()
                    cadvisor = {"container": container.name, "id": f"/kubepods/burstable/pod{uid}/{cid}",
                                "image": f"registry.example/{container.name}:1.0", "name": cid, **base,
                                "node": pod.node}
                    add("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds.",
                        {**cadvisor, "cpu": "total"}, truth.cpu_seconds)
                    add("container_memory_working_set_bytes", "gauge", "Current working set in bytes.", cadvisor,
                        truth.ram_bytes)
                    if truth.cfs_periods is not None:
                        add("container_cpu_cfs_periods_total", "counter", "Number of elapsed enforcement period intervals.",
                            cadvisor, truth.cfs_periods)
                        add("container_cpu_cfs_throttled_periods_total", "counter",
                            "Number of throttled period intervals.", cadvisor, truth.cfs_throttled_periods or 0.0)
                    ksm = {**base, "uid": uid, "container": container.name, "node": pod.node}
                    for metric, cpu, ram in (
                        ("kube_pod_container_resource_requests", truth.cpu_request, truth.ram_request),
                        ("kube_pod_container_resource_limits", container.cpu_limit_cores, container.ram_limit_bytes),
                    ):
                        what = metric.rsplit("_", 1)[1]
                        if cpu:
                            add(metric, "gauge", f"The number of {what} resource by a container.",
                                {**ksm, "resource": "cpu", "unit": "core"}, cpu)
                        if ram:
                            add(metric, "gauge", f"The number of {what} resource by a container.",
                                {**ksm, "resource": "memory", "unit": "byte"}, ram)
                    ksm.pop("node")
                    add("kube_pod_container_status_restarts_total", "counter",
                        "The number of container restarts per container.", ksm, float(truth.restarts))
                    if truth.last_terminated_reason is not None:
                        add("kube_pod_container_status_last_terminated_reason", "gauge",
                            "Describes the last reason the container was in terminated state.",
                            {**ksm, "reason": truth.last_terminated_reason}, 1.0)
                # The pod's own cgroup: the sum of its containers, no container label.
                pod_cgroup = {"id": f"/kubepods/burstable/pod{uid}", **base, "node": pod.node}
                add("container_cpu_usage_seconds_total", "counter", "", {**pod_cgroup, "cpu": "total"}, pod_cpu_seconds)
                add("container_memory_working_set_bytes", "gauge", "", pod_cgroup, pod_ram)
                ram_on_node[pod.node] = ram_on_node.get(pod.node, 0.0) + pod_ram
        busy = self.node_busy(t)
        for node in self.cluster.nodes:
            labels = {"node": node.name}
            cores = max(1, int(node.cpu_cores))
            user = busy.get(node.name, 0.0) / cores
            for cpu in range(cores):
                for mode, value in (("idle", (t - self.boot) - user), ("system", 0.0), ("user", user)):
                    add("node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode.",
                        {"cpu": str(cpu), "mode": mode, **labels}, value)
            add("node_memory_MemAvailable_bytes", "gauge", "Memory information field MemAvailable_bytes.", labels,
                max(0.0, node.ram_bytes - ram_on_node.get(node.name, 0.0)))
        return families
