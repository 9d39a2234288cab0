"""The rightsizing job on usage series: what it reads of cAdvisor and kube-state-metrics (a point a
minute per container), and the
recommendations it writes, against values computed here by hand from ``k8scost.usage_sizing``'s
documented formulas.

The estate of tests/test_rightsizing.py is replayed as the exporter's hourly gauges over the last
day under a fresh tenant, and over its last 6 hours the usage series of three of its containers
are written as a customer's Prometheus sends them, a sample every 15 s:

- deployment ``web``: web-a uses 0.25 core and 1 GiB, web-b 0.5 core and 1.5 GiB;
- statefulset ``db`` (postgres): 0.7 core and 0.9 GiB, OOM-killed 3 h before the end with a
  1 GiB memory request (its CPU counter restarts from 0 under the same labels); its series
  without ``cluster``, as the shipped customer configuration sends them;
- ``debug`` and job ``batch`` have no usage series: sized on hourly averages, as before.

Every test runs the job's per-tenant function in-process (what each Ray task runs) against
the shared TSDB and a fresh MongoDB database.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from jobs.rightsizing import USAGE_STEP_SECONDS, query_usage, replica_usage, run_tenant
from k8scost.rightsizing import MIB, SIZED_ON_AVERAGES, Params
from k8scost.settings import RightsizingSettings, StoreSettings, from_env
from k8scost.stores.mongo import connect
from k8scost.stores.rightsizing import RightsizingStore
from k8scost.tsdb import TsdbClient
from k8scost.usage_sizing import Oom
from tests.test_metroculus import write
from tests.test_rightsizing import (
    BATCH,
    DAY,
    DEBUG,
    HOUR,
    MONTH,
    N1_CPU,
    N1_RAM,
    N2_CPU,
    N2_RAM,
    STEP,
    WEB,
    approx,
    assert_matches,
    on_servers,
    simulated_estate,
    write_history,
)

GIB = 1024**3
SCRAPE = 15
USAGE_SPAN = 6 * HOUR


def bucket_end(value: float, first: float) -> float:
    """The end of the VPA histogram bucket holding ``value``: s_i = f (r^i − 1) / (r − 1), r = 1.05."""
    r = 1.05
    i = 0 if value < first else int(math.log(value * (r - 1) / first + 1) / math.log(r))
    return first * (r ** (i + 1) - 1) / (r - 1)


def vpa(value: float, resource: str) -> float:
    """The VPA target of a group whose 90th percentile falls in ``value``'s bucket, one container per pod."""
    first, floor = (0.01, 0.025) if resource == "cpu" else (1e7, 250 * MIB)
    return max(floor, bucket_end(value, first) * 1.15)


@dataclass
class World:
    tenant: str
    end: int
    restart: float
    scrapes: list[int]
    stores: StoreSettings
    store: RightsizingStore


def usage_series(tenant: str, scrapes: list[int], restart: float) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    start = scrapes[0]

    def labels(name: str, pod: str, container: str, **extra: str) -> dict[str, str]:
        # db-0's without ``cluster``, as the shipped configuration sends them (no external label).
        cluster = {} if pod == "db-0" else {"cluster": "prod"}
        return {"__name__": name, "tenant_id": tenant, **cluster, "namespace": "shop", "pod": pod,
                "container": container, "job": "kubernetes-cadvisor", "instance": "10.0.0.1:10250", **extra}

    out = []
    for pod, cpu, memory in (("web-a", 0.25, 1 * GIB), ("web-b", 0.5, 1.5 * GIB)):
        out.append((labels("container_cpu_usage_seconds_total", pod, "web", cpu="total"),
                    [(t * 1000, 1000 + cpu * (t - start)) for t in scrapes]))
        out.append((labels("container_memory_working_set_bytes", pod, "web"), [(t * 1000, memory) for t in scrapes]))
        out.append((labels("kube_pod_container_status_restarts_total", pod, "web"), [(t * 1000, 0.0) for t in scrapes]))
    db = [(t * 1000, (5000 + 0.7 * (t - start)) if t < restart else 0.7 * (t - restart)) for t in scrapes]
    after = [t for t in scrapes if t >= restart]
    out += [
        (labels("container_cpu_usage_seconds_total", "db-0", "postgres", cpu="total"), db),
        (labels("container_memory_working_set_bytes", "db-0", "postgres"), [(t * 1000, 0.9 * GIB) for t in scrapes]),
        (labels("kube_pod_container_resource_requests", "db-0", "postgres", resource="memory", unit="byte"),
         [(t * 1000, 1.0 * GIB) for t in scrapes]),
        (labels("kube_pod_container_status_restarts_total", "db-0", "postgres"),
         [(t * 1000, float(t >= restart)) for t in scrapes]),
        (labels("kube_pod_container_status_last_terminated_reason", "db-0", "postgres", reason="OOMKilled"),
         [(t * 1000, 1.0) for t in after]),
    ]
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(real_services: None) -> AsyncIterator[World]:
    database = f"test_rightsizing_usage_{uuid.uuid4().hex[:12]}"
    stores = from_env(StoreSettings, mongodb_database=database)
    tenant = f"usage-{uuid.uuid4().hex[:12]}"
    end = int(time.time()) // STEP * STEP - STEP
    write_history(simulated_estate(end), tenant, end - DAY - HOUR, end)
    scrapes = list(range(end - USAGE_SPAN + SCRAPE, end + 1, SCRAPE))
    restart = end - 3 * HOUR + 7.0
    write(usage_series(tenant, scrapes, restart))
    try:
        yield World(tenant, end, restart, scrapes, stores, RightsizingStore(connect(stores)))
    finally:
        await connect(stores).client.drop_database(database)


