"""Rightsizing: recommended container requests and what they save, per tenant, as Ray tasks.

    ray job submit --working-dir . -- python -m jobs.rightsizing \\
        [--organization-id ID | --cloud-account-id ID ...] [--window-days 7] [--algorithm max|quantile] \\
        [--quantile 0.95] [--target-cpu-utilization 0.7] [--target-memory-utilization 0.7] [--end UNIX_SECONDS] \\
        [--recommender vpa|request-sizing-v2]

Without an account or organization, every live Kubernetes account. Each tenant is one Ray
task, all in parallel: it reads the tenant's container gauges and node prices over the
window from the TSDB (PromQL that always carries ``tenant_id``), and its usage series
(``k8scost.usage_series``) a point a minute per container: cAdvisor's CPU counter and
working-set peak, kube-state-metrics' restarts, last termination reason and memory requests. A group with
usage samples is sized on them by the recommender of ``--recommender`` (``vpa`` by default,
``k8scost.usage_sizing``): CPU usage from the counter with resets and gaps left out
(``usage_sizing.cpu_usage``), an OOM kill where the restart count rises while the last
termination reported is ``OOMKilled``, at the memory request then. A group without any is
sized on the exporter's hourly averages as before, and says so (``sized_on``). The job
computes the recommendations (``k8scost.rightsizing`` holds the formulas) and replaces the
tenant's documents in MongoDB ``k8s_rightsizing``. Each tenant's stage times (query, compute,
MongoDB write) and the run's totals go to the job log, which the Ray dashboard shows.
Exit status: 0 every tenant done, 1 some failed or MongoDB or Ray unreachable (run again:
a run replaces, never adds), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.util import metrics

from jobs.tenant_runs import each_tenant, run_job
from k8scost import promql, raylocal, usage_sizing
from k8scost.rightsizing import (
    Algorithm,
    GroupKey,
    Observed,
    Params,
    ParamsError,
    Replica,
    Status,
    UsageSized,
    group,
    group_key,
    recommend_all,
)
from k8scost.settings import DAY, RightsizingSettings, SettingsError, StoreSettings, from_env
from k8scost.stores.accounts import Account
from k8scost.stores.mongo import connect
from k8scost.stores.rightsizing import RightsizingStore, document
from k8scost.tsdb import TsdbClient
from k8scost.usage_sizing import Oom, Recommender, ReplicaUsage

log = logging.getLogger("jobs.rightsizing")

CONTAINER_LABELS = ("cluster", "namespace", "pod", "container", "node", "controller_kind", "controller")
NODE_LABELS = ("cluster", "node")

STAGE_SECONDS = metrics.Histogram(
    "cloudtuner_rightsizing_stage_seconds",
    description="Time of one stage (query, compute, write) of one tenant's rightsizing.",
    boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    tag_keys=("stage",),
)
LAST_SUCCESS = metrics.Gauge(
    "cloudtuner_rightsizing_last_success_timestamp_seconds",
    description="When the tenant's recommendations were last written.",
    tag_keys=("tenant",),
)
FAILURES = metrics.Counter(
    "cloudtuner_rightsizing_failures", description="Tenants whose rightsizing failed (after Ray's retries)."
)


# --- one tenant --------------------------------------------------------------------------------


def tenant_queries(tenant_id: str, params: Params) -> dict[str, str]:
    """The instant PromQL queries of one tenant, evaluated at the window's end.

    ``max by`` the identifying labels drops the scrape's own (job, instance, a Prometheus
    replica's label), so a series written twice by an HA pair is counted once.
    """
    window = f"[{promql.window(params.window_days * DAY)}]"
    by = f"max by ({', '.join(CONTAINER_LABELS)})"

    def sel(metric: str) -> str:
        return promql.rightsizing_selector(metric, tenant_id)

    def container(resource: str, statistic: str) -> str:
        return sel(promql.CONTAINER_METRICS[resource, statistic])

    def statistic(resource: str) -> str:
        if params.algorithm is Algorithm.QUANTILE:
            return f"{by} (quantile_over_time({params.quantile!r}, {container(resource, 'usage_average')}{window}))"
        return f"{by} (max_over_time({container(resource, 'usage_max')}{window}))"

    queries = {"running": f"{by} ({container('cpu', 'request')})"}  # exported at the end (5-minute lookback)
    for resource in ("cpu", "memory"):
        usage, request = container(resource, "usage_average"), container(resource, "request")
        queries[f"{resource}_statistic"] = statistic(resource)
        queries[f"{resource}_usage_sum"] = f"{by} (sum_over_time({usage}{window}))"
        queries[f"{resource}_request_sum"] = f"{by} (sum_over_time({request}{window}))"
        queries[f"{resource}_request"] = f"{by} (last_over_time({request}{window}))"
    node_by = f"max by ({', '.join(NODE_LABELS)})"
    for resource, metric in promql.NODE_PRICE_METRICS.items():
        queries[f"{resource}_price"] = f"{node_by} (last_over_time({sel(metric)}{window}))"
    return queries


# --- usage series: per container, a point a minute ------------------------------------------

USAGE_LABELS = ("cluster", "namespace", "pod", "container")
# The VPA recommender samples usage once a minute (--recommender-interval 1m): the TSDB gives
# each container's series a point a minute, not its raw 15 s samples (4× fewer to carry).
USAGE_STEP_SECONDS = 60
# A range query covers at most this much of the window (360 points a series; the TSDB allows 11,000).
USAGE_CHUNK_SECONDS = 6 * 3600
OOM_KILLED = "OOMKilled"


def usage_queries(tenant_id: str) -> dict[str, str]:
    """The range queries of the usage the job reads, by name; each a point per container at every step t.

    Over (t − step, t]: the counters' (CPU, restarts) and gauges' last sample, the working
    set's peak. A scrape target keeps its offset in the scrape interval, so consecutive last
    samples of a counter are one step apart (a missed scrape aside): ``usage_sizing.cpu_usage``
    gets the counter as sampled. ``max by`` the container drops the scrape's own labels.
    """
    window = promql.window(USAGE_STEP_SECONDS)
    by = f"max by ({', '.join(USAGE_LABELS)})"

    def last(metric: str, **matchers: str) -> str:
        return f"{by} (last_over_time({promql.usage_selector(metric, tenant_id, **matchers)}[{window}]))"

    return {
        "cpu": last("container_cpu_usage_seconds_total"),
        "memory": f"{by} (max_over_time("
        f"{promql.usage_selector('container_memory_working_set_bytes', tenant_id)}[{window}]))",
        "restarts": last("kube_pod_container_status_restarts_total"),
        "oom": last("kube_pod_container_status_last_terminated_reason", reason=OOM_KILLED),
        "memory_request": last("kube_pod_container_resource_requests", resource="memory", unit="byte"),
    }


Samples = list[tuple[float, float]]


async def query_usage(tsdb: TsdbClient, tenant_id: str, start: int, end: int) -> dict[str, dict[tuple[str, ...], Samples]]:
    """Each usage query's points over (start, end] (at start + step, …, ≤ end) by container, in time order."""
    step = USAGE_STEP_SECONDS
    points = USAGE_CHUNK_SECONDS // step
    chunks = [(first, min(end, first + (points - 1) * step)) for first in range(start + step, end + 1, points * step)]
    queries = usage_queries(tenant_id)
    answers = await asyncio.gather(*(
        tsdb.range(query, first, last, step) for query in queries.values() for first, last in chunks
    ))
    out: dict[str, dict[tuple[str, ...], Samples]] = {}
    for index, name in enumerate(queries):
        by_container: dict[tuple[str, ...], Samples] = {}
        for answer in answers[index * len(chunks):(index + 1) * len(chunks)]:
            for found in answer["result"]:
                key = tuple(found["metric"].get(label, "") for label in USAGE_LABELS)
                if key[3]:  # no container: a pod's cgroup
                    by_container.setdefault(key, []).extend((float(t), float(v)) for t, v in found["values"])
        out[name] = {key: sorted(points) for key, points in by_container.items()}
    return out


