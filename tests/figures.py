"""Figures the reliability and security suite measures (R1–R6), one line each.

``record("R4", "...")`` prints ``FIGURE R4: ...`` at once (seen with ``-s``) and keeps the
line; ``tests/conftest.py`` prints every kept line again at the end of the run, so the
figures show under ``-q`` and in CI logs too.
"""

from __future__ import annotations

_LINES: list[str] = []


def record(name: str, text: str) -> str:
    """Print and keep the figure ``name`` (e.g. "R4"); returns its line."""
    line = f"FIGURE {name}: {text}"
    print(line, flush=True)
    _LINES.append(line)
    return line


def recorded() -> list[str]:
    """The lines recorded so far, in order."""
    return list(_LINES)
