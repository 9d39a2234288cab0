"""Tenant actors' first cycles spread over LEDGER_START_SPREAD_SECONDS, without servers or Ray:
the delay each account gets (k8scost.ledger.start_delay), and the supervisor's patience with
an actor still waiting it (actors.supervisor.stalled)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections import Counter

import pytest

from actors.supervisor import stalled
from k8scost import ledger
from k8scost.settings import LedgerSettings, from_env

SPREAD = 60.0
# Account ids as AccountStore.create makes them (uuid4), drawn from a fixed seed so the test is the same every run.
_RNG = random.Random(14)
IDS = [str(uuid.UUID(int=_RNG.getrandbits(128), version=4)) for _ in range(1000)]


def test_delays_spread_uniformly_over_the_window() -> None:
    """1,000 ids into 10 bins of 6 s: each holds 100 ± 40.

    A bin's count is Binomial(1000, 0.1) for a uniform spread, σ ≈ 9.5: ± 40 is 4.2 σ,
    which a uniform hash leaves with odds of about 3 in 10,000 over the ten bins; a spread
    over half the window, or one that piles up at its start, puts 0 or 200 in some bin.
    """
    delays = [ledger.start_delay(account, SPREAD) for account in IDS]
    assert all(0 <= d < SPREAD for d in delays)
    bins = Counter(int(d // (SPREAD / 10)) for d in delays)
    assert sorted(bins) == list(range(10))
    assert all(60 <= bins[b] <= 140 for b in range(10)), sorted(bins.items())


def test_a_delay_is_the_same_for_the_same_id_in_every_process() -> None:
    """A restarted actor is a new process: its delay must not depend on Python's per-process hash salt."""
    account = IDS[0]
    here = ledger.start_delay(account, SPREAD)
    assert ledger.start_delay(account, SPREAD) == here
    probe = f"from k8scost import ledger; print(repr(ledger.start_delay({account!r}, {SPREAD!r})))"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert float(out) == here
    # A phase of the window, whatever its width; none at all without one.
    assert ledger.start_delay(account, 2 * SPREAD) == 2 * here
    assert ledger.start_delay(account, 0.0) == 0.0
    assert len({ledger.start_delay(a, SPREAD) for a in IDS}) == len(IDS)


@pytest.mark.parametrize(("last_success", "lag", "last_error", "spread", "expected"), [
    (None, 30.0, None, SPREAD, False),  # waiting its share of the spread: 6 s of cycles + 60 s allowed
    (None, 65.0, None, SPREAD, False),
    (None, 67.0, None, SPREAD, True),  # its first cycle stuck past both
    (None, 30.0, None, 0.0, True),  # the same wait without the spread added: restarted
    (1.0, 7.0, None, SPREAD, True),  # after a good cycle the spread is over: 3 cycles of 2 s
    (1.0, 5.0, None, SPREAD, False),
    (None, 600.0, "ReadTimeout: ", SPREAD, False),  # failing, not stuck: its own loop retries
])
def test_the_supervisor_waits_out_the_spread_before_a_first_cycle(
    last_success: float | None, lag: float, last_error: str | None, spread: float, expected: bool
) -> None:
    settings = from_env(LedgerSettings, {}, cycle_seconds=2.0, stalled_after_cycles=3.0, start_spread_seconds=spread)
    status = {"last_success": last_success, "lag_seconds": lag, "last_error": last_error}
    assert stalled(status, settings) is expected
