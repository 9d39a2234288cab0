"""Tenants on a tenant host of the caller's own, for tests and benchmarks: the host's calls
with the tenant named, so a test reads ``tenant.cycle([day])``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import ray

from actors.host import TenantHost
from actors.tenant import TenantConfig


def start_host(config: TenantConfig, tenants: Mapping[str, str], **options: Any) -> Any:
    """A new host running ``tenants`` (account → organization), under a name of its own."""
    return TenantHost.options(**options).remote(f"test-host-{uuid.uuid4().hex[:8]}", config, dict(tenants))


class HostedTenant:
    """One tenant of ``host`` (default: a new host running only it)."""

    def __init__(self, account_id: str, organization_id: str, config: TenantConfig, host: Any = None) -> None:
        self.account_id = account_id
        self.host = host if host is not None else start_host(config, {account_id: organization_id})

    def cycle(self, days: Sequence[datetime] | None = None) -> ray.ObjectRef:
        return self.host.cycle.remote(self.account_id, days)

    def status(self) -> ray.ObjectRef:
        return self.host.status.remote(self.account_id)

    def arm_crash(self, point: str) -> ray.ObjectRef:
        return self.host.arm_crash.remote(self.account_id, point)
