"""``POST /storage/api/v2/write``: Prometheus Remote-Write 1.0 into the multi-tenant TSDB.

The tenant is who authenticated, never what the body says: every series is stamped with
``tenant_id=<account id>`` and forwarded with the tenant header. Answers follow what
Prometheus senders do with them: 2xx done, 4xx dropped for good (so only for bodies that
can never succeed), 429 and 5xx retried (so for everything that may pass later): Prometheus
retries 5xx, and 429 with ``retry_on_http_429`` (the shipped configuration sets it), and
drops a batch answered any other 4xx. A tenant past its active-series limit gets 400 once the
rest of the write is stored (see ``remote_write``): retrying could only repeat the refusal.
Another method on the write path is 400 naming the method (the design's reachability check,
a plain ``curl`` of the endpoint, expects a 400); any other path is 404.
"""

from __future__ import annotations

import logging
import time

import httpx
from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from k8scost.httpclient import async_client
from k8scost.settings import IngressSettings, LedgerSettings, StoreSettings, from_env
from k8scost.stores import StoreUnavailable
from k8scost.stores.accounts import AccountStore, Credentials
from k8scost.stores.late_samples import LateSampleStore
from k8scost.stores.mongo import connect
from serve_apps.ingress import metrics
from serve_apps.ingress.auth import CredentialCache, basic_auth
from serve_apps.ingress.late import LateWrites
from serve_apps.ingress.ratelimit import TokenBuckets
from serve_apps.ingress.remote_write import Limits, TenantPolice, WriteRejected

log = logging.getLogger("ray.serve")

WRITE_PATH = "/api/v2/write"
ACCOUNT_HEADER = "cloud-account-id"
_TSDB_ERROR_TEXT_LIMIT = 1024


