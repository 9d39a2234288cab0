"""Connect a driver (a CLI or a job's entry point) to a Ray cluster, from any shell.

Ray's GCS listens on its node's IP address only: ``scripts/services.sh`` starts the local
Ray with ``--node-ip-address=127.0.0.1`` (its GCS listens on 127.0.0.1:6379 and nowhere
else), KubeRay starts the head with the pod's IP. Given a loopback GCS address, Ray (2.60
here) does not dial it: ``ray.init`` swaps it for this machine's routable address
(``ray._private.services.resolve_ip_for_localhost``), so a loopback-only Ray is
unreachable from a plain shell, and Ray retries for minutes. Ray keeps the loopback
address only when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: it reads that into
``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` on ``import ray`` and looks the
constant up at each resolution.

So the choice is made from where the GCS answers, not from how the address is spelled:
KubeRay sets ``RAY_ADDRESS=127.0.0.1:6379`` in the head pod, where the GCS listens on the
pod's IP and Ray's swap is what reaches it. Only a GCS answering on loopback makes this
machine a single-node, loopback cluster. The jobs import ray with the module (their
``@ray.remote`` tasks) before ``--address`` is parsed, too late for the environment
variable, so this sets the constant it feeds. Probing first also makes a Ray that is down
an error within seconds instead of Ray's minutes of retries.
"""

from __future__ import annotations

import os
import socket

_PROBE_SECONDS = 3.0
LOCAL_ADDRESS = "127.0.0.1:6379"  # the GCS of scripts/services.sh's Ray


def default_address() -> str:
    """``$RAY_ADDRESS`` (``ray job submit`` sets it for its entrypoint, KubeRay in Ray pods), else the local Ray."""
    return os.environ.get("RAY_ADDRESS") or LOCAL_ADDRESS


class RayUnavailable(Exception):
    """No Ray cluster answers at the address; the message says where it looked."""


def connect(address: str, namespace: str | None = None) -> None:
    """``ray.init`` on the cluster whose GCS is at ``address`` (host:port); RayUnavailable if none answers."""
    prepare(address)
    import ray

    try:
        ray.init(address=address, namespace=namespace, logging_level="warning")
    except ConnectionError as exc:
        raise RayUnavailable(f"no Ray cluster at {address}: {exc}") from None


def prepare(address: str) -> str:
    """Where ``ray.init(address)`` will dial, once something answers there; a GCS on loopback keeps it loopback.

    RayUnavailable when nothing answers.
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal: [::1]:6379
    if not host or not port_text.isdigit():
        raise RayUnavailable(f"no Ray cluster at {address}: the address is not host:port")
    port = int(port_text)

    # Imported here: the exporter, which customers run without Ray, imports k8scost too.
    import ray
    from ray._private import ray_constants

    swapped = host in _SWAPPED_BY_RAY
    if swapped and _answers(host, port):
        if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # a Ray that resolves addresses otherwise
            raise RuntimeError(f"Ray {ray.__version__} has no ray_constants.ENABLE_RAY_CLUSTER; see {__name__}")
        ray_constants.ENABLE_RAY_CLUSTER = False
        return _joined(host, port)
    dialed = ray.util.get_node_ip_address() if swapped else host
    if not _answers(dialed, port):
        tried = f"{host}:{port}" + (f" or {dialed}:{port}" if dialed != host else "")
        raise RayUnavailable(f"no Ray cluster at {address}: nothing answers on {tried}")
    return _joined(dialed, port)


# The hosts ray.init replaces by this machine's address (ray._common.network_utils.is_localhost).
_SWAPPED_BY_RAY = frozenset({"localhost", "127.0.0.1", "::1"})


def _joined(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=_PROBE_SECONDS).close()
    except OSError:
        return False
    return True
