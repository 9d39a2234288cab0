"""Past samples for the TSDB: what the exporter would have exported, loaded as TSDB blocks.

A customer's history cannot be remote-written (a TSDB takes only recent samples), so the
demo, the tests and the benchmarks replay it: at every ``step`` of the past range the
simulator answers the allocation API as of that instant, the exporter's own parsing turns
the answers into its gauges, and ``promtool tsdb create-blocks-from openmetrics`` makes
blocks that are uploaded to the Thanos bucket with a tenant's external labels, where the
Store Gateway finds them without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from exporter.allocation import parse_allocations, parse_management_rate
from exporter.snapshot import AGGREGATES, Snapshot, allocation_params, assets_params, build_snapshot
from devstack.simulator.allocation import allocation_response, assets_response
from devstack.simulator.customer import write_relabel
from devstack.simulator.spec import Estate
from devstack.simulator.usage import UsageExporters
from k8scost.usage_series import write_relabel_configs

# The labels the customer's Prometheus adds when it scrapes the exporter (honor_labels
# keeps the exporter's own); replayed samples carry them too, so they are the same series.
SCRAPE_LABELS = {"job": "cloudtuner-allocation-exporter", "instance": "allocation-exporter:19090"}
KSM_SCRAPE_LABELS = {"job": "kube-state-metrics", "instance": "kube-state-metrics:8080"}


def exported_at(estate: Estate, cluster: str, tenant_id: str, at: float, window: str) -> Snapshot:
    """Every gauge the exporter would have exported for ``cluster`` at time ``at``."""
    answers = {
        aggregate: parse_allocations(
            allocation_response(estate, cluster, allocation_params(window, aggregate), now=at), aggregate
        )
        for aggregate in AGGREGATES
    }
    management = parse_management_rate(assets_response(estate, cluster, assets_params(window), now=at))
    return build_snapshot(answers, management, tenant_id, cluster)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def openmetrics(
    estate: Estate, tenants: Mapping[str, str], start: float, end: float, step: float, window: str
) -> Iterator[str]:
    """OpenMetrics text of the samples at start, start+step, … < end for each cluster → tenant.

    Besides the exporter's gauges, the customer's kube-state-metrics series of the nodes'
    types and capacity and the pods' volumes (``UsageExporters.estate_series``: the
    optimizations job reads them over the last complete day), as the shipped relabelling sends
    them and the ingress stamps them; not the usage series (cAdvisor, node-exporter, the
    containers' kube-state-metrics): those are live only.

    Grouped as promtool wants it: one family after another, each series' samples in order.
    """
    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
    kube = {cluster: UsageExporters(estate, cluster) for cluster in tenants}
    relabel = write_relabel_configs()
    at = start
    while at < end:
        for cluster, tenant in tenants.items():
            for metric, values in exported_at(estate, cluster, tenant, at, window).items():
                for label_values, value in values.items():
                    labels = tuple((k, v) for k, v in zip(metric.labels, label_values) if v) + tuple(SCRAPE_LABELS.items())
                    series.setdefault((metric.name, labels), []).append((at, value))
            for scraped, value in kube[cluster].estate_series(at):
                sent = write_relabel({**scraped, **KSM_SCRAPE_LABELS}, relabel)
                if sent is not None:
                    name = sent.pop("__name__")
                    series.setdefault((name, (*sorted(sent.items()), ("tenant_id", tenant))), []).append((at, value))
        at += step
    for family in sorted({name for name, _ in series}):
        yield f"# TYPE {family} gauge\n"
        for (name, labels), samples in series.items():
            if name != family:
                continue
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            for at, value in samples:
                yield f"{name}{{{rendered}}} {value!r} {at:.3f}\n"
    yield "# EOF\n"


def write_blocks(
    estate: Estate,
    tenants: Mapping[str, str],
    start: float,
    end: float,
    blocks_dir: Path,
    *,
    step: float = 300.0,
    window: str = "1h",
    chunk_seconds: float = 86400.0,
) -> int:
    """Write TSDB blocks of the replayed samples of each cluster → tenant into
    ``blocks_dir/<tenant>/``; the number of samples.

    A tenant's blocks hold its series only: Thanos answers a block's series under the
    block's external labels (``upload_blocks``). ``step`` must stay under the TSDB's
    5-minute lookback, or the cost between two samples is lost. The range goes to promtool
    a chunk at a time, to bound memory, and the chunks are computed on every core: a month
    of a demo estate is minutes of simulator time.
    """
    if not 0 < step <= 300:
        raise ValueError("step must be in (0, 300] seconds: PromQL sees a sample for 5 minutes only")
    bounds = []
    chunk_start = start
    while chunk_start < end:
        bounds.append((chunk_start, min(end, chunk_start + chunk_seconds)))
        chunk_start += chunk_seconds
    work = [(estate, {cluster: t for cluster, t in tenants.items() if t == tenant}, a, b, step, window, blocks_dir / tenant)
            for tenant in sorted(set(tenants.values())) for a, b in bounds]
    if len(work) == 1:
        return _write_chunk(*work[0])
    with ProcessPoolExecutor(max_workers=min(len(work), os.cpu_count() or 1)) as pool:
        return sum(pool.map(_write_chunk, *zip(*work)))


def _write_chunk(estate: Estate, tenants: Mapping[str, str], start: float, end: float, step: float, window: str,
                 blocks_dir: Path) -> int:
    samples = 0
    blocks_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        text = Path(scratch) / "history.om"
        with text.open("w") as out:
            for line in openmetrics(estate, tenants, start, end, step, window):
                out.write(line)
                samples += not line.startswith("#")
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(text), str(blocks_dir)],
            check=True, capture_output=True,
        )
    return samples


def load_into(data_dir: Path, blocks_dir: Path) -> list[str]:
    """Move the blocks of ``blocks_dir`` into a stopped TSDB's ``data_dir``; their names."""
    moved = []
    for block in sorted(blocks_dir.iterdir()):
        if (block / "meta.json").exists():
            shutil.move(str(block), str(data_dir / block.name))
            moved.append(block.name)
    return moved


def upload_blocks(blocks_dir: Path, tenant_id: str, objstore_config: Path, thanos: Path) -> list[str]:
    """Upload the blocks of ``blocks_dir`` to the Thanos bucket of ``objstore_config`` as ``tenant_id``'s; their ids.

    The blocks must hold that tenant's series only (``write_blocks`` writes a directory per
    tenant): Thanos answers every series of a block under the block's external labels,
    whatever tenant_id the series carries. The blocks get the label tenant_id=<tenant> that
    Receive gives its own, without Receive's replica label, which Query and the Compactor
    merge over anyway. Thanos' own uploader writes the meta.json Thanos reads (external
    labels, raw resolution, file list) and uploads it last, so the Store Gateway takes each
    block whole at its next sync, without a restart.
    """
    subprocess.run(
        [str(thanos), "tools", "bucket", "upload-blocks", "--log.level=warn", f"--objstore.config-file={objstore_config}",
         f"--path={blocks_dir}", f"--label=tenant_id={json.dumps(tenant_id)}"],
        check=True, capture_output=True,
    )
    return json.loads((blocks_dir / "thanos.shipper.json").read_text())["uploaded"]
