"""Failed sign-ins counted per email and per client address in MongoDB (``signin_failures``),
so that every REST replica throttles the same password guesses.

Time is cut into windows of ``window`` seconds, aligned on the Unix epoch, the same for
every replica: window ``w = floor(now / window)`` ends at ``(w + 1) * window``. Each key,
``email:<normalized email>`` and ``address:<client address>``, has ``limit`` slots per
window, one document each, ``_id = "<key>|<w>|<slot>"``, slot 1 to ``limit``. A failed
password check holds a slot until its window ends. A key whose slots are all held is
refused before any password is checked, the right one too, with
``Retry-After = max(1, ceil((w + 1) * window - now))``. So at most ``limit`` guesses per key
and window (``2 * limit`` across a window's edge), however many replicas serve them.
Unknown emails are counted as known ones are: a 429 tells nothing about which emails
have accounts.

An attempt takes its slots before the password is checked (``begin``), by inserting their
documents: the unique ``_id`` lets exactly one of the attempts racing for a slot have it,
so concurrent guesses cannot overshoot. The unique index is the primitive because it is
atomic on both MongoDB and FerretDB 1.24, whose ``$inc`` is not (40 concurrent increments
of one document there left it at 11). ``succeeded`` gives the address's slot back and frees
the email's (a success is no guess; the address's are kept, or one's own account could
launder guesses at others); a failure keeps both. Past windows' documents are deleted when
a slot of a new window is taken (FerretDB 1.24 has no TTL index).

Why not the ingress's ``TokenBuckets``: they live in one replica's memory, which is right for
a tenant's sample rate but not here, where the proxy spreads one attacker's requests over
every replica, and a bucket kept in the database would need an atomic read-modify-write.
"""

from __future__ import annotations

import dataclasses
import math

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo.errors import DuplicateKeyError

from k8scost.stores.mongo import raises_store_unavailable
from k8scost.stores.organizations import normalize_email

COLLECTION = "signin_failures"
EMAIL, ADDRESS = "email", "address"


class SignInThrottled(Exception):
    """Too many failed sign-ins for the email or from the address (``by``); retry after ``retry_after`` s."""

    def __init__(self, by: str, retry_after: int) -> None:
        super().__init__(by, retry_after)
        self.by = by
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class Attempt:
    """A sign-in holding a slot of its email and of its address, until ``SignInThrottle.succeeded``."""

    email_key: str
    address_slot: str
    window: int


@raises_store_unavailable
class SignInThrottle:
    """``per_email`` and ``per_address`` failed sign-ins per window of ``window_seconds``, for every replica."""

    def __init__(self, db: AsyncIOMotorDatabase, per_email: int, per_address: int, window_seconds: float) -> None:
        self._slots = db[COLLECTION]
        self._limits = {EMAIL: per_email, ADDRESS: per_address}
        self._window = window_seconds

    async def ensure_indexes(self) -> None:
        await self._slots.create_index([("key", 1), ("window", 1)])
        await self._slots.create_index("window")  # the sweep

    async def begin(self, email: str, address: str, now: float) -> Attempt:
        """The attempt, holding a slot of ``email`` and one of ``address``; ``SignInThrottled``
        (holding none) when either has none left."""
        window = math.floor(now / self._window)
        retry_after = max(1, math.ceil((window + 1) * self._window - now))  # Retry-After is whole seconds
        keys = {EMAIL: f"{EMAIL}:{normalize_email(email)}", ADDRESS: f"{ADDRESS}:{address}"}
        # Counted first, both: a throttled email or address costs reads, no write.
        held = {by: await self._slots.count_documents({"key": key, "window": window}) for by, key in keys.items()}
        for by in (EMAIL, ADDRESS):  # the email's first: that is the one the caller can act on
            if held[by] >= self._limits[by]:
                raise SignInThrottled(by, retry_after)
        if not held[EMAIL] or not held[ADDRESS]:  # a new window of a key: drop the past ones'
            await self._slots.delete_many({"window": {"$lt": window}})
        email_slot = await self._take(keys[EMAIL], window, held[EMAIL], self._limits[EMAIL])
        if email_slot is None:  # lost the race for the last slot
            raise SignInThrottled(EMAIL, retry_after)
        address_slot = await self._take(keys[ADDRESS], window, held[ADDRESS], self._limits[ADDRESS])
        if address_slot is None:
            await self._slots.delete_one({"_id": email_slot})
            raise SignInThrottled(ADDRESS, retry_after)
        return Attempt(keys[EMAIL], address_slot, window)

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the email's slots of the window freed, the address's slot given back."""
        await self._slots.delete_many({"key": attempt.email_key, "window": attempt.window})
        await self._slots.delete_one({"_id": attempt.address_slot})

    async def _take(self, key: str, window: int, held: int, limit: int) -> str | None:
        """The ``_id`` of a slot of ``key`` in ``window`` now held, or None if all are. ``held``
        were when counted: the next slot is tried first, then any given back since."""
        for slot in [*range(held + 1, limit + 1), *range(1, held + 1)]:
            slot_id = f"{key}|{window}|{slot}"
            try:
                await self._slots.insert_one({"_id": slot_id, "key": key, "window": window})
            except DuplicateKeyError:  # another attempt holds it
                continue
            return slot_id
        return None
