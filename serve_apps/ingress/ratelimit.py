"""Per-tenant sample-rate limit: a token bucket per tenant, in each replica."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBuckets:
    """``rate`` samples/s sustained and ``burst`` at once, per tenant.

    ``clock`` (seconds, monotonic) is a parameter so the refill arithmetic can be checked
    at exact instants; the ingress uses ``time.monotonic``.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant: str, samples: int) -> float:
        """Take ``samples`` tokens; 0 if granted, else the seconds to wait before retrying."""
        samples = min(samples, self._burst)  # one huge request waits for a full bucket, not forever
        now = self._clock()
        tokens, at = self._buckets.get(tenant, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if samples > tokens:
            self._buckets[tenant] = (tokens, now)
            return max(1.0, math.ceil((samples - tokens) / self._rate))
        self._buckets[tenant] = (tokens - samples, now)
        return 0.0
