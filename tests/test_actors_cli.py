"""``python -m actors``: clear errors and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from devstack.stack import ROOT

pytestmark = pytest.mark.services


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actors", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, **env})


def test_unknown_command_is_a_usage_error() -> None:
    result = run("launch")
    assert result.returncode == 2
    assert "invalid choice: 'launch'" in result.stderr


def test_no_ray_cluster_at_the_address(serve_apps: str) -> None:
    result = run("status", "--address", "127.0.0.1:1")
    assert result.returncode == 1
    assert "no Ray cluster at 127.0.0.1:1" in result.stderr


def test_status_without_a_supervisor(serve_apps: str) -> None:
    result = run("status", RAY_NAMESPACE=f"empty-{uuid.uuid4().hex[:8]}")
    assert result.returncode == 1
    assert "no tenant supervisor is running" in result.stderr
