"""Credential checks of the ingress, remembered for a short while."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time

from k8scost.stores.accounts import Account, AccountStore, Credentials


def basic_auth(header: str | None) -> tuple[str, str] | None:
    """(username, password) of an ``Authorization: Basic`` header, or None."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


class CredentialCache:
    """Answers "do these credentials open this account?" from MongoDB, reusing answers for ``ttl`` s.

    Refusals are remembered too, so a sender stuck on a wrong password costs no database
    round trip per request. The ttl bounds how long a deleted account or rotated
    password keeps working.
    """

    _MAX_ENTRIES = 100_000

    def __init__(self, store: AccountStore, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._answers: dict[tuple[str, bytes], tuple[float, Account | None]] = {}

    async def account(self, credentials: Credentials) -> Account | None:
        """The account, or None when refused; StoreUnavailable when the store is unreachable."""
        key = (credentials.account_id, hashlib.sha256(credentials.password.encode()).digest())
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        account = await self._store.authenticate(credentials)
        if len(self._answers) >= self._MAX_ENTRIES:
            self._answers.clear()
        self._answers[key] = (now + self._ttl, account)
        return account