def ooms(restarts: Samples, oom_reported: Samples, memory_request: Samples) -> list[Oom]:
    """An OOM kill at each point where the restart count rises while the last termination
    reported (until the count's next point) is OOMKilled, at the memory request then (0 when
    unknown: the kill's bump then rests on the samples)."""
    reported = sorted(t for t, _ in oom_reported)
    kills = []
    for i in range(1, len(restarts)):
        (_, before), (at, count) = restarts[i - 1], restarts[i]
        until = restarts[i + 1][0] if i + 1 < len(restarts) else math.inf
        if count > before and any(at <= t < until for t in reported):
            requests = [v for t, v in memory_request if t <= at]
            kills.append(Oom(at, requests[-1] if requests else 0.0))
    return kills


def replica_usage(usage: dict[str, dict[tuple[str, ...], Samples]]) -> dict[tuple[str, ...], ReplicaUsage]:
    """Each container with CPU or memory samples: its usage (``k8scost.usage_sizing``)."""
    out = {}
    for key in sorted(set(usage["cpu"]) | set(usage["memory"])):
        out[key] = ReplicaUsage(
            usage_sizing.cpu_usage(usage["cpu"].get(key, [])),
            usage["memory"].get(key, []),
            ooms(usage["restarts"].get(key, []), usage["oom"].get(key, []), usage["memory_request"].get(key, [])),
        )
    return out


