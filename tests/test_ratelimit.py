"""The ingress's token buckets at exact instants: a clock the test moves, no waiting."""

from __future__ import annotations

import pytest

from serve_apps.ingress.ratelimit import TokenBuckets

RATE = 1000.0  # samples/s
BURST = 5000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def buckets(clock: Clock) -> TokenBuckets:
    return TokenBuckets(RATE, BURST, clock)


def test_a_new_tenant_may_send_its_burst_at_once_and_then_waits(buckets: TokenBuckets) -> None:
    assert buckets.take("a", 3000) == 0
    assert buckets.take("a", 2000) == 0
    assert buckets.take("a", 1) == 1  # never less than a second, as Retry-After is whole seconds


def test_tokens_come_back_at_the_rate(buckets: TokenBuckets, clock: Clock) -> None:
    assert buckets.take("a", 5000) == 0
    clock.now += 2.5
    assert buckets.take("a", 2501) == 1  # 2,500 back: one short
    assert buckets.take("a", 2500) == 0  # the refused request took nothing
    clock.now += 0.5
    assert buckets.take("a", 501) == 1
    assert buckets.take("a", 500) == 0


def test_the_wait_is_the_missing_tokens_over_the_rate_rounded_up(buckets: TokenBuckets, clock: Clock) -> None:
    assert buckets.take("a", 5000) == 0
    assert buckets.take("a", 4000) == 4
    clock.now += 0.5  # 500 back
    assert buckets.take("a", 4000) == 4  # 3,500 missing: 3.5 s, said 4
    clock.now += 3.5  # as told: the same request now passes
    assert buckets.take("a", 4000) == 0


def test_idle_time_refills_up_to_the_burst_only(buckets: TokenBuckets, clock: Clock) -> None:
    assert buckets.take("a", 5000) == 0
    clock.now += 3600
    assert buckets.take("a", 5000) == 0
    assert buckets.take("a", 1) == 1


def test_a_request_over_the_burst_waits_for_a_full_bucket_not_forever(buckets: TokenBuckets, clock: Clock) -> None:
    assert buckets.take("a", 9000) == 0  # counted as a full burst
    assert buckets.take("a", 9000) == 5  # burst / rate
    clock.now += 5
    assert buckets.take("a", 9000) == 0


def test_tenants_have_buckets_of_their_own(buckets: TokenBuckets) -> None:
    assert buckets.take("a", 5000) == 0
    assert buckets.take("a", 1) == 1
    assert buckets.take("b", 5000) == 0
