"""The simulator's usage exporters (cAdvisor, kube-state-metrics, node-exporter) against values
computed here from the estate by hand: counters grow, reset at a restart, and match the model."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.simulator import PV, Cluster, Container, Estate, Namespace, Node, Pod, create_app
from devstack.simulator.spec import SAFE_TO_EVICT
from devstack.simulator.usage import PATHS, UsageExporters
from k8scost.usage_series import USAGE_FAMILIES

GIB, MIB = 1024**3, 1024**2
T0 = 1_790_000_000.0
BOOT = T0 - 3600  # an hour before the cluster's first pod
# web's app container: 0.5 cores and 1 GiB, a 60 s spike to 1.5 cores (its limit: throttled)
# and 1.5 GiB from T0+100, OOM-killed and restarted at T0+300.
APP = Container("app", 1.0, 2 * GIB, 0.5, 1 * GIB,
                changes=[(T0 + 100, 1.0, 2 * GIB, 1.5, 1.5 * GIB), (T0 + 160, 1.0, 2 * GIB, 0.5, 1 * GIB)],
                cpu_limit_cores=1.5, ram_limit_bytes=2 * GIB, restarts=[(T0 + 300, "OOMKilled")])
# A best-effort job container (no request, no limit) that ends at T0+200.
WORK = Container("work", 0.0, 0.0, 0.25, 256 * MIB)


# web-0 holds two volumes, the first a local PV; the job is annotated safe to evict.
VOLUMES = [PV("pv-local-1", 10 * GIB, 0.0001, "/mnt/disks/ssd0"), PV("pvc-0b1c", 20 * GIB, 0.0001)]


def estate() -> Estate:
    node = Node("n1", 4.0, 16 * GIB, 0.03, 0.004, "i-1", "m5.xlarge")
    pods = [Pod("web-0", "n1", "statefulset", "web", T0, None, [APP], VOLUMES),
            Pod("batch-1234-abcde", "n1", "job", "batch-1234", T0, T0 + 200, [WORK],
                annotations={SAFE_TO_EVICT: "true"})]
    return Estate(7, [Cluster("c1", 0.1, [node], [Namespace("apps", {}, pods)])])


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    found = [v for (n, ls), v in samples(text).items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


# (t − T0, app's cpu seconds, app's throttled periods, app's working set, work's cpu seconds or None)
EXPECTED = [
    (50, 0.5 * 50, 0, 1 * GIB, 0.25 * 50),
    (130, 0.5 * 100 + 1.5 * 30, 10 * 30, 1.5 * GIB, 0.25 * 130),
    (250, 0.5 * 100 + 1.5 * 60 + 0.5 * 90, 10 * 60, 1 * GIB, None),
    (310, 0.5 * 10, 0, 1 * GIB, None),  # restarted at 300: counters from 0
]


@pytest.mark.parametrize(("dt", "cpu", "throttled", "ram", "work_cpu"), EXPECTED)
def test_container_values_are_the_models(dt: float, cpu: float, throttled: float, ram: float, work_cpu: float | None) -> None:
    t = T0 + dt
    text = UsageExporters(estate(), "c1").text(t)
    app = {"namespace": "apps", "pod": "web-0", "container": "app"}
    assert value(text, "container_cpu_usage_seconds_total", **app) == pytest.approx(cpu, rel=1e-9)
    assert value(text, "container_cpu_cfs_throttled_periods_total", **app) == pytest.approx(throttled, rel=1e-9)
    since = T0 + 300 if dt >= 300 else T0
    assert value(text, "container_cpu_cfs_periods_total", **app) == pytest.approx(10 * (t - since), rel=1e-12)
    assert value(text, "container_memory_working_set_bytes", **app) == ram
    work = {"namespace": "apps", "pod": "batch-1234-abcde", "container": "work"}
    assert value(text, "container_cpu_usage_seconds_total", **work) == work_cpu
    # No limit, no CFS counters (cAdvisor reports them only under a quota).
    assert value(text, "container_cpu_cfs_periods_total", **work) is None
    # The restart, as kube-state-metrics says it.
    restarted = dt >= 300
    assert value(text, "kube_pod_container_status_restarts_total", **app) == (1.0 if restarted else 0.0)
    assert value(text, "kube_pod_container_status_last_terminated_reason", **app, reason="OOMKilled") == (
        1.0 if restarted else None)
    # node-exporter: the node's containers' CPU since boot, spread over its 4 CPUs.
    busy = (0.5 * 100 + 1.5 * 60 + 0.5 * (dt - 160) if dt > 160 else cpu) + 0.25 * min(dt, 200)
    for n in range(4):
        assert value(text, "node_cpu_seconds_total", cpu=str(n), mode="user") == pytest.approx(busy / 4, rel=1e-12)
        assert value(text, "node_cpu_seconds_total", cpu=str(n), mode="idle") == pytest.approx(t - BOOT - busy / 4, rel=1e-12)
    work_ram = 256 * MIB if dt < 200 else 0
    assert value(text, "node_memory_MemAvailable_bytes", node="n1") == 16 * GIB - ram - work_ram


def test_kube_state_metrics_reports_what_is_set() -> None:
    text = UsageExporters(estate(), "c1").text(T0 + 50)
    app = {"namespace": "apps", "pod": "web-0", "container": "app"}
    assert value(text, "kube_pod_container_resource_requests", **app, resource="cpu", unit="core") == 1.0
    assert value(text, "kube_pod_container_resource_requests", **app, resource="memory", unit="byte") == 2 * GIB
    assert value(text, "kube_pod_container_resource_limits", **app, resource="cpu", unit="core") == 1.5
    work = {"namespace": "apps", "pod": "batch-1234-abcde", "container": "work"}
    assert value(text, "kube_pod_container_resource_requests", **work, resource="cpu") is None  # best effort
    assert value(text, "kube_pod_owner", pod="web-0", owner_kind="StatefulSet", owner_name="web") == 1.0
    assert value(text, "kube_pod_owner", pod="batch-1234-abcde", owner_kind="Job", owner_name="batch-1234") == 1.0
    assert value(text, "kube_node_status_allocatable", node="n1", resource="cpu", unit="core") == 4.0


def test_kube_state_metrics_reports_the_nodes_type_and_the_pods_volumes() -> None:
    text = UsageExporters(estate(), "c1").text(T0 + 50)
    assert value(text, "kube_node_labels", node="n1", label_node_kubernetes_io_instance_type="m5.xlarge") == 1.0
    web = {"namespace": "apps", "pod": "web-0"}
    assert value(text, "kube_pod_annotations", **web) == 1.0  # every pod has one; its label only when annotated
    [web_annotations] = [labels for (name, labels) in samples(text) if name == "kube_pod_annotations"
                         and ("pod", "web-0") in labels]
    assert not any(label.startswith("annotation_") for label, _ in web_annotations)
    assert value(text, "kube_pod_annotations", pod="batch-1234-abcde",
                 annotation_cluster_autoscaler_kubernetes_io_safe_to_evict="true") == 1.0
    for volume, claim, pv in (("data", "data-web-0", "pv-local-1"), ("data-1", "data-1-web-0", "pvc-0b1c")):
        assert value(text, "kube_pod_spec_volumes_persistentvolumeclaims_info", **web, volume=volume,
                     persistentvolumeclaim=claim) == 1.0
        assert value(text, "kube_persistentvolumeclaim_info", namespace="apps", persistentvolumeclaim=claim,
                     volumename=pv) == 1.0
    assert value(text, "kube_persistentvolume_info", persistentvolume="pv-local-1", local_path="/mnt/disks/ssd0") == 1.0
    assert value(text, "kube_persistentvolume_info", persistentvolume="pvc-0b1c", csi_driver="ebs.csi.aws.com") == 1.0
    # The job ended at T0+200: its pod's series went with it.
    assert value(UsageExporters(estate(), "c1").text(T0 + 250), "kube_pod_annotations", pod="batch-1234-abcde") is None


def test_counters_only_grow_and_reset_at_the_restart() -> None:
    """Scraped every 15 s by one long-lived instance (integrating between scrapes), as Prometheus
    would: every counter is non-decreasing but at the restart, and each scrape equals a fresh
    instance's answer (integrated from the start)."""
    e = estate()
    live = UsageExporters(e, "c1")
    previous: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    resets = set()
    for k in range(0, 41):
        t = T0 + 15 * k
        now = samples(live.text(t))
        fresh = samples(UsageExporters(e, "c1").text(t))
        assert now.keys() == fresh.keys()
        for key, v in now.items():
            assert v == pytest.approx(fresh[key], rel=1e-9, abs=1e-9), key
        # A restarted container is a new cAdvisor series (new id and name); without them, as
        # the relabelling sends it, one series whose counter falls back.
        now = {(name, frozenset((k, v) for k, v in labels if k not in ("id", "name"))): v
               for (name, labels), v in now.items()}
        for key, v in now.items():
            name = key[0]
            if USAGE_FAMILIES[name].type == "counter" and key in previous and v < previous[key]:
                resets.add((name, dict(key[1]).get("container"), t))
        previous = now
    # Only the app container's cAdvisor counters reset (its pod cgroup's does not), in the
    # first scrape after T0+300.
    assert resets == {(name, "app", T0 + 300) for name in (
        "container_cpu_usage_seconds_total", "container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total")}


def test_names_labels_and_types_are_the_exporters() -> None:
    text = UsageExporters(estate(), "c1").text(T0 + 310)  # after the restart: every family has a series
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, family in USAGE_FAMILIES.items():
        parsed = families[name.removesuffix("_total") if family.type == "counter" else name]
        assert parsed.type == family.type, name
    [app_cpu] = [s for s in families["container_cpu_usage_seconds"].samples if s.labels.get("container") == "app"]
    assert {"id", "image", "name", "cpu"} <= set(app_cpu.labels)  # the high-cardinality ones the relabelling drops
    # The pod's cgroup beside its containers, without a container label, as cAdvisor has it.
    assert any("container" not in s.labels and s.labels["pod"] == "web-0"
               for s in families["container_memory_working_set_bytes"].samples)


async def test_each_exporter_on_its_path() -> None:
    app = create_app(estate(), "c1", clock=lambda: T0 + 310)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
        for source, path in PATHS.items():
            answer = await client.get(path)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
            names = {f.name for f in text_string_to_metric_families(answer.text)}
            expected = {n.removesuffix("_total") if f.type == "counter" else n
                        for n, f in USAGE_FAMILIES.items() if f.source == source}
            assert names == expected, source
