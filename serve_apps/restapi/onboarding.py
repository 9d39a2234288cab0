"""The configuration a customer pastes into its cluster for a new cloud account.

Built from the same sources as the real files, so it cannot drift from them: the remote
write block follows ``cluster_config/customer/prometheus-remote-write.yaml`` (its
``write_relabel_configs`` are ``k8scost.usage_series``'s, as the file's: tests/test_usage_series.py
checks both), the exporter
env is every ``ExporterSettings`` variable with its default, the account's id as
``TENANT_ID`` and the in-cluster Kubecost URL of ``exporter-deployment.yaml``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

from k8scost.settings import ExporterSettings
from k8scost.stores.accounts import Account
from k8scost.usage_series import KSM_ALLOWLISTS, write_relabel_configs

# Where the exporter reaches Kubecost in a stock Helm install (exporter-deployment.yaml).
IN_CLUSTER_KUBECOST_URL = "http://kubecost-cost-analyzer.kubecost.svc:9090"
# Mounted from a Kubernetes Secret: the password never sits in the Prometheus config.
PASSWORD_FILE = "/etc/prometheus/secrets/cloudtuner/password"
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def remote_write_yaml(account: Account, write_url: str, password: str | None = None) -> str:
    """The ``remote_write`` section of the customer's prometheus.yml, ready to paste.

    With ``password`` (right after creation or rotation, the only times it is known) it is
    inline, so the block works as pasted; otherwise Prometheus reads it from a file.
    """
    auth = {"username": account.id, "password": password} if password else {
        "username": account.id, "password_file": PASSWORD_FILE
    }
    block = {
        "remote_write": [
            {
                "name": "cloudtuner",
                "url": write_url,
                "remote_timeout": "30s",
                "headers": {"Cloud-Account-Id": account.id},
                "basic_auth": auth,
                # The exporter's series and the curated usage families, without their
                # high-cardinality labels (id, image, name, uid, …).
                "write_relabel_configs": write_relabel_configs(),
                "queue_config": {
                    "capacity": 30000,
                    "min_shards": 1,
                    "max_shards": 8,
                    # Fewer, larger batches: the ingress's CPU per sample halves.
                    "max_samples_per_send": 10000,
                    # Prometheus' default: a small cluster's usage series wait at most 5 s
                    # for a batch, so the Live tab's newest point stays under a minute old.
                    "batch_send_deadline": "5s",
                    "min_backoff": "1s",
                    "max_backoff": "1m",
                    # The ingress answers 429 when a tenant sends too fast; without this
                    # Prometheus 2.x drops the batch instead of retrying it.
                    "retry_on_http_429": True,
                },
            }
        ]
    }
    where = (
        f"# The password is inline: better, put it in a Secret mounted at {PASSWORD_FILE}\n"
        "# and replace `password` by `password_file` pointing there.\n"
        if password
        else f"# Put the account's password in a Secret mounted at {PASSWORD_FILE}.\n"
    )
    header = (f"# CloudTuner cloud account {account.id} ({account.name}): merge into prometheus.yml.\n" + where
              + "# Start kube-state-metrics with " + " ".join(KSM_ALLOWLISTS) + "\n"
              "# (node types and pods that cannot move, for the cluster rightsizing and spot recommendations).\n")
    return header + yaml.safe_dump(block, sort_keys=False)


def exporter_env(account: Account) -> dict[str, str]:
    """The allocation-exporter Deployment's environment for this account."""
    env = {f.metadata["env"]: str(f.default) for f in dataclasses.fields(ExporterSettings)}
    env["KUBECOST_URL"] = IN_CLUSTER_KUBECOST_URL
    env["TENANT_ID"] = account.id
    # The `cluster` label; label values may hold anything, but a plain name reads better.
    env["CLUSTER_NAME"] = _LABEL_UNSAFE.sub("-", account.name).strip("-") or account.id
    return env


def configuration(account: Account, write_url: str, password: str | None = None) -> dict[str, Any]:
    return {
        "prometheus_remote_write": remote_write_yaml(account, write_url, password),
        "exporter_env": exporter_env(account),
    }