def usage_sized(
    groups: dict[GroupKey, list[tuple[str, ...]]], usage: dict[tuple[str, ...], ReplicaUsage],
    recommender: Recommender, params: Params,
) -> dict[GroupKey, UsageSized]:
    """The recommender's requests for each group that has usage samples of any of its containers
    (``groups``: the containers, by ``USAGE_LABELS``, of each group).

    The usage series carry ``cluster`` only if the customer's Prometheus adds it (an external
    label; the shipped configuration does not: an account is one cluster), so a container's
    samples without it are its cluster's.
    """
    containers_per_pod: dict[tuple[str, ...], int] = {}
    for key in usage:
        containers_per_pod[key[:3]] = containers_per_pod.get(key[:3], 0) + 1

    def own(container: tuple[str, ...]) -> tuple[str, ...] | None:
        return next((key for key in (container, ("", *container[1:])) if key in usage), None)

    sized = {}
    for group_key_, containers in groups.items():
        found = [key for c in containers if (key := own(c)) is not None]
        replicas = [usage[key] for key in found]
        if replicas:
            per_pod = max(containers_per_pod[key[:3]] for key in found)
            target = usage_sizing.recommend(recommender, replicas, params, containers_per_pod=per_pod)
            sized[group_key_] = UsageSized(str(recommender), target.cpu_cores, target.memory_bytes)
    return sized


# --- the exporter's gauges ---------------------------------------------------------------------

Vector = dict[tuple[str, ...], float]


def _vector(answer: dict[str, Any], labels: tuple[str, ...]) -> Vector:
    """An instant vector as label values → value; NaN and infinities (no data) left out."""
    values: Vector = {}
    for series in answer["result"]:
        value = float(series["value"][1])
        if math.isfinite(value):
            values[tuple(series["metric"].get(label, "") for label in labels)] = value
    return values


async def query_tenant(tsdb: TsdbClient, tenant_id: str, params: Params, end: int) -> dict[str, Vector]:
    """Every query's answer at ``end``, run concurrently."""
    queries = tenant_queries(tenant_id, params)
    answers = await asyncio.gather(*(tsdb.instant(query, end) for query in queries.values()))
    return {
        name: _vector(answer, NODE_LABELS if name.endswith("_price") else CONTAINER_LABELS)
        for name, answer in zip(queries, answers)
    }


def containers_by_group(answers: dict[str, Vector]) -> dict[GroupKey, list[tuple[str, ...]]]:
    """The containers (by ``USAGE_LABELS``) of each group seen in the gauges."""
    containers: dict[GroupKey, list[tuple[str, ...]]] = {}
    seen = {labels for name, vector in answers.items() if not name.endswith("_price") for labels in vector}
    for labels in sorted(seen):
        cluster, namespace, pod, container, _, controller_kind, controller = labels
        members = containers.setdefault(group_key(cluster, namespace, pod, container, controller_kind, controller), [])
        if labels[:4] not in members:
            members.append(labels[:4])
    return containers


def replicas_by_group(answers: dict[str, Vector]) -> dict[GroupKey, list[Replica]]:
    """The replicas (one per pod's container seen in any answer), gathered by group."""
    seen = {labels for name, vector in answers.items() if not name.endswith("_price") for labels in vector}
    running = answers["running"]

    def observed(resource: str, labels: tuple[str, ...]) -> Observed:
        cluster, node = labels[0], labels[4]
        return Observed(
            statistic=answers[f"{resource}_statistic"].get(labels),
            usage_sum=answers[f"{resource}_usage_sum"].get(labels, 0.0),
            request_sum=answers[f"{resource}_request_sum"].get(labels, 0.0),
            request=answers[f"{resource}_request"].get(labels),
            price=answers[f"{resource}_price"].get((cluster, node)),
        )

    pairs = []
    for labels in sorted(seen):
        cluster, namespace, pod, container, node, controller_kind, controller = labels
        replica = Replica(pod, node, labels in running, observed("cpu", labels), observed("memory", labels))
        pairs.append((group_key(cluster, namespace, pod, container, controller_kind, controller), replica))
    return group(pairs)


