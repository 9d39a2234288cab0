"""Query parameters, checked one way by every API: Metroculus, the REST API and its live view.

``QueryParams`` refuses unknown parameters, and single-valued ones given more than once
(frameworks keep the last, so a second value would be silently ignored); its getters read
each parameter as its type. Every problem raises ``BadParameter``, whose message names the
parameter, so callers can fix their request without reading our code; the APIs answer it 400.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from k8scost.settings import DAY

_UNSIGNED = re.compile(r"[0-9]{1,12}")
# Characters of a caller's name or value repeated in a message: enough to recognise it,
# never a whole hostile payload.
_SHOWN = 64
MAX_VALUES = 1000
MAX_VALUE_LENGTH = 1024


class BadParameter(ValueError):
    """The request cannot be answered as asked: ``name`` is the parameter at fault, ``message``
    the whole text for the caller (it names the parameter too)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name, message)  # both in args, so it unpickles as it was
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return self.message


class QueryParams:
    """The parameters of one request: each of ``allowed``, once, but those of ``repeatable``."""

    def __init__(
        self, items: Iterable[tuple[str, str]], allowed: Iterable[str], repeatable: Iterable[str] = ()
    ) -> None:
        pairs = list(items)
        allowed, repeatable = set(allowed), set(repeatable)
        counts = Counter(name for name, _ in pairs)
        unknown = sorted(set(counts) - allowed)
        if unknown:
            shown = ", ".join(name[:_SHOWN] for name in unknown)
            message = f"unknown query parameter(s): {shown}; allowed: {', '.join(sorted(allowed))}"
            raise BadParameter(unknown[0], message)
        repeated = sorted(name for name, count in counts.items() if count > 1 and name not in repeatable)
        if repeated:
            raise BadParameter(repeated[0], f"query parameter(s) given more than once: {', '.join(repeated)}")
        self.single = {name: value for name, value in pairs if name not in repeatable}
        self._multi = {name: [value for key, value in pairs if key == name] for name in repeatable}

    def get(self, name: str) -> str | None:
        """The raw value of a single-valued parameter, None if not given."""
        return self.single.get(name)

    def required(self, name: str) -> str:
        """The value of ``name``; "<name>: missing" when absent or empty."""
        value = self.single.get(name)
        if not value:
            raise BadParameter(name, f"{name}: missing")
        return value

    def unsigned(
        self, name: str, what: str, default: int | None = None, lowest: int = 0, highest: int | None = None
    ) -> int:
        """``name`` as a whole number in [lowest, highest], else "<name>: '<value>' is not <what>";
        ``default`` when absent (without one, required: empty is missing)."""
        raw = self.single.get(name)
        if default is None:
            raw = self.required(name)
        elif raw is None:
            return default
        if not _UNSIGNED.fullmatch(raw) or int(raw) < lowest or (highest is not None and int(raw) > highest):
            raise BadParameter(name, f"{name}: {raw[:_SHOWN]!r} is not {what}")
        return int(raw)

    def integer(self, name: str, default: int, lowest: int, highest: int) -> int:
        """``name`` as a whole number in [lowest, highest]; ``default`` when absent."""
        return self.unsigned(name, f"an integer from {lowest} to {highest}", default, lowest, highest)

    def timestamp(self, name: str, default: int | None = None) -> int:
        """``name`` as Unix seconds."""
        return self.unsigned(name, "a Unix timestamp in whole seconds", default)

    def date_range(self, max_days: int, default: tuple[int, int] | None = None) -> tuple[int, int]:
        """start_date and end_date, in order and at most ``max_days`` apart; ``default``
        when neither is given (without one, both are required; one alone is always missing the other)."""
        if default is not None and self.get("start_date") is None and self.get("end_date") is None:
            return default
        start, end = self.timestamp("start_date"), self.timestamp("end_date")
        if start >= end:
            raise BadParameter("start_date", f"start_date ({start}) must be before end_date ({end})")
        if end - start > max_days * DAY:
            message = f"end_date - start_date: {end - start} s is longer than the maximum of {max_days} days"
            raise BadParameter("end_date", message)
        return start, end

    def choice(self, name: str, choices: Sequence[str], default: str | None = None) -> str:
        """``name``, one of ``choices``; ``default`` when absent (without one, required: empty is missing)."""
        value = self.single.get(name)
        if default is None:
            value = self.required(name)
        elif value is None:
            return default
        _check_choices(name, [value], choices)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        """``name`` spelled ``true`` or ``false``; ``default`` when absent."""
        raw = self.single.get(name)
        if raw is None:
            return default
        if raw not in ("true", "false"):
            raise BadParameter(name, f"{name}: {raw[:_SHOWN]!r} is not true or false")
        return raw == "true"

    def values(self, name: str, choices: Sequence[str] | None = None) -> tuple[str, ...]:
        """The values of a repeatable parameter, deduplicated in order (empty: not given); each
        1 to MAX_VALUE_LENGTH characters and among ``choices`` if given, at most MAX_VALUES."""
        values = tuple(dict.fromkeys(self._multi[name]))
        if len(values) > MAX_VALUES:
            raise BadParameter(name, f"{name}: more than {MAX_VALUES} values")
        if any(not value or len(value) > MAX_VALUE_LENGTH for value in values):
            raise BadParameter(name, f"{name}: values must be 1 to {MAX_VALUE_LENGTH} characters")
        if choices is not None:
            _check_choices(name, values, choices)
        return values


def _check_choices(name: str, values: Iterable[str], choices: Sequence[str]) -> None:
    wrong = [value for value in values if value not in choices]
    if wrong:
        raise BadParameter(name, f"{name}: {wrong[0][:_SHOWN]!r} is not one of {', '.join(choices)}")
