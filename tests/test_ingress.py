"""The remote_write ingress on real servers: Ray Serve, FerretDB/MongoDB, Prometheus as TSDB."""

from __future__ import annotations

import math
import time
import uuid

import httpx
import pytest

from k8scost.stores.accounts import Credentials
from serve_apps.ingress.remote_write import encode
from tests import helpers
from tests.conftest import TEST_SERVE_ENV
from tests.test_remote_write import raw_body

pytestmark = pytest.mark.services


def post(body: bytes, credentials: Credentials | None, account_header: str | None = None, **headers: str) -> httpx.Response:
    if account_header is None and credentials is not None:
        account_header = credentials.account_id
    if account_header:
        headers["Cloud-Account-Id"] = account_header
    auth = (credentials.account_id, credentials.password) if credentials else None
    return httpx.post(helpers.WRITE_URL, content=body, auth=auth, headers={"Content-Encoding": "snappy", **headers}, timeout=30)


def series(marker: str, value: float = 1.0, **labels: str) -> tuple[dict[str, str], list[tuple[int, float]]]:
    return (
        {"__name__": "cloudtuner_kubecost_namespace_total_cost", "cluster": "test", "namespace": marker, **labels},
        [(int(time.time() * 1000), value)],
    )


def landed(marker: str) -> list[dict]:
    return helpers.tsdb_query(f'cloudtuner_kubecost_namespace_total_cost{{namespace="{marker}"}}')


@pytest.fixture()
def tenant(serve_apps: str, accounts) -> Credentials:
    return accounts.create()[1]


def test_write_lands_with_the_authenticated_tenant(tenant: Credentials) -> None:
    marker = f"ns-{uuid.uuid4().hex[:8]}"
    answer = post(encode([series(marker, 0.125, tenant_id="someone-else")]), tenant)
    assert answer.status_code == 204, answer.text
    [result] = helpers.wait_for("the write in the TSDB", lambda: landed(marker), timeout=10)
    assert result["metric"]["tenant_id"] == tenant.account_id
    assert float(result["value"][1]) == 0.125


def test_disallowed_series_are_dropped_and_the_rest_lands(tenant: Credentials) -> None:
    marker = f"ns-{uuid.uuid4().hex[:8]}"
    other = ({"__name__": "node_network_receive_bytes_total", "marker": marker}, [(int(time.time() * 1000), 1.0)])
    assert post(encode([other, series(marker)]), tenant).status_code == 204
    helpers.wait_for("the allowed series", lambda: landed(marker), timeout=10)
    assert helpers.tsdb_query(f'node_network_receive_bytes_total{{marker="{marker}"}}') == []


@pytest.mark.parametrize(
    ("case", "status", "needle"),
    [
        ("no_header_no_auth", 400, "Cloud-Account-Id"),
        ("no_auth", 401, "basic auth"),
        ("wrong_password", 401, "wrong password"),
        ("unknown_account", 401, "unknown"),
        ("other_accounts_header", 401, "username"),
    ],
)
def test_unauthenticated_writes_land_nowhere(tenant: Credentials, accounts, case: str, status: int, needle: str) -> None:
    marker = f"ns-{uuid.uuid4().hex[:8]}"
    body = encode([series(marker)])
    other = accounts.create()[1]
    if case == "no_header_no_auth":
        answer = post(body, None, account_header="")
    elif case == "no_auth":
        answer = post(body, None, account_header=tenant.account_id)
    elif case == "wrong_password":
        answer = post(body, Credentials(tenant.account_id, "guess"))
    elif case == "unknown_account":
        ghost = str(uuid.uuid4())
        answer = post(body, Credentials(ghost, tenant.password))
    else:  # my credentials, another tenant's header
        answer = post(body, tenant, account_header=other.account_id)
    assert answer.status_code == status, answer.text
    assert needle in answer.text
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Basic")
    time.sleep(1)
    assert landed(marker) == []