@dataclasses.dataclass(frozen=True)
class TenantReport:
    """What one tenant's run did, and how long each stage took."""

    account_id: str
    groups: int
    replicas: int
    over_provisioned: int
    under_provisioned: int
    monthly_savings: float  # summed over the over-provisioned groups
    extra_monthly_cost: float  # summed over the under-provisioned groups
    query_seconds: float
    compute_seconds: float
    write_seconds: float
    sized_on_usage: int  # groups sized on their usage series; the others on hourly averages

    @property
    def total_seconds(self) -> float:
        return self.query_seconds + self.compute_seconds + self.write_seconds


async def rightsize_tenant(
    account_id: str, organization_id: str, params: Params, end: int, tsdb: TsdbClient, store: RightsizingStore,
    recommender: Recommender = Recommender.VPA,
) -> TenantReport:
    """Recommendations of one tenant over the window ending at ``end``, written to ``store``."""
    started = time.perf_counter()
    answers, usage = await asyncio.gather(
        query_tenant(tsdb, account_id, params, end), query_usage(tsdb, account_id, end - params.window_days * DAY, end)
    )
    queried = time.perf_counter()
    groups = replicas_by_group(answers)
    sized = usage_sized(containers_by_group(answers), replica_usage(usage), recommender, params)
    recommendations = recommend_all(groups, params, sized)
    run = {
        **params.document(),
        "recommender": str(recommender),
        "window_start": end - params.window_days * DAY,
        "window_end": end,
        "computed_at": int(time.time()),
    }
    documents = [document(account_id, organization_id, r, run) for r in recommendations]
    computed = time.perf_counter()
    await store.ensure_indexes()
    await store.replace(account_id, documents)
    written = time.perf_counter()
    report = TenantReport(
        account_id,
        groups=len(recommendations),
        replicas=sum(len(replicas) for replicas in groups.values()),
        over_provisioned=sum(1 for r in recommendations if r.status is Status.OVER),
        under_provisioned=sum(1 for r in recommendations if r.status is Status.UNDER),
        monthly_savings=sum(r.monthly_savings or 0.0 for r in recommendations if r.status is Status.OVER),
        extra_monthly_cost=sum(r.extra_monthly_cost for r in recommendations),
        query_seconds=queried - started,
        compute_seconds=computed - queried,
        write_seconds=written - computed,
        sized_on_usage=len(sized),
    )
    for stage, seconds in (("query", report.query_seconds), ("compute", report.compute_seconds),
                           ("write", report.write_seconds)):
        STAGE_SECONDS.observe(seconds, tags={"stage": stage})
    LAST_SUCCESS.set(time.time(), tags={"tenant": account_id})
    return report


async def run_tenant(
    account_id: str, organization_id: str, params: Params, end: int, stores: StoreSettings, settings: RightsizingSettings
) -> TenantReport:
    """``rightsize_tenant`` with its own TSDB client and MongoDB connection (one per event loop)."""
    tsdb = TsdbClient(stores.tsdb_url, timeout=settings.tsdb_timeout, connections=16)
    db = connect(stores)
    try:
        return await rightsize_tenant(account_id, organization_id, params, end, tsdb, RightsizingStore(db),
                                      Recommender(settings.recommender))
    finally:
        await tsdb.aclose()
        db.client.close()


@ray.remote(max_retries=2, retry_exceptions=True)
def rightsize_task(
    account_id: str, organization_id: str, params: Params, end: int, stores: StoreSettings, settings: RightsizingSettings
) -> TenantReport:
    """One tenant, on a Ray worker. Retried on errors (a TSDB or MongoDB outage): a run replaces."""
    return asyncio.run(run_tenant(account_id, organization_id, params, end, stores, settings))


# --- the run -----------------------------------------------------------------------------------


