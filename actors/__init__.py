"""The tenants, the hosts that run them (a Ray worker process runs several), and their supervisor.

Each such process pays for every module it imports (≈ 13 MB of ours over Ray's own
≈ 50 MB, see scripts/bench_tenants.py), so it skips what it never runs: httpx imports
its command-line client (click, rich, pygments: ≈ 1.7 MB) whenever those happen to be
installed, and falls back to a stub ``httpx.main`` when ``httpx._main`` cannot be imported.
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]  # None: "cannot be imported"
