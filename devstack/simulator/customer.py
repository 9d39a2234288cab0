"""A whole simulated customer cluster as real processes: Kubecost simulator → allocation-exporter
→ the customer's Prometheus, remote-writing to our ingress with the shipped configuration.
The customer's Prometheus also scrapes the simulator's cAdvisor, kube-state-metrics and
node-exporter (``usage.PATHS``), every 15 s as a real one does, so its relabelling is exercised.

Used by the demo, the integration tests and the benchmarks, so that all three exercise the
same path a customer runs: the Prometheus configuration is ``cluster_config/customer/
prometheus-remote-write.yaml`` with its placeholders filled in.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from devstack.simulator.usage import PATHS
from devstack.stack import ROOT, free_port, wait_until_answers

REMOTE_WRITE_TEMPLATE = ROOT / "cluster_config" / "customer" / "prometheus-remote-write.yaml"


def write_relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """``labels`` after Prometheus' ``keep``, ``drop`` and ``labelkeep`` relabel actions (the ones
    the shipped ``write_relabel_configs`` use: anchored regexes, source values joined by ';');
    None when dropped. tests/test_usage_series.py checks it against a real Prometheus."""
    for config in configs:
        regex = re.compile(config["regex"])
        if config["action"] == "labelkeep":
            labels = {name: value for name, value in labels.items() if regex.fullmatch(name)}
        elif config["action"] in ("keep", "drop"):
            matched = regex.fullmatch(";".join(labels.get(name, "") for name in config["source_labels"])) is not None
            if matched != (config["action"] == "keep"):
                return None
        else:
            raise ValueError(f"relabel action {config['action']!r} is not emulated")
    return labels


def prometheus_config(
    *,
    account_id: str,
    password_file: Path,
    write_url: str,
    exporter_target: str,
    scrape_interval: float,
    spoof_tenant: str | None = None,
    usage_target: str | None = None,
    usage_interval: float = 15.0,
) -> dict[str, Any]:
    """The shipped customer configuration, placeholders filled in, tuned for short intervals;
    with ``usage_target``, scraping the usage exporters there every ``usage_interval`` s."""
    config = yaml.safe_load(REMOTE_WRITE_TEMPLATE.read_text())
    interval = f"{max(scrape_interval, 0.1):g}s"
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    [job] = config["scrape_configs"]
    job["scrape_interval"] = interval
    job["scrape_timeout"] = interval
    job["static_configs"] = [{"targets": [exporter_target]}]
    if spoof_tenant is not None:  # a hostile customer claiming another tenant's label
        job["metric_relabel_configs"] = [{"target_label": "tenant_id", "replacement": spoof_tenant}]
    if usage_target is not None:
        for source, path in PATHS.items():
            config["scrape_configs"].append({
                "job_name": source,
                "scrape_interval": f"{usage_interval:g}s",
                "scrape_timeout": f"{min(usage_interval, 10.0):g}s",
                # The exporters' own namespace, pod and node labels, not the target's.
                "honor_labels": True,
                "metrics_path": path,
                "static_configs": [{"targets": [usage_target]}],
                **({"metric_relabel_configs": job["metric_relabel_configs"]} if spoof_tenant is not None else {}),
            })
    [remote] = config["remote_write"]
    remote["url"] = write_url
    remote["headers"] = {"Cloud-Account-Id": account_id}
    remote["basic_auth"] = {"username": account_id, "password_file": str(password_file)}
    remote["queue_config"].update(batch_send_deadline="1s", min_backoff="200ms", max_backoff="2s")
    return config


@dataclasses.dataclass
class CustomerCluster:
    """One customer cluster of an estate, run as three processes under ``workdir``."""

    cluster: str
    estate_file: Path
    account_id: str
    password: str
    write_url: str
    workdir: Path
    scrape_interval: float = 1.0
    # Seconds between the exporter's polls of Kubecost; None: the scrape interval. Longer
    # than the scrape interval, Prometheus sees a withdrawn series within a scrape.
    exporter_interval: float | None = None
    allocation_window: str = "1h"
    spoof_tenant: str | None = None
    simulator_port: int = dataclasses.field(default_factory=free_port)
    exporter_port: int = dataclasses.field(default_factory=free_port)
    prometheus_port: int = dataclasses.field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    @property
    def kubecost_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator_port}"

    @property
    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.exporter_port}/metrics"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def start(self) -> CustomerCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_kubecost()
        self._spawn(
            "exporter",
            [sys.executable, "-m", "exporter", "--kubecost-url", self.kubecost_url, "--tenant-id", self.account_id,
             "--cluster-name", self.cluster, "--scrape-interval", str(self.exporter_interval or self.scrape_interval),
             "--allocation-window", self.allocation_window, "--host", "127.0.0.1", "--port", str(self.exporter_port)],
        )
        wait_until_answers(self.exporter_url, process=self.processes["exporter"])
        self.start_prometheus()
        return self

    def start_kubecost(self) -> None:
        self._spawn(
            "kubecost",
            [sys.executable, "-m", "devstack.simulator", "--cluster", self.cluster, "--spec", str(self.estate_file),
             "--host", "127.0.0.1", "--port", str(self.simulator_port)],
        )
        wait_until_answers(f"{self.kubecost_url}/healthz", process=self.processes["kubecost"])

    def start_prometheus(self) -> None:
        password_file = self.workdir / "password"
        password_file.write_text(self.password)
        config_file = self.workdir / "prometheus.yml"
        config = prometheus_config(
            account_id=self.account_id, password_file=password_file, write_url=self.write_url,
            exporter_target=f"127.0.0.1:{self.exporter_port}", scrape_interval=self.scrape_interval,
            spoof_tenant=self.spoof_tenant, usage_target=f"127.0.0.1:{self.simulator_port}",
        )
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn(
            "prometheus",
            ["prometheus", f"--config.file={config_file}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}", "--log.level=warn"],
        )
        wait_until_answers(f"{self.prometheus_url}/-/ready", process=self.processes["prometheus"])

    def stop(self, name: str | None = None) -> None:
        """Stop one process (kubecost, exporter, prometheus) or all of them."""
        for key in [name] if name else list(self.processes):
            process = self.processes.pop(key, None)
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
