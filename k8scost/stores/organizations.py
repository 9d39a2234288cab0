"""Organizations and their users in MongoDB (``organizations``, ``users``).

A user belongs to exactly one organization and signs in with email and password. Unlike
the cloud accounts' machine tokens, passwords are chosen by people and guessable, so they
are stored as salted scrypt digests: slow on purpose, so a leaked collection costs an
attacker real work per guess.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import secrets
import time
import uuid
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo.errors import DuplicateKeyError

from k8scost.stores.mongo import raises_store_unavailable

ORGANIZATIONS = "organizations"
USERS = "users"
# scrypt cost: n=2^14, r=8 takes ≈ 50 ms and 16 MB per check (RFC 7914's interactive
# recommendation); kept with each digest, so raising it later leaves old digests readable.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_SCRYPT_MAXMEM = 64 << 20


class EmailTaken(ValueError):
    """Another user signed up with this email already."""


@dataclasses.dataclass(frozen=True)
class Organization:
    id: str
    name: str
    created_at: int

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Organization:
        return cls(id=doc["_id"], name=doc["name"], created_at=doc["created_at"])


@dataclasses.dataclass(frozen=True)
class User:
    """A user; ``password_stamp`` changes with every password change (it is the digest's salt)."""

    id: str
    email: str
    display_name: str
    organization_id: str
    created_at: int
    password_stamp: str

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> User:
        return cls(
            id=doc["_id"],
            email=doc["email"],
            display_name=doc["display_name"],
            organization_id=doc["organization_id"],
            created_at=doc["created_at"],
            password_stamp=doc["password"]["salt"],
        )


def normalize_email(email: str) -> str:
    """The form emails are stored and looked up in: one account per mailbox, whatever the case."""
    return email.strip().lower()


def hash_password(password: str) -> dict[str, Any]:
    """A salted scrypt digest of ``password``, with the parameters that made it."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=_SCRYPT_MAXMEM, **_SCRYPT)
    return {"scheme": "scrypt", "salt": salt.hex(), "digest": digest.hex(), **_SCRYPT}


def check_password(stored: dict[str, Any], password: str) -> bool:
    digest = hashlib.scrypt(
        password.encode(),
        salt=bytes.fromhex(stored["salt"]),
        n=stored["n"],
        r=stored["r"],
        p=stored["p"],
        maxmem=_SCRYPT_MAXMEM,
    )
    return hmac.compare_digest(digest.hex(), stored["digest"])


# Checked when the email is unknown, so that a wrong email takes as long as a wrong
# password and response times do not tell which emails have accounts.
_DUMMY_PASSWORD = hash_password(secrets.token_urlsafe(16))


@raises_store_unavailable
class OrganizationStore:
    """Reads and writes ``organizations`` and ``users``."""

    def __init__(self, db: AsyncIOMotorDatabase) -> None:
        self._organizations = db[ORGANIZATIONS]
        self._users = db[USERS]

    async def ensure_indexes(self) -> None:
        await self._users.create_index("email", unique=True)
        await self._users.create_index("organization_id")

    async def signup(
        self, organization_name: str, email: str, password: str, display_name: str
    ) -> tuple[Organization, User]:
        """A new organization with this user as its first member; ``EmailTaken`` if the email is."""
        now = int(time.time())
        organization = {"_id": str(uuid.uuid4()), "name": organization_name, "created_at": now}
        user = {
            "_id": str(uuid.uuid4()),
            "email": normalize_email(email),
            "display_name": display_name,
            "organization_id": organization["_id"],
            # In a thread: ≈ 50 ms of CPU would stall every other request of the event loop.
            "password": await asyncio.to_thread(hash_password, password),
            "created_at": now,
        }
        # The user first: its unique email index is what decides a race between two
        # sign-ups, and a loser then leaves no organization behind.
        try:
            await self._users.insert_one(user)
        except DuplicateKeyError:
            raise EmailTaken(normalize_email(email)) from None
        try:
            await self._organizations.insert_one(organization)
        except BaseException:
            await self._users.delete_one({"_id": user["_id"]})
            raise
        return Organization.from_document(organization), User.from_document(user)

    async def ensure_user(
        self, organization_name: str, email: str, password: str, display_name: str
    ) -> tuple[Organization, User]:
        """The user of this email and its organization, signed up first if missing (demo seeding).

        An existing user is returned as it is: its password and organization are not changed.
        """
        doc = await self._users.find_one({"email": normalize_email(email)})
        if doc is None:
            try:
                return await self.signup(organization_name, email, password, display_name)
            except EmailTaken:  # signed up concurrently: read the winner's
                doc = await self._users.find_one({"email": normalize_email(email)})
        assert doc is not None
        user = User.from_document(doc)
        organization = await self.get_organization(user.organization_id)
        if organization is None:
            raise LookupError(f"user {user.id} belongs to a missing organization {user.organization_id}")
        return organization, user

    async def authenticate(self, email: str, password: str) -> User | None:
        """The user these credentials open, or None."""
        doc = await self._users.find_one({"email": normalize_email(email)})
        stored = _DUMMY_PASSWORD if doc is None else doc["password"]
        matches = await asyncio.to_thread(check_password, stored, password)
        return User.from_document(doc) if doc is not None and matches else None

    async def change_password(self, user_id: str, current: str, new: str) -> User | None:
        """The user with ``new`` as its password, or None if ``current`` is not its password, or no
        longer is when ``new`` is written."""
        doc = await self._users.find_one({"_id": user_id})
        if doc is None or not await asyncio.to_thread(check_password, doc["password"], current):
            return None
        digest = await asyncio.to_thread(hash_password, new)
        written = await self._users.update_one(
            {"_id": user_id, "password.salt": doc["password"]["salt"]}, {"$set": {"password": digest}}
        )
        return User.from_document({**doc, "password": digest}) if written.matched_count else None

    async def has_password_stamp(self, user_id: str, stamp: str) -> bool:
        """Whether the user's password is still the one ``stamp`` was read with."""
        doc = await self._users.find_one({"_id": user_id})
        return doc is not None and doc["password"]["salt"] == stamp

    async def get_organization(self, organization_id: str) -> Organization | None:
        doc = await self._organizations.find_one({"_id": organization_id})
        return Organization.from_document(doc) if doc else None

    async def list_organizations(self) -> list[Organization]:
        """Every organization (for service callers)."""
        return [Organization.from_document(doc) async for doc in self._organizations.find({}).sort("_id", 1)]

    async def get_user(self, user_id: str) -> User | None:
        doc = await self._users.find_one({"_id": user_id})
        return User.from_document(doc) if doc else None