async def run(world: World, recommender: str) -> dict[str, dict[str, Any]]:
    settings = from_env(RightsizingSettings, {"RIGHTSIZING_RECOMMENDER": recommender})
    report = await run_tenant(world.tenant, "org-usage", Params(window_days=1), world.end, world.stores, settings)
    assert report.sized_on_usage == 2
    found, _ = await world.store.find([world.tenant], {}, limit=100)
    return {doc["pod"] or doc["container"]: doc for doc in found}


def savings(web_cpu: float, web_memory: float, db_cpu: float, db_memory: float) -> dict[str, dict[str, float]]:
    """What the recommended requests save, each running replica at its node's price."""
    return {
        "web": {"cpu_monthly_savings": (2 - web_cpu) * (N1_CPU + N2_CPU) * MONTH,
                "memory_monthly_savings": (4 * GIB - web_memory) / GIB * (N1_RAM + N2_RAM) * MONTH},
        "postgres": {"cpu_monthly_savings": (0.5 - db_cpu) * N1_CPU * MONTH,
                     "memory_monthly_savings": (1 * GIB - db_memory) / GIB * N1_RAM * MONTH},
    }


@on_servers
async def test_the_job_reads_each_containers_samples_resets_and_oom_kill(world: World) -> None:
    tsdb = TsdbClient(world.stores.tsdb_url)
    try:
        usage = replica_usage(await query_usage(tsdb, world.tenant, world.end - DAY, world.end))
    finally:
        await tsdb.aclose()
    # A point a minute over the day, those with a scrape in their minute: the last 6 hours'.
    points = [t for t in range(world.end - DAY + USAGE_STEP_SECONDS, world.end + 1, USAGE_STEP_SECONDS)
              if t >= world.scrapes[0]]
    assert len(points) == USAGE_SPAN // USAGE_STEP_SECONDS
    db = usage["", "shop", "db-0", "postgres"]
    # One usage sample per pair of consecutive points, but the pair across the reset.
    assert [t for t, _ in db.cpu] == [t for t in points[:-1] if not t < world.restart <= t + USAGE_STEP_SECONDS]
    assert len(db.cpu) == len(points) - 2 and all(cores == approx(0.7) for _, cores in db.cpu)
    first_after = min(t for t in points if t >= world.restart)
    assert list(db.ooms) == [Oom(first_after, 1.0 * GIB)]
    assert db.memory == [(t, 0.9 * GIB) for t in points]
    web_a = usage["prod", "shop", "web-a", "web"]
    assert web_a.cpu == [(t, 0.25) for t in points[:-1]] and not web_a.ooms
    assert set(usage) == {("prod", "shop", "web-a", "web"), ("prod", "shop", "web-b", "web"),
                          ("", "shop", "db-0", "postgres")}


@on_servers
async def test_vpa_sizes_the_containers_with_usage_series_and_the_others_on_hourly_averages(world: World) -> None:
    docs = await run(world, "vpa")
    # web: p90 of 0.25- and 0.5-core samples, equally weighted, is 0.5's bucket; memory the peaks'.
    web_cpu, web_memory = vpa(0.5, "cpu"), vpa(1.5 * GIB, "memory")
    # db: the OOM kill's bump, max(1 GiB × 1.2, 1 GiB + 100 MiB), is the day's memory peak.
    db_cpu, db_memory = vpa(0.7, "cpu"), vpa(max(1.2 * GIB, GIB + 100 * MIB), "memory")
    expected = savings(web_cpu, web_memory, db_cpu, db_memory)
    assert_matches(docs["web"], {"recommended_cpu_cores": web_cpu, "recommended_memory_bytes": web_memory,
                                 "sized_on": "usage series (vpa)", **expected["web"],
                                 # efficiency stays the hourly averages': only the sizing moved
                                 **{k: WEB[k] for k in ("cpu_efficiency", "memory_efficiency", "current_cpu_cores")}})
    assert_matches(docs["postgres"], {"recommended_cpu_cores": db_cpu, "recommended_memory_bytes": db_memory,
                                      "sized_on": "usage series (vpa)", **expected["postgres"],
                                      "status": "under-provisioned"})
    assert_matches(docs["debug"], {**DEBUG, "sized_on": SIZED_ON_AVERAGES})
    assert_matches(docs["work"], {**BATCH, "sized_on": SIZED_ON_AVERAGES})
    assert docs["web"]["run"]["recommender"] == "vpa"


@on_servers
async def test_request_sizing_v2_sizes_the_same_samples_on_their_peaks(world: World) -> None:
    docs = await run(world, "request-sizing-v2")
    # The peak sample ÷ 0.7, the max over replicas; no OOM bump: the kill is the VPA's input only.
    web_cpu, web_memory, db_cpu, db_memory = 0.5 / 0.7, 1.5 * GIB / 0.7, 0.7 / 0.7, 0.9 * GIB / 0.7
    expected = savings(web_cpu, web_memory, db_cpu, db_memory)
    assert_matches(docs["web"], {"recommended_cpu_cores": web_cpu, "recommended_memory_bytes": web_memory,
                                 "sized_on": "usage series (request-sizing-v2)", **expected["web"]})
    assert docs["postgres"]["recommended_cpu_cores"] == pytest.approx(db_cpu, rel=1e-9)
    assert_matches(docs["postgres"], {"recommended_memory_bytes": db_memory, **expected["postgres"]})
    assert_matches(docs["debug"], {**DEBUG, "sized_on": SIZED_ON_AVERAGES})
    assert docs["web"]["run"]["recommender"] == "request-sizing-v2"
