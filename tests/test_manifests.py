"""cluster_config/ validates offline: KubeRay manifests against the KubeRay CRD schemas,
plain Kubernetes manifests with kubernetes-validate, the alert rules with promtool, the
RayService's serveConfigV2 against serve_config.yaml. No services, no Ray cluster.

Every check is a function that returns its problems; each test also feeds it a broken
copy and expects a complaint, so no check passes by checking nothing.
"""

from __future__ import annotations

import ast
import copy
import gzip
import json
import re
import shutil
import subprocess
import uuid
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from k8scost.settings import ALL_SETTINGS, IngressSettings, MetroculusSettings, StoreSettings, from_env
from k8scost.stores.optimizations import Module

# Ray Serve's schemas still use pydantic v1-style Field extras.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "cluster_config"
# The KubeRay operator's CRDs, verbatim and gzipped (see SOURCES.md there).
CRD_DIR = ROOT / "tests" / "fixtures" / "kuberay"
RULES = CONFIG / "alerts" / "cloudtuner.rules.yaml"
RULES_TEST = CONFIG / "alerts" / "cloudtuner.rules.test.yaml"
# The customer's Prometheus's own alerts on its remote write to CloudTuner.
CUSTOMER_RULES = CONFIG / "customer" / "cloudtuner-remote-write.rules.yaml"
CUSTOMER_RULES_TEST = CONFIG / "customer" / "cloudtuner-remote-write.rules.test.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# A release kubernetes-validate ships schemas for (offline); strict: unknown fields refused.
KUBERNETES_VERSION = "1.33.0"
# YAML under cluster_config/ that is not a Kubernetes object.
NOT_MANIFESTS = {
    "serve_config.yaml",
    "customer/prometheus-remote-write.yaml",
    "customer/cloudtuner-remote-write.rules.yaml",
    "customer/cloudtuner-remote-write.rules.test.yaml",
    "alerts/cloudtuner.rules.yaml",
    "alerts/cloudtuner.rules.test.yaml",
}
SETTINGS_ENV = {f.metadata["env"] for cls in ALL_SETTINGS for f in cls.__dataclass_fields__.values()}


# --- loading ------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def _manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file relative to cluster_config, document) for every Kubernetes object there."""
    found = []
    for path in sorted(CONFIG.rglob("*.yaml")):
        rel = path.relative_to(CONFIG).as_posix()
        if rel in NOT_MANIFESTS:
            continue
        for doc in _documents(path):
            found.append((rel, doc))
    return tuple(found)


def _kuberay() -> list[tuple[str, dict[str, Any]]]:
    return [(rel, doc) for rel, doc in _manifests() if doc["apiVersion"].startswith("ray.io/")]


def _plain() -> list[tuple[str, dict[str, Any]]]:
    return [(rel, doc) for rel, doc in _manifests() if not doc["apiVersion"].startswith("ray.io/")]