async def rightsize(
    accounts: Sequence[Account], params: Params, end: int, stores: StoreSettings, settings: RightsizingSettings
) -> dict[str, Any]:
    """A Ray task per account, all submitted at once; the run's summary."""
    started = time.perf_counter()
    reports, failed = await each_tenant(
        "rightsizing", accounts,
        lambda a: rightsize_task.options(num_cpus=settings.task_cpus, name=f"rightsizing {a.id}").remote(
            a.id, a.organization_id, params, end, stores, settings),
        lambda r: (
            f"{r.groups} groups ({r.replicas} replicas; {r.sized_on_usage} sized on usage series, the others on "
            f"hourly averages), {r.over_provisioned} over- and {r.under_provisioned} under-provisioned, savings "
            f"{r.monthly_savings:.2f} USD/month, extra cost {r.extra_monthly_cost:.2f}; query {r.query_seconds:.2f} s, "
            f"compute {r.compute_seconds:.2f} s, write {r.write_seconds:.2f} s"
        ),
        FAILURES,
    )
    return {
        "accounts": len(accounts),
        "done": len(reports),
        "failed": failed,
        "params": params.document(),
        "window_end": end,
        "groups": sum(r.groups for r in reports),
        "sized_on_usage": sum(r.sized_on_usage for r in reports),
        "replicas": sum(r.replicas for r in reports),
        "monthly_savings": round(sum(r.monthly_savings for r in reports), 2),
        "extra_monthly_cost": round(sum(r.extra_monthly_cost for r in reports), 2),
        # Stage times are summed over tenants, whose tasks overlap; "seconds" is the run's wall time.
        "query_seconds": round(sum(r.query_seconds for r in reports), 3),
        "compute_seconds": round(sum(r.compute_seconds for r in reports), 3),
        "write_seconds": round(sum(r.write_seconds for r in reports), 3),
        "seconds": round(time.perf_counter() - started, 3),
    }


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Params]:
    """The arguments and checked parameters; exits 2 naming the flag at fault."""
    parser = argparse.ArgumentParser(prog="python -m jobs.rightsizing", description=__doc__.splitlines()[0])
    try:
        defaults = from_env(RightsizingSettings)
    except SettingsError as exc:
        parser.error(str(exc))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cloud-account-id", action="append", metavar="ID", help="an account to rightsize (repeatable)")
    which.add_argument("--organization-id", metavar="ID", help="every Kubernetes account of the organization")
    parser.add_argument("--window-days", type=int, default=defaults.window_days,
                        help=f"days of usage looked at (default {defaults.window_days})")
    parser.add_argument("--algorithm", choices=[str(a) for a in Algorithm], default=defaults.algorithm,
                        help=f"size on the peak usage or a quantile of it (default {defaults.algorithm})")
    parser.add_argument("--quantile", type=float, default=defaults.quantile,
                        help=f"quantile of the usage samples, for --algorithm quantile (default {defaults.quantile})")
    parser.add_argument("--target-cpu-utilization", type=float, default=defaults.target_cpu_utilization,
                        help=f"usage ÷ recommended CPU request (default {defaults.target_cpu_utilization})")
    parser.add_argument("--target-memory-utilization", type=float, default=defaults.target_memory_utilization,
                        help=f"usage ÷ recommended memory request (default {defaults.target_memory_utilization})")
    parser.add_argument("--recommender", choices=[str(r) for r in Recommender], default=defaults.recommender,
                        help="how containers with usage series are sized (default "
                        f"{defaults.recommender}); the others on the exporter's hourly averages")
    parser.add_argument("--end", type=int, default=None, metavar="UNIX_SECONDS",
                        help="end of the window (default: now), to compute as of a past instant")
    parser.add_argument("--address", default=raylocal.default_address(),
                        help="Ray GCS address, host:port (default: $RAY_ADDRESS, as `ray job submit` sets it, "
                             f"else {raylocal.LOCAL_ADDRESS})")
    args = parser.parse_args(argv)
    if args.recommender not in {str(r) for r in Recommender}:  # argparse checks a given flag, not its default
        parser.error(f"--recommender / RIGHTSIZING_RECOMMENDER: {args.recommender!r} is not one of {', '.join(Recommender)}")
    now = int(time.time())
    if args.end is None:
        args.end = now
    elif not 0 < args.end <= now + 60:
        parser.error(f"--end: {args.end} is not a Unix time up to now ({now}): future usage is not known yet")
    try:
        params = Params(args.window_days, args.algorithm, args.quantile, args.target_cpu_utilization,
                        args.target_memory_utilization)
    except ParamsError as exc:
        env = RightsizingSettings.__dataclass_fields__[exc.param].metadata["env"]
        parser.error(f"--{exc.param.replace('_', '-')} / {env}: {exc.reason}")
    return args, params


def main(argv: Sequence[str] | None = None) -> int:
    args, params = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    stores = from_env(StoreSettings)
    settings = dataclasses.replace(from_env(RightsizingSettings), recommender=args.recommender)

    async def run(accounts: list[Account]) -> dict[str, Any]:
        log.info("rightsizing: %d tenants, window %d days, recommender %s on usage series, algorithm %s on hourly "
                 "averages", len(accounts), params.window_days, settings.recommender, params.algorithm)
        summary = await rightsize(accounts, params, args.end, stores, settings)
        log.info("rightsizing: %d/%d tenants in %.2f s (stages summed over tenants: query %.2f s, compute %.2f s, "
                 "write %.2f s)", summary["done"], summary["accounts"], summary["seconds"], summary["query_seconds"],
                 summary["compute_seconds"], summary["write_seconds"])
        return summary

    return run_job("rightsizing", stores, args.cloud_account_id, args.organization_id, args.address, run)

if __name__ == "__main__":
    sys.exit(main())
