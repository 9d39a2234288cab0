"""What a tenant host's process loads: every MB of it is paid once a host (issue 14)."""

from __future__ import annotations

import ssl
import subprocess
import sys

from k8scost.metroculus_client import MetroculusClient


def _ssl_context(client: MetroculusClient) -> ssl.SSLContext:
    return client._http._transport._transport._pool._ssl_context  # k8scost.httpclient's transport wraps httpx 0.28's


async def test_an_https_metroculus_is_verified_and_a_plain_http_one_loads_no_ca_bundle() -> None:
    async with MetroculusClient("https://metroculus.example/metroculus", "s") as https:
        context = _ssl_context(https)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.cert_store_stats()["x509_ca"] > 0
    async with MetroculusClient("http://127.0.0.1:8000/metroculus", "s") as plain:
        assert _ssl_context(plain).cert_store_stats()["x509_ca"] == 0


def test_the_actor_process_skips_httpx_command_line_client() -> None:
    probe = ("import sys, actors.tenant, httpx; "
             "print(sorted(m for m in ('httpx._main', 'rich', 'pygments') if sys.modules.get(m)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
