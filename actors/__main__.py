"""Start, inspect or stop the tenant supervisor on a running Ray cluster.

    python -m actors start  [--address HOST:PORT]        # idempotent; prints the report
    python -m actors status [--address ...]
    python -m actors stop   [--address ...]              # the supervisor and every tenant host
"""

from __future__ import annotations

import argparse
import json
import sys

import ray

from actors.supervisor import SUPERVISOR_NAME, TenantSupervisor
from actors.tenant import TenantConfig
from k8scost import raylocal


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m actors", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "status", "stop"))
    parser.add_argument("--address", default=raylocal.default_address(),
                        help=f"Ray GCS address, host:port (default: $RAY_ADDRESS, else {raylocal.LOCAL_ADDRESS})")
    args = parser.parse_args()
    config = TenantConfig.from_env()
    try:
        raylocal.connect(args.address, config.ledger.ray_namespace)
    except raylocal.RayUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "start":
        supervisor = TenantSupervisor.options(
            name=SUPERVISOR_NAME, lifetime="detached", get_if_exists=True
        ).remote(config)
        print(json.dumps(ray.get(supervisor.reconcile.remote()), indent=2, default=str))
        return 0
    try:
        supervisor = ray.get_actor(SUPERVISOR_NAME)
    except ValueError:
        print("error: no tenant supervisor is running", file=sys.stderr)
        return 1
    if args.command == "status":
        print(json.dumps(ray.get(supervisor.status.remote()), indent=2, default=str))
        return 0
    hosts = ray.get(supervisor.status.remote())["hosts"]
    ray.kill(supervisor, no_restart=True)
    for name in hosts:
        try:
            ray.kill(ray.get_actor(name), no_restart=True)
        except ValueError:
            pass
    print(json.dumps({"stopped": ["supervisor", *hosts], "tenants": sorted(a for t in hosts.values() for a in t)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
