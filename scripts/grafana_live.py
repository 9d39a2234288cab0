"""Writes cluster_config/grafana/cloudtuner-live.json: the live view as a Grafana dashboard.

One panel per query of ``k8scost.promql.LIVE_QUERIES``, with the very PromQL Metroculus's
``k8s_live`` runs, for the tenant of the ``tenant_id`` variable over the dashboard's time
range (``$__range``), on a Prometheus-type data source picked by the ``datasource`` variable
(Thanos Query). Run it after changing the queries; tests/test_live.py checks the file is current.

    .venv/bin/python scripts/grafana_live.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from k8scost.promql import LIVE_MAX_SERIES, LIVE_QUERIES, PART_LABEL, live_promql  # noqa: E402

OUTPUT = ROOT / "cluster_config" / "grafana" / "cloudtuner-live.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRAFANA_UNITS = {"cores": "short", "bytes": "bytes", "USD/hour": "currencyUSD", "ratio": "percentunit", "count": "short"}
# A gauge that every reporting cluster has: the tenants to pick from.
TENANT_VALUES = "label_values(kubecost_cluster_cpu_cost, tenant_id)"


def panel(index: int, name: str) -> dict[str, Any]:
    query = LIVE_QUERIES[name]
    legend = "/".join("{{" + label + "}}" for label in query.group_by)
    if len(query.parts) > 1:
        legend += " {{" + PART_LABEL + "}}"
    title = name.replace("_", " ").capitalize().replace("Cpu", "CPU")
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": f"{title} ({query.unit})",
        "description": f"{query.description}. The {LIVE_MAX_SERIES} largest over the time range; "
        f"Metroculus: /metroculus/v2/k8s_live?query={name}",
        "datasource": DATASOURCE,
        "gridPos": {"h": 9, "w": 12, "x": 12 * (index % 2), "y": 9 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": GRAFANA_UNITS[query.unit], "min": 0}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{
            "refId": "A",
            "datasource": DATASOURCE,
            "expr": live_promql(name, "$tenant_id", "$__range").range,
            "legendFormat": legend,
            "range": True,
            "instant": False,
        }],
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "cloudtuner-live",
        "title": "CloudTuner · Kubernetes live",
        "description": "One tenant's containers and nodes from its cAdvisor, kube-state-metrics and node-exporter "
        "series (CPU rate, working set, against requests and limits, throttling, restarts and OOM kills, node memory: "
        "kubernetes-mixin's Compute Resources / Namespace (Pods), per container), and its cost rates from the "
        "allocation-exporter's gauges.",
        "tags": ["cloudtuner", "kubernetes", "kubecost"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {"refresh_intervals": ["30s", "1m", "5m", "15m"]},
        "templating": {"list": [
            {"name": "datasource", "label": "Thanos Query", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            {"name": "tenant_id", "label": "Cloud account", "type": "query", "datasource": DATASOURCE,
             "query": {"query": TENANT_VALUES, "refId": "tenants"}, "definition": TENANT_VALUES,
             "current": {}, "hide": 0, "refresh": 2, "sort": 1, "multi": False, "includeAll": False},
        ]},
        "annotations": {"list": []},
        "panels": [panel(index, name) for index, name in enumerate(LIVE_QUERIES)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