def _one(kind: str, name: str) -> dict[str, Any]:
    hits = [doc for _, doc in _manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return copy.deepcopy(hits[0])


def _id(item: tuple[str, dict[str, Any]]) -> str:
    rel, doc = item
    return f"{rel}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def test_every_yaml_under_cluster_config_is_checked() -> None:
    """A new YAML file is either a manifest (validated below) or listed in NOT_MANIFESTS."""
    for path in CONFIG.rglob("*.yaml"):
        rel = path.relative_to(CONFIG).as_posix()
        if rel in NOT_MANIFESTS:
            assert not any("kind" in doc for doc in _documents(path)), f"{rel} holds Kubernetes objects"
            continue
        docs = _documents(path)
        assert docs, f"{rel}: no document"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{rel}: not a Kubernetes object"
    kinds = {doc["kind"] for _, doc in _manifests()}
    assert {"RayService", "RayCluster", "RayJob", "RayCronJob", "Deployment", "StatefulSet", "Service",
            "NetworkPolicy", "ConfigMap", "Secret", "Ingress"} <= kinds


# --- KubeRay CRDs -------------------------------------------------------------------------


@cache
def _crds() -> dict[str, dict[str, Any]]:
    assert CRD_DIR.is_dir(), f"KubeRay CRD fixtures missing: {CRD_DIR}"
    crds = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml.gz")):
        # The C loader if PyYAML has it: the four CRDs are ~1 MB of YAML each.
        crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        crds[crd["spec"]["names"]["kind"]] = crd
    assert {"RayService", "RayCluster", "RayJob", "RayCronJob"} <= crds.keys()
    return crds


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict` does
    (the API server would otherwise prune a misspelt field silently)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _crd_validator(kind: str, version: str) -> jsonschema.Validator:
    crd = _crds()[kind]
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind}: version {version} not served (served: {sorted(served)})"
    schema = _strict(served[version]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def kuberay_problems(doc: dict[str, Any]) -> list[str]:
    """What the KubeRay CRD of the document's kind refuses in it ([] if valid)."""
    crd = _crds().get(doc.get("kind", ""))
    if crd is None:
        return [f"no KubeRay CRD for kind {doc.get('kind')!r}"]
    group, _, version = doc.get("apiVersion", "").partition("/")
    if group != crd["spec"]["group"]:
        return [f"apiVersion {doc.get('apiVersion')!r} is not of group {crd['spec']['group']}"]
    storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    if version != storage:
        return [f"apiVersion {doc['apiVersion']!r}: use the storage version {group}/{storage}"]
    problems = [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in _crd_validator(doc["kind"], version).iter_errors(doc)
    ]
    if not doc.get("metadata", {}).get("name"):
        problems.append("metadata.name missing")
    return problems


@pytest.mark.parametrize("item", _kuberay(), ids=_id)
def test_kuberay_manifest_valid_against_crd(item: tuple[str, dict[str, Any]]) -> None:
    assert kuberay_problems(item[1]) == []


def _pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    if doc["kind"] == "RayService":
        cluster = spec["rayClusterConfig"]
    elif doc["kind"] == "RayCluster":
        cluster = spec
    elif doc["kind"] == "RayJob":
        cluster = spec.get("rayClusterSpec")
    else:  # RayCronJob
        cluster = spec["jobTemplate"].get("rayClusterSpec")
    if not cluster:
        return []
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [group["template"] for group in groups]


@pytest.mark.parametrize("item", _kuberay(), ids=_id)
def test_kuberay_pod_templates_valid_kubernetes(item: tuple[str, dict[str, Any]]) -> None:
    """The CRDs embed the PodTemplateSpec; check it against Kubernetes' own schema too."""
    for template in _pod_templates(item[1]):
        assert kubernetes_problems(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        ) == []


def test_kuberay_broken_copies_refused() -> None:
    service = _one("RayService", "cloudtuner")
    assert kuberay_problems(service) == []

    wrong_group = copy.deepcopy(service)
    wrong_group["apiVersion"] = "ray.io/v1alpha1"
    assert kuberay_problems(wrong_group)

    typo = copy.deepcopy(service)
    typo["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    assert any("enableInTreeAutoscalling" in p for p in kuberay_problems(typo))

    no_max = _one("RayCluster", "cloudtuner-jobs")
    del no_max["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert any("maxReplicas" in p for p in kuberay_problems(no_max))

    not_string = _one("RayCluster", "cloudtuner-jobs")
    not_string["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert any("rayStartParams" in p for p in kuberay_problems(not_string))

    cron = _one("RayCronJob", "rightsizing")
    del cron["spec"]["schedule"]
    assert any("schedule" in p for p in kuberay_problems(cron))


# --- plain Kubernetes ---------------------------------------------------------------------


def kubernetes_problems(doc: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [str(error)]
    return []


@pytest.mark.parametrize("item", _plain(), ids=_id)
def test_kubernetes_manifest_valid(item: tuple[str, dict[str, Any]]) -> None:
    assert kubernetes_problems(item[1]) == []


def test_kubernetes_broken_copies_refused() -> None:
    receive = _one("StatefulSet", "thanos-receive")
    assert kubernetes_problems(receive) == []
    receive["spec"]["replicas"] = "three"
    assert kubernetes_problems(receive)

    policy = _one("NetworkPolicy", "thanos-receive")
    policy["spec"]["ingress"][0]["ports"][0]["protocl"] = "TCP"
    assert kubernetes_problems(policy)

    service = _one("Service", "thanos-query")
    service["kind"] = "Servise"
    assert kubernetes_problems(service)


# --- settings, services and wiring --------------------------------------------------------


def settings_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Keys of the settings ConfigMap/Secret that no component reads."""
    problems = []
    for doc in docs:
        keys = {**doc.get("data", {}), **doc.get("stringData", {})}
        problems += [f"{doc['kind']} {doc['metadata']['name']}: {key} is no setting" for key in keys
                     if key not in SETTINGS_ENV]
    return problems


def test_settings_are_real_settings() -> None:
    docs = [_one("ConfigMap", "cloudtuner-settings"), _one("Secret", "cloudtuner-secrets")]
    assert settings_problems(docs) == []
    secret = docs[1]["stringData"]
    assert {"CLUSTER_SECRET", "RESTAPI_JWT_SECRET"} <= secret.keys()
    docs[0]["data"]["TSBD_URL"] = "http://typo"
    assert settings_problems(docs) == ["ConfigMap cloudtuner-settings: TSBD_URL is no setting"]


def test_ray_pods_load_the_settings() -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for _, doc in _manifests()}
    for _, doc in _kuberay():
        for template in _pod_templates(doc):
            for container in template["spec"]["containers"]:
                refs = {("ConfigMap", r["configMapRef"]["name"]) if "configMapRef" in r
                        else ("Secret", r["secretRef"]["name"]) for r in container.get("envFrom", [])}
                assert refs == {("ConfigMap", "cloudtuner-settings"), ("Secret", "cloudtuner-secrets")}
                assert refs <= names


def service_for(url: str) -> tuple[str, int] | None:
    """(Service name, port) the in-cluster URL reaches, if a Service here exposes it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    name, _, rest = host.partition(".")
    namespace = rest.split(".")[0]
    for _, doc in _manifests():
        if doc["kind"] == "Service" and doc["metadata"]["name"] == name and doc["metadata"]["namespace"] == namespace:
            if any(port["port"] == parts.port for port in doc["spec"]["ports"]):
                return name, parts.port
    return None


def test_tsdb_urls_point_at_thanos() -> None:
    data = _one("ConfigMap", "cloudtuner-settings")["data"]
    assert service_for(data["TSDB_URL"]) == ("thanos-query", 9090)
    assert service_for(data["TSDB_REMOTE_WRITE_URL"]) == ("thanos-receive", 19291)
    assert urlsplit(data["TSDB_REMOTE_WRITE_URL"]).path == "/api/v1/receive"
    assert service_for("http://thanos-query.cloudtuner.svc:9091") is None


def _container_args(kind: str, name: str) -> list[str]:
    return _one(kind, name)["spec"]["template"]["spec"]["containers"][0]["args"]


def thanos_receive_problems(args: list[str], tenant_header: str) -> list[str]:
    flags = dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)
    problems = []
    if flags.get("--receive.tenant-header") != tenant_header:
        problems.append(f"tenant header is not {tenant_header}")
    if flags.get("--receive.tenant-label-name") != "tenant_id":
        problems.append("tenant label is not tenant_id")
    default = flags.get("--receive.default-tenant-id", "default-tenant")
    try:
        uuid.UUID(default)
        problems.append("the default tenant could be an account id (a UUID)")
    except ValueError:
        pass
    if default == "default-tenant":
        problems.append("no explicit --receive.default-tenant-id")
    if any(arg.startswith("--receive.split-tenant-label-name") for arg in args):
        problems.append("split-tenant label: senders would choose their tenant")
    return problems


def test_thanos_receive_tenancy() -> None:
    header = _one("ConfigMap", "cloudtuner-settings")["data"]["TSDB_TENANT_HEADER"]
    args = _container_args("StatefulSet", "thanos-receive")
    assert thanos_receive_problems(args, header) == []
    assert thanos_receive_problems([*args, "--receive.split-tenant-label-name=tenant_id"], header)
    assert thanos_receive_problems(
        [a for a in args if not a.startswith("--receive.default-tenant-id")]
        + [f"--receive.default-tenant-id={uuid.uuid4()}"], header)


def test_thanos_query_reads_receive_and_the_store_gateway() -> None:
    args = _container_args("Deployment", "thanos-query")
    assert not [a for a in args if a.startswith(("--endpoint=", "--store=", "--endpoint-"))]
    config = [yaml.safe_load(a.split("=", 1)[1]) for a in args if a.startswith("--endpoint.sd-config=")]
    assert config == [{"endpoints": [
        {"address": "dnssrv+_grpc._tcp.thanos-receive-headless.cloudtuner.svc.cluster.local"},
        {"address": "thanos-store.cloudtuner.svc.cluster.local:10901", "group": True, "strict": True},
    ]}]
    for service in ("thanos-receive-headless", "thanos-store"):
        headless = _one("Service", service)
        assert headless["spec"]["clusterIP"] == "None"
        assert any(p["name"] == "grpc" and p["port"] == 10901 for p in headless["spec"]["ports"])
    assert "--query.replica-label=replica" in args
    assert "--no-query.partial-response" in args  # a store down is an error, not a smaller bill


def test_thanos_components_share_one_bucket() -> None:
    for kind, name in (("StatefulSet", "thanos-receive"), ("StatefulSet", "thanos-store"),
                       ("StatefulSet", "thanos-compact")):
        spec = _one(kind, name)["spec"]["template"]["spec"]
        assert "--objstore.config-file=/etc/thanos/objstore/objstore.yaml" in spec["containers"][0]["args"]
        assert {"name": "objstore", "secret": {"secretName": "thanos-objstore"}} in spec["volumes"]
    assert "objstore.yaml" in _one("Secret", "thanos-objstore")["stringData"]
    assert _one("StatefulSet", "thanos-compact")["spec"]["replicas"] == 1  # two Compactors corrupt a bucket


def retention_problems(compact_args: list[str], environ: dict[str, str]) -> list[str]:
    """Where a range the code reads from the TSDB reaches past the raw samples the Compactor keeps."""
    flags = dict(arg.split("=", 1) for arg in compact_args if arg.startswith("--") and "=" in arg)
    raw = flags.get("--retention.resolution-raw", "0d")
    match = re.fullmatch(r"(\d+)d", raw)
    if match is None:
        return [f"raw retention {raw!r} is not a number of days"]
    days = int(match[1])
    if days == 0:  # kept forever
        return []
    problems = []
    if days < 90:
        problems.append(f"raw retention of {days} days, under 90")
    # A range ending now reads samples from a lookback before its start: strictly shorter.
    metroculus = from_env(MetroculusSettings, environ).max_range_days
    if metroculus >= days:
        problems.append(f"METROCULUS_MAX_RANGE_DAYS ({metroculus}) reaches past the raw retention ({days} days)")
    backfill = from_env(StoreSettings, environ).tsdb_raw_retention_days
    if backfill > days:
        problems.append(f"the backfill reads {backfill} days back (TSDB_RAW_RETENTION_DAYS), "
                        f"past the raw retention ({days} days)")
    return problems


def test_raw_retention_covers_metroculus_and_the_backfill() -> None:
    args = _container_args("StatefulSet", "thanos-compact")
    environ = _one("ConfigMap", "cloudtuner-settings")["data"]
    assert retention_problems(args, environ) == []
    assert "--downsampling.disable" in args

    def raw(value: str) -> list[str]:
        return [a for a in args if not a.startswith("--retention.resolution-raw=")] + [f"--retention.resolution-raw={value}"]

    assert retention_problems(raw("0d"), environ) == []
    assert retention_problems(raw("90d"), environ) == [
        "METROCULUS_MAX_RANGE_DAYS (92) reaches past the raw retention (90 days)",
        "the backfill reads 100 days back (TSDB_RAW_RETENTION_DAYS), past the raw retention (90 days)",
    ]
    assert retention_problems(raw("30d"), {"METROCULUS_MAX_RANGE_DAYS": "7", "TSDB_RAW_RETENTION_DAYS": "7"}) == [
        "raw retention of 30 days, under 90"]
    assert retention_problems(args, {**environ, "TSDB_RAW_RETENTION_DAYS": "400"})
    assert retention_problems(args, {**environ, "METROCULUS_MAX_RANGE_DAYS": "366"})


def test_the_backfill_refuses_days_past_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.backfill import parse_args  # imports Ray, which only this test needs

    monkeypatch.delenv("TSDB_RAW_RETENTION_DAYS", raising=False)
    retention = from_env(StoreSettings, {}).tsdb_raw_retention_days
    today = datetime.now(UTC).date()

    def args(first: date) -> list[str]:
        return ["--cloud-account-id", "x", "--start", first.isoformat(), "--end", (first + timedelta(days=1)).isoformat()]

    assert parse_args(args(today - timedelta(days=retention - 1))).start == today - timedelta(days=retention - 1)
    with pytest.raises(SystemExit):
        parse_args(args(today - timedelta(days=retention)))


def remote_write_senders(policy: dict[str, Any]) -> list[dict[str, str]]:
    """Pod label selectors allowed to reach Receive's remote-write port 19291."""
    return [peer.get("podSelector", {}).get("matchLabels", {}) for rule in policy["spec"]["ingress"]
            if any(p["port"] == 19291 for p in rule.get("ports", [])) for peer in rule.get("from", [])]


def test_receive_writable_only_from_the_serve_pods() -> None:
    senders = remote_write_senders(_one("NetworkPolicy", "thanos-receive"))
    assert senders == [{"cloudtuner.io/remote-write-sender": "true"}]

    def labelled(doc: dict[str, Any]) -> list[bool]:
        return [all(t["metadata"]["labels"].get(k) == v for k, v in senders[0].items()) for t in _pod_templates(doc)]

    assert all(labelled(_one("RayService", "cloudtuner")))
    assert not any(labelled(_one("RayCluster", "cloudtuner-jobs")))
    open_policy = _one("NetworkPolicy", "thanos-receive")
    open_policy["spec"]["ingress"][0]["from"] = [{}]
    assert remote_write_senders(open_policy) != senders


def test_jobs_cluster_autoscaler_and_tenant_slots() -> None:
    jobs = _one("RayCluster", "cloudtuner-jobs")["spec"]
    assert jobs["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in jobs["workerGroupSpecs"]}
    resources = json.loads(json.loads(groups["tenants"]["rayStartParams"]["resources"]))
    assert resources == {"tenant_slots": 50}
    assert _one("RayService", "cloudtuner")["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    for kind, name in (("RayJob", "backfill"), ("RayJob", "tenant-supervisor")):
        assert _one(kind, name)["spec"]["clusterSelector"] == {"ray.io/cluster": "cloudtuner-jobs"}
    cron = _one("RayCronJob", "rightsizing")["spec"]
    assert cron["jobTemplate"]["clusterSelector"] == {"ray.io/cluster": "cloudtuner-jobs"}
    assert cron["jobTemplate"]["entrypoint"] == "python -m jobs.rightsizing"
    assert _one("RayJob", "backfill")["spec"]["entrypoint"].startswith("python -m jobs.backfill --cloud-account-id ")
    from jobs.optimizations import parse_args as optimizations_args  # imports Ray, which only this test needs

    # Every optimizations module has its own RayCronJob, running that module alone.
    for module in Module:
        cron = _one("RayCronJob", "optimizations-" + module.removeprefix("k8s_").replace("_", "-"))["spec"]
        assert cron["jobTemplate"]["clusterSelector"] == {"ray.io/cluster": "cloudtuner-jobs"}
        assert cron["jobTemplate"]["entrypoint"] == f"python -m jobs.optimizations --module {module} --interval-hours 24"
        _, options = optimizations_args(cron["jobTemplate"]["entrypoint"].split()[3:])  # the job accepts them
        assert options.modules == (module,)


# --- serveConfigV2 == serve_config.yaml ---------------------------------------------------


def _serve_config_v2() -> dict[str, Any]:
    return yaml.safe_load(_one("RayService", "cloudtuner")["spec"]["serveConfigV2"])


def serve_config_mismatches(local: dict[str, Any], kuberay: dict[str, Any]) -> list[str]:
    """Where the RayService's applications differ from serve_config.yaml's."""

    def shape(config: dict[str, Any]) -> dict[str, Any]:
        return {
            app["name"]: {
                "route_prefix": app.get("route_prefix"),
                "import_path": app["import_path"],
                "deployments": {d["name"]: d.get("max_ongoing_requests") for d in app.get("deployments", [])},
            }
            for app in config["applications"]
        }

    problems = []
    a, b = shape(local), shape(kuberay)
    for name in a.keys() | b.keys():
        if a.get(name) != b.get(name):
            problems.append(f"application {name}: serve_config.yaml {a.get(name)} != serveConfigV2 {b.get(name)}")
    if [app["name"] for app in local["applications"]] != [app["name"] for app in kuberay["applications"]]:
        problems.append("applications in another order")
    for key in ("proxy_location", "logging_config"):
        if local.get(key) != kuberay.get(key):
            problems.append(f"{key} differs")
    return problems


def test_serve_config_v2_matches_serve_config() -> None:
    local = yaml.safe_load((CONFIG / "serve_config.yaml").read_text())
    kuberay = _serve_config_v2()
    assert serve_config_mismatches(local, kuberay) == []

    renamed = copy.deepcopy(kuberay)
    renamed["applications"][1]["deployments"][0]["name"] = "Metroculus2"
    assert serve_config_mismatches(local, renamed)
    moved = copy.deepcopy(kuberay)
    moved["applications"][0]["route_prefix"] = "/write"
    assert serve_config_mismatches(local, moved)
    missing = copy.deepcopy(kuberay)
    missing["applications"].pop()
    assert serve_config_mismatches(local, missing)


def serve_schema_problems(config: dict[str, Any]) -> list[str]:
    """What Ray Serve's own schemas refuse in a serve config. ServeDeploySchema lets unknown
    deployment fields through, so deployments and their autoscaling_config are checked
    field by field too."""
    from ray.serve.config import AutoscalingConfig  # the schemas only: no Ray started
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    problems = []
    try:
        ServeDeploySchema.model_validate(config)
    except Exception as error:  # pydantic.ValidationError
        problems.append(str(error))
    for app in config.get("applications", []):
        for deployment in app.get("deployments", []):
            where = f"{app.get('name')}/{deployment.get('name')}"
            problems += [f"{where}: unknown field {key}" for key in deployment.keys() - DeploymentSchema.model_fields.keys()]
            autoscaling = deployment.get("autoscaling_config") or {}
            problems += [f"{where}: unknown autoscaling field {key}"
                         for key in autoscaling.keys() - AutoscalingConfig.model_fields.keys()]
            try:
                AutoscalingConfig(**autoscaling)
            except Exception as error:
                problems.append(f"{where}: {error}")
    return problems


def test_serve_config_v2_is_a_valid_serve_config_with_autoscaling() -> None:
    config = _serve_config_v2()
    assert serve_schema_problems(config) == []
    assert config["http_options"]["host"] == "0.0.0.0"
    max_replicas = {}
    for app in config["applications"]:
        for deployment in app["deployments"]:
            autoscaling = deployment["autoscaling_config"]
            assert deployment.get("num_replicas", "auto") == "auto"
            assert 1 <= autoscaling["min_replicas"] <= autoscaling["max_replicas"]
            assert autoscaling["target_ongoing_requests"] <= deployment["max_ongoing_requests"]
            max_replicas[deployment["name"]] = autoscaling["max_replicas"]
    assert max(max_replicas, key=max_replicas.get) == "RemoteWriteIngress"  # sized for throughput

    def broken(change: Any) -> dict[str, Any]:
        copied = copy.deepcopy(config)
        change(copied["applications"][0]["deployments"][0])
        return copied

    assert serve_schema_problems(broken(lambda d: d["autoscaling_config"].update(min_replicas=30)))
    assert serve_schema_problems(broken(lambda d: d["autoscaling_config"].update(target_ongoing_request=8)))
    assert serve_schema_problems(broken(lambda d: d.update(num_replicas=3)))
    assert serve_schema_problems(broken(lambda d: d.update(max_ongoing_request=3)))


# --- the public HTTPS entry --------------------------------------------------------------


def public_paths() -> set[tuple[str, str]]:
    """(path, pathType) of everything the public may reach, from the code that serves it: the
    REST API's prefix, the ingress app's one write path, the dashboard's files."""
    from serve_apps.dashboard.app import FILES
    from serve_apps.ingress.app import WRITE_PATH

    prefixes = {app["name"]: app["route_prefix"] for app in _serve_config_v2()["applications"]}
    assert prefixes["dashboard"] == "/"
    return {(prefixes["restapi"], "Prefix"), (prefixes["ingress"] + WRITE_PATH, "Exact")} | {
        (path, "Exact") for path in FILES
    }


def _size_bytes(quantity: str) -> int:
    """nginx's size syntax (proxy-body-size): bytes, or a k/m/g suffix of 1024s."""
    match = re.fullmatch(r"(\d+)([kmg]?)", quantity.lower())
    assert match, f"not an nginx size: {quantity!r}"
    return int(match[1]) * 1024 ** " kmg".index(match[2] or " ")


def ingress_problems(ingress: dict[str, Any]) -> list[str]:
    """What keeps the Ingress from being the TLS-only, public-paths-only entry to the Serve service."""
    problems = []
    annotations = ingress["metadata"].get("annotations", {})
    spec = ingress["spec"]
    tls = spec.get("tls") or []
    rule_hosts = {rule.get("host") for rule in spec.get("rules", [])}
    tls_hosts = {host for entry in tls for host in entry.get("hosts", [])}
    if None in rule_hosts:
        problems.append("a rule without a host: its certificate cannot name it")
    if tls_hosts != rule_hosts:
        problems.append(f"tls hosts {sorted(tls_hosts)} are not the rules' hosts {sorted(h for h in rule_hosts if h)}")
    secrets = {entry.get("secretName") for entry in tls}
    if not tls or None in secrets or "" in secrets:
        problems.append("a tls entry without secretName")
    tls_secrets = {doc["metadata"]["name"] for _, doc in _manifests()
                   if doc["kind"] == "Secret" and doc.get("type") == "kubernetes.io/tls"}
    issued = any(key in annotations for key in ("cert-manager.io/cluster-issuer", "cert-manager.io/issuer"))
    if not issued and not secrets <= tls_secrets:
        problems.append("no certificate: neither a cert-manager issuer annotation nor the tls Secret")
    if annotations.get("nginx.ingress.kubernetes.io/ssl-redirect") != "true":
        problems.append("plain HTTP is not redirected to HTTPS")
    max_body = from_env(IngressSettings, _one("ConfigMap", "cloudtuner-settings")["data"]).max_body_bytes
    if _size_bytes(annotations.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")) < max_body:
        problems.append(f"proxy-body-size below INGRESS_MAX_BODY_BYTES ({max_body}): nginx would refuse writes the app accepts")

    service = _one("RayService", "cloudtuner")
    backend_ok = {"name": f"{service['metadata']['name']}-serve-svc", "port": {"number": _serve_config_v2()["http_options"]["port"]}}
    paths = set()
    for rule in spec.get("rules", []):
        for entry in rule.get("http", {}).get("paths", []):
            paths.add((entry.get("path"), entry.get("pathType")))
            if entry.get("backend", {}).get("service") != backend_ok:
                problems.append(f"{entry.get('path')}: backend {entry.get('backend')} is not the Serve service {backend_ok}")
    wanted = public_paths()
    if paths - wanted:
        problems.append(f"not public, yet routed: {sorted(paths - wanted)}")
    if wanted - paths:
        problems.append(f"public, yet not routed: {sorted(wanted - paths)}")
    return problems


def test_the_public_ingress_is_tls_only_and_routes_only_public_paths() -> None:
    ingress = _one("Ingress", "cloudtuner")
    assert ingress_problems(ingress) == []
    # What the public may not reach is not among what it may.
    metroculus = next(app["route_prefix"] for app in _serve_config_v2()["applications"] if app["name"] == "metroculus")
    assert not [path for path, _ in public_paths() if path.startswith((metroculus, "/-/"))]
    assert ("/", "Prefix") not in public_paths()
    # The write URL handed to customers is https on this host, on a routed path.
    write_url = urlsplit(_one("ConfigMap", "cloudtuner-settings")["data"]["RESTAPI_PUBLIC_WRITE_URL"])
    assert write_url.scheme == "https"
    assert write_url.hostname in ingress["spec"]["tls"][0]["hosts"]
    assert (write_url.path, "Exact") in public_paths()

    def broken(change: Any) -> list[str]:
        copy_ = copy.deepcopy(ingress)
        change(copy_)
        return ingress_problems(copy_)

    paths = lambda doc: doc["spec"]["rules"][0]["http"]["paths"]  # noqa: E731
    backend = lambda port: {"service": {"name": "cloudtuner-serve-svc", "port": {"number": port}}}  # noqa: E731
    assert any("secretName" in p for p in broken(lambda d: d["spec"]["tls"][0].pop("secretName")))
    assert any("tls hosts" in p for p in broken(lambda d: d["spec"]["tls"][0].update(hosts=["other.example"])))
    assert any("tls hosts" in p for p in broken(lambda d: d["spec"].pop("tls")))
    assert any("not public" in p for p in broken(lambda d: paths(d).append({"path": "/", "pathType": "Prefix", "backend": backend(8000)})))
    assert any("not public" in p for p in broken(lambda d: paths(d).append({"path": "/metroculus", "pathType": "Prefix", "backend": backend(8000)})))
    assert any("not the Serve service" in p for p in broken(lambda d: paths(d)[0].update(backend=backend(8265))))
    assert any("not routed" in p for p in broken(lambda d: paths(d).pop(1)))
    assert any("redirected" in p for p in broken(lambda d: d["metadata"]["annotations"].pop("nginx.ingress.kubernetes.io/ssl-redirect")))
    assert any("no certificate" in p for p in broken(lambda d: d["metadata"]["annotations"].pop("cert-manager.io/cluster-issuer")))
    assert any("proxy-body-size" in p for p in broken(lambda d: d["metadata"]["annotations"].pop("nginx.ingress.kubernetes.io/proxy-body-size")))


# --- alert rules --------------------------------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules(tmp_path: Path) -> None:
    ok = _promtool("check", "rules", str(RULES))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    broken = tmp_path / "broken.rules.yaml"
    broken.write_text(RULES.read_text().replace("> 0.05", "> > 0.05", 1))
    assert _promtool("check", "rules", str(broken)).returncode != 0


def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    """Each alert fires on Ray-shaped series (cloudtuner.rules.test.yaml)."""
    ok = _promtool("test", "rules", str(RULES_TEST))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # The same tests against rules that name a counter without Ray's _total: they fail.
    (tmp_path / "cloudtuner.rules.yaml").write_text(
        RULES.read_text().replace("ray_cloudtuner_ledger_failing", "cloudtuner_ledger_failing"))
    (tmp_path / "cloudtuner.rules.test.yaml").write_text(RULES_TEST.read_text())
    assert _promtool("test", "rules", str(tmp_path / "cloudtuner.rules.test.yaml")).returncode != 0


def test_customer_remote_write_rules_check(tmp_path: Path) -> None:
    ok = _promtool("check", "rules", str(CUSTOMER_RULES))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 rules found" in ok.stdout

    broken = tmp_path / "broken.rules.yaml"
    broken.write_text(CUSTOMER_RULES.read_text().replace("group_right", "group_rihgt", 1))
    assert _promtool("check", "rules", str(broken)).returncode != 0


def test_customer_remote_write_alerts_fire_and_stay_quiet(tmp_path: Path) -> None:
    """KubecostRemoteWriteFailing, …Behind and …NeverSent on a Prometheus sender's series
    (cloudtuner-remote-write.rules.test.yaml: when each fires, and when not)."""
    names = {rule["alert"] for group in yaml.safe_load(CUSTOMER_RULES.read_text())["groups"] for rule in group["rules"]}
    assert names == {"KubecostRemoteWriteFailing", "KubecostRemoteWriteBehind", "KubecostRemoteWriteNeverSent"}
    ok = _promtool("test", "rules", str(CUSTOMER_RULES_TEST))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # The same tests against rules that read only the design's (pre-2.23) name of failed
    # samples, or every queue rather than cloudtuner's: they fail.
    for wrong in (
        CUSTOMER_RULES.read_text().replace("prometheus_remote_storage_samples_failed_total", "prometheus_remote_storage_failed_samples_total"),
        CUSTOMER_RULES.read_text().replace('{remote_name="cloudtuner"}', ""),
    ):
        (tmp_path / CUSTOMER_RULES.name).write_text(wrong)
        (tmp_path / CUSTOMER_RULES_TEST.name).write_text(CUSTOMER_RULES_TEST.read_text())
        assert _promtool("test", "rules", str(tmp_path / CUSTOMER_RULES_TEST.name)).returncode != 0


def test_customer_rules_watch_the_queue_the_customer_config_names() -> None:
    """The rules select remote_name="cloudtuner": the name the remote_write block gives its queue."""
    config = yaml.safe_load((CONFIG / "customer" / "prometheus-remote-write.yaml").read_text())
    assert [queue["name"] for queue in config["remote_write"]] == ["cloudtuner"]
    exprs = [rule["expr"] for group in yaml.safe_load(CUSTOMER_RULES.read_text())["groups"] for rule in group["rules"]]
    assert all('remote_name="cloudtuner"' in expr for expr in exprs)


def exported_metric_names() -> set[str]:
    """What Prometheus scrapes for every ray.util.metrics the code defines."""
    suffixes = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_count", "_sum"]}
    names = set()
    for path in [ROOT / "actors" / "metrics.py", *sorted((ROOT / "serve_apps").glob("*/metrics.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in suffixes and node.args and isinstance(node.args[0], ast.Constant)):
                names |= {f"ray_{node.args[0].value}{s}" for s in suffixes[node.func.attr]}
    return names


def unknown_metrics(rules_text: str) -> set[str]:
    return set(re.findall(r"\b(?:ray_)?cloudtuner_\w+", rules_text)) - exported_metric_names()


def test_rules_use_the_metric_names_ray_exports() -> None:
    exported = exported_metric_names()
    assert {"ray_cloudtuner_ingress_requests_total", "ray_cloudtuner_ledger_lag_seconds",
            "ray_cloudtuner_ingress_forward_seconds_count"} <= exported
    rules = yaml.safe_load(RULES.read_text())
    exprs = "\n".join(rule["expr"] for group in rules["groups"] for rule in group["rules"])
    assert unknown_metrics(exprs) == set()
    assert unknown_metrics("rate(ray_cloudtuner_ingress_requests[5m])") == {"ray_cloudtuner_ingress_requests"}
    assert unknown_metrics("cloudtuner_ledger_failing == 1") == {"cloudtuner_ledger_failing"}


# --- the image ----------------------------------------------------------------------------


def dockerfile_problems(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    problems = []
    if not lines or lines[0] != "FROM python:3.11-slim":
        problems.append("base is not python:3.11-slim")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    if not users or not users[-1].isdigit() or users[-1] == "0":
        problems.append("does not end as a numeric non-root USER")
    body = " ".join(lines)
    for needle in ("pip install .", "npm ci", "apt-get install", "nodejs", "npm"):
        if needle not in body:
            problems.append(f"missing {needle!r}")
    return problems


def test_dockerfile() -> None:
    text = (CONFIG / "Dockerfile").read_text()
    assert dockerfile_problems(text) == []
    assert dockerfile_problems(text.replace("USER 10001", "USER root"))
    assert dockerfile_problems(text.replace("npm ci", "npm install"))