def test_username_names_the_account_when_the_header_is_missing(tenant: Credentials) -> None:
    # Debian's Prometheus 2.42 sends no custom headers (prometheus#13030).
    marker = f"ns-{uuid.uuid4().hex[:8]}"
    assert post(encode([series(marker)]), tenant, account_header="").status_code == 204
    [result] = helpers.wait_for("the write in the TSDB", lambda: landed(marker), timeout=10)
    assert result["metric"]["tenant_id"] == tenant.account_id


def test_deleted_account_and_old_password_stop_writing(tenant: Credentials, accounts) -> None:
    # The ingress reuses a credential check for INGRESS_AUTH_CACHE_SECONDS, counted from
    # before it asked the store: that long after a change, the next write is judged on it,
    # however slow the machine (a slower one only waits longer).
    cache_seconds = float(TEST_SERVE_ENV["INGRESS_AUTH_CACHE_SECONDS"])
    assert post(encode([series("before")]), tenant).status_code == 204  # the old password's answer is cached
    new = accounts.rotate(tenant.account_id)
    assert new is not None
    time.sleep(cache_seconds)
    assert post(encode([series("x")]), tenant).status_code == 401
    assert post(encode([series("x")]), new).status_code == 204
    assert accounts.delete(tenant.account_id)
    time.sleep(cache_seconds)
    assert post(encode([series("x")]), new).status_code == 401


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        ([], "no labels"),
        ([("__name__", "cloudtuner_a_cost"), ("ns", "a"), ("ns", "b")], "appears twice"),
        ([("__name__", "cloudtuner_a_cost"), ("pod", "a"), ("namespace", "b")], "not sorted"),
        ([("namespace", "b")], "no __name__"),
        ([("__name__", "cloudtuner a")], "not a valid metric name"),
        ([("__name__", "cloudtuner_a_cost"), ("", "x")], "empty name"),
        ([("__name__", "cloudtuner_a_cost"), ("a.b", "x")], "not a valid label name"),
    ],
)
def test_malformed_bodies_get_400_naming_the_rule(tenant: Credentials, labels, needle: str) -> None:
    marker = f"ns-{uuid.uuid4().hex[:8]}"
    good_labels, good_samples = series(marker)
    answer = post(raw_body((sorted(good_labels.items()), good_samples), (labels, good_samples)), tenant)
    assert answer.status_code == 400, answer.text
    assert needle in answer.text
    assert landed(marker) == []  # nothing of a refused body lands


def test_future_sample_and_broken_encodings(tenant: Credentials) -> None:
    future = series("future")
    future[1][0] = (future[1][0][0] + 3_600_000, 1.0)
    answer = post(encode([future]), tenant)
    assert answer.status_code == 400 and "in the future" in answer.text
    answer = post(b"\x00garbage", tenant)
    assert answer.status_code == 400 and "snappy" in answer.text
    answer = post(b"\xff\xff\xff\xff\x0f", tenant)  # claims 4 GiB once inflated
    assert answer.status_code == 413
    answer = post(b"\x00" * (11 << 20), tenant)  # over INGRESS_MAX_BODY_BYTES (10 MiB)
    assert answer.status_code == 413