class _Refused(Exception):
    """Ends a request early with this answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.response = PlainTextResponse(message + "\n", status_code=status, headers=headers)


@serve.deployment(
    name="RemoteWriteIngress",
    # Serve's default of 5 requests in flight per replica serialises senders behind the
    # TSDB round trip; a replica's work is mostly waiting on it, so let many overlap.
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.5},
)
class RemoteWriteIngress:
    def __init__(self) -> None:
        self.settings = from_env(IngressSettings)
        s = self.settings
        self.limits = Limits(
            allowed_metrics=s.allowed_metrics,
            max_labels_per_series=s.max_labels_per_series,
            max_label_name_length=s.max_label_name_length,
            max_label_value_length=s.max_label_value_length,
            max_future_seconds=s.max_future_seconds,
            max_past_seconds=s.max_past_seconds,
            max_decoded_bytes=s.max_decoded_bytes,
            max_series=s.max_series_per_tenant,
            active_series_seconds=s.active_series_seconds,
        )
        db = connect(from_env(StoreSettings))
        self.credentials = CredentialCache(AccountStore(db), s.auth_cache_seconds)
        # A sample older than this on arrival can cost an hour a ledger already closed: the
        # write is put on record, and the tenant's next cycle settles (k8scost.stores.late_samples).
        self.late_after_ms = from_env(LedgerSettings).close_delay_seconds * 1000
        self.late_writes = LateWrites(LateSampleStore(db))
        self.buckets = TokenBuckets(s.tenant_samples_per_second, s.tenant_burst_samples)
        self.police_by_tenant: dict[str, TenantPolice] = {}
        self.tsdb = async_client(timeout=s.forward_timeout, connections=s.forward_connections)

    async def __call__(self, request: Request) -> Response:
        tenant = "unauthenticated"
        try:
            if not request.url.path.endswith(WRITE_PATH):
                raise _Refused(404, f"not found: {request.method} {request.url.path}; remote write is POST {WRITE_PATH}")
            if request.method != "POST":
                raise _Refused(400, f"method {request.method}: remote write is POST {WRITE_PATH} with a snappy "
                               "Remote-Write protobuf body, Cloud-Account-Id header and basic auth")
            tenant = await self._authenticate(request)
            response = await self._write(tenant, request)
        except _Refused as refused:
            response = refused.response
        except StoreUnavailable as exc:  # the account store or the TSDB: the sender retries, nothing is lost
            log.warning("%s", exc)
            response = PlainTextResponse(f"{exc.store} unavailable, retry later\n", status_code=503)
        metrics.REQUESTS.inc(tags={"tenant": tenant, "code": str(response.status_code)})
        return response

    async def _authenticate(self, request: Request) -> str:
        header = request.headers.get(ACCOUNT_HEADER, "").strip()
        auth = basic_auth(request.headers.get("authorization"))
        if not header and auth is None:
            raise _Refused(400, "missing Cloud-Account-Id header")
        challenge = {"WWW-Authenticate": 'Basic realm="cloudtuner remote write"'}
        if auth is None:
            raise _Refused(401, "missing or malformed basic auth", challenge)
        username, password = auth
        # Prometheus 2.42 as Debian builds it sends no custom headers (prometheus#13030);
        # the basic-auth username names the same account, so it stands in for the header.
        account_id = header or username
        if username != account_id:
            raise _Refused(401, "basic auth username must be the Cloud-Account-Id", challenge)
        account = await self.credentials.account(Credentials(account_id, password))
        if account is None:
            raise _Refused(401, "unknown or deleted account, or wrong password", challenge)
        return account.id

    async def _write(self, tenant: str, request: Request) -> Response:
        s = self.settings
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_body_bytes:
            raise _Refused(413, f"body of {declared} bytes is over the limit of {s.max_body_bytes}")
        body = await request.body()
        if len(body) > s.max_body_bytes:
            raise _Refused(413, f"body of {len(body)} bytes is over the limit of {s.max_body_bytes}")
        police = self.police_by_tenant.get(tenant)
        if police is None:
            police = self.police_by_tenant[tenant] = TenantPolice(tenant, self.limits)
        arrived_ms = int(time.time() * 1000)
        try:
            policed = police.police(body, arrived_ms)
        except WriteRejected as rejected:
            metrics.SAMPLES.inc(tags={"tenant": tenant, "outcome": "rejected", "reason": rejected.reason})
            raise _Refused(rejected.status, rejected.message) from None
        metrics.BODIES.inc(tags={"path": "fast" if policed.fast else "full"})
        for reason, count in policed.dropped.items():
            # Over the series limit the sender is told (400); the other drops are answered 204.
            outcome = "rejected" if reason == "series_limit" else "dropped"
            metrics.SAMPLES.inc(count, tags={"tenant": tenant, "outcome": outcome, "reason": reason})

        wait = self.buckets.take(tenant, policed.samples)
        if wait:
            metrics.SAMPLES.inc(policed.samples, tags={"tenant": tenant, "outcome": "rejected", "reason": "rate_limited"})
            raise _Refused(429, f"tenant over {s.tenant_samples_per_second:g} samples/s", {"Retry-After": str(int(wait))})
        if policed.series:
            await self._forward(tenant, policed.body)
            if policed.oldest_ms <= arrived_ms - self.late_after_ms:
                # Once the TSDB has them, before the sender hears so: a settle that began
                # before this landing reads it again (k8scost.ledger.settle_reason).
                await self.late_writes.record(tenant)
                metrics.LATE_WRITES.inc(tags={"tenant": tenant})
        # Ray's counters refuse 0: a body whose samples were all dropped (or a metadata-only
        # one, as Prometheus sends) would otherwise end in a 500.
        if policed.samples:
            metrics.SAMPLES.inc(policed.samples, tags={"tenant": tenant, "outcome": "accepted", "reason": "ok"})
        metrics.ACTIVE_SERIES.set(police.active_series, tags={"tenant": tenant})
        if policed.over_limit:
            raise _Refused(
                400,
                f"series limit: tenant has {police.active_series} active series, the limit of "
                f"{s.max_series_per_tenant} (INGRESS_MAX_SERIES_PER_TENANT); {policed.over_limit} new series "
                f"refused ({policed.dropped['series_limit']} samples), the write's other series stored. "
                f"A series stops counting {s.active_series_seconds:g} s after its last sample.",
            )
        return Response(status_code=204)

    async def _forward(self, tenant: str, body: bytes) -> None:
        s = self.settings
        started = time.perf_counter()
        try:
            answer = await self.tsdb.post(
                s.tsdb_remote_write_url,
                content=body,
                headers={
                    "Content-Encoding": "snappy",
                    "Content-Type": "application/x-protobuf",
                    "X-Prometheus-Remote-Write-Version": "0.1.0",
                    s.tenant_header: tenant,
                },
            )
        except httpx.HTTPError as exc:
            metrics.FORWARD_SECONDS.observe(time.perf_counter() - started, tags={"outcome": "unreachable"})
            raise StoreUnavailable("TSDB", f"unreachable: {exc!r}") from exc
        outcome = "ok" if answer.is_success else "error"
        metrics.FORWARD_SECONDS.observe(time.perf_counter() - started, tags={"outcome": outcome})
        if answer.status_code >= 500 or answer.status_code == 429:
            raise StoreUnavailable("TSDB", f"answered {answer.status_code}: {answer.text[:_TSDB_ERROR_TEXT_LIMIT]}")
        if not answer.is_success:
            raise _Refused(400, f"TSDB refused the write: {answer.text[:_TSDB_ERROR_TEXT_LIMIT].strip()}")


app = RemoteWriteIngress.bind()