def test_rate_limit_answers_429_with_retry_after(tenant: Credentials, accounts) -> None:
    # A body of a full burst empties a new tenant's bucket; the next one is granted only
    # if the limiter's two checks were burst/rate (5 s) apart, which the time between
    # sending the first and hearing the second bounds. Under that bound the 429 is owed
    # however slow the machine; over it, a 204 is right, and a fresh tenant tries again.
    rate = float(TEST_SERVE_ENV["INGRESS_TENANT_SAMPLES_PER_SECOND"])
    burst = int(TEST_SERVE_ENV["INGRESS_TENANT_BURST_SAMPLES"])
    refill_seconds = burst / rate

    def full_burst() -> bytes:
        # Many samples on few series, new to the TSDB each time so no sample repeats another:
        # the TSDB stores them fast, and its head keeps few series.
        now, batch = int(time.time() * 1000), uuid.uuid4().hex[:8]
        per_series = 10_000
        return encode([
            ({"__name__": "cloudtuner_kubecost_pod_total_cost", "pod": f"{batch}-{i}"},
             [(now - per_series + j, 1.0) for j in range(per_series)])
            for i in range(burst // per_series)
        ])

    for _ in range(3):
        first, second = full_burst(), full_burst()
        started = time.monotonic()
        assert post(first, tenant).status_code == 204  # a new tenant starts with a full bucket
        answer = post(second, tenant)
        elapsed = time.monotonic() - started
        if answer.status_code == 429:
            break
        assert answer.status_code == 204 and elapsed >= refill_seconds, (answer.status_code, elapsed, answer.text)
        tenant = accounts.create()[1]
    else:
        pytest.fail(f"no answer could be checked: every pair of writes took {refill_seconds:g} s or more")
    retry_after = int(answer.headers["retry-after"])
    assert 1 <= retry_after <= math.ceil(refill_seconds)
    time.sleep(retry_after)  # as a sender does: then the same amount is granted
    assert post(full_burst(), tenant).status_code == 204


def test_tsdb_down_answers_503_then_recovers(tenant: Credentials) -> None:
    marker = f"ns-{uuid.uuid4().hex[:8]}"
    helpers.services("stop", "tsdb")
    try:
        answer = post(encode([series(marker)]), tenant)
        assert answer.status_code == 503, answer.text
    finally:
        helpers.services("start", "tsdb")
    assert post(encode([series(marker)]), tenant).status_code == 204
    helpers.wait_for("the write after the TSDB came back", lambda: landed(marker), timeout=10)


def test_a_get_of_the_write_path_is_400_and_an_unknown_path_404(serve_apps: str) -> None:
    answer = httpx.get(f"{serve_apps}/storage/api/v2/write")
    assert answer.status_code == 400 and "method GET" in answer.text and "POST" in answer.text
    answer = httpx.post(f"{serve_apps}/storage/api/v2/other")
    assert answer.status_code == 404 and "POST /api/v2/write" in answer.text


def test_ingress_metrics_count_requests_and_samples_by_outcome(tenant: Credentials) -> None:
    marker = f"ns-{uuid.uuid4().hex[:8]}"
    dropped = ({"__name__": "node_network_receive_bytes_total", "marker": marker}, [(int(time.time() * 1000), 1.0)])
    assert post(encode([series(marker), dropped]), tenant).status_code == 204
    assert post(encode([series(marker)]), Credentials(tenant.account_id, "wrong")).status_code == 401

    def exported(name: str, **labels: str) -> float:
        total = 0.0
        for line in httpx.get("http://127.0.0.1:25080/metrics", timeout=10).text.splitlines():
            if line.startswith(f"ray_{name}") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # Ray's agent exports what replicas report every few seconds.
    helpers.wait_for("the ingress counters", lambda: exported(
        "cloudtuner_ingress_samples", tenant=tenant.account_id, outcome="dropped", reason="metric_not_allowed") >= 1,
        timeout=60, interval=2)
    # Counted after the forward, so possibly in the replica's next report.
    helpers.wait_for("the request's count", lambda: exported(
        "cloudtuner_ingress_requests", tenant=tenant.account_id, code="204") >= 1, timeout=60, interval=2)
    assert exported("cloudtuner_ingress_samples", tenant=tenant.account_id, outcome="accepted") >= 1
    helpers.wait_for("the refused request", lambda: exported(
        "cloudtuner_ingress_requests", tenant="unauthenticated", code="401") >= 1, timeout=60, interval=2)
    assert exported("cloudtuner_ingress_forward_seconds_count", outcome="ok") >= 1
