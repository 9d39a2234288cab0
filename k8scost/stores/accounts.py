"""Cloud accounts (MongoDB ``cloud_accounts``) and their remote-write credentials.

A credential is a random 256-bit token, shown once at creation or rotation and stored as
a salted SHA-256 digest. A slow password hash buys nothing for a secret nobody can guess,
and would cost the ingress CPU on every credential check it has not cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase

from k8scost.stores.mongo import raises_store_unavailable

KUBERNETES_CNR = "kubernetes_cnr"
COLLECTION = "cloud_accounts"


@dataclasses.dataclass(frozen=True)
class Account:
    """A customer's Kubernetes cloud account: one tenant of the pipeline."""

    id: str
    organization_id: str
    name: str
    type: str
    created_at: int
    deleted_at: int  # 0 while the account lives

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Account:
        return cls(
            id=doc["_id"],
            organization_id=doc["organization_id"],
            name=doc["name"],
            type=doc["type"],
            created_at=doc["created_at"],
            deleted_at=doc.get("deleted_at", 0),
        )


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a customer's Prometheus sends: header and basic-auth username are the account id."""

    account_id: str
    password: str


def _digest(salt: str, password: str) -> str:
    return hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()


def _new_secret() -> tuple[dict[str, Any], str]:
    password = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return {"salt": salt, "sha256": _digest(salt, password), "created_at": int(time.time())}, password


@raises_store_unavailable
class AccountStore:
    """Reads and writes ``cloud_accounts``."""

    def __init__(self, db: AsyncIOMotorDatabase) -> None:
        self._collection = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._collection.create_index([("organization_id", 1), ("deleted_at", 1)])

    async def create(self, organization_id: str, name: str) -> tuple[Account, Credentials]:
        """A new Kubernetes account and its credentials (the only time the password is known)."""
        secret, password = _new_secret()
        doc = {
            "_id": str(uuid.uuid4()),
            "organization_id": organization_id,
            "name": name,
            "type": KUBERNETES_CNR,
            "created_at": int(time.time()),
            "deleted_at": 0,
            "remote_write_secret": secret,
        }
        await self._collection.insert_one(doc)
        return Account.from_document(doc), Credentials(doc["_id"], password)

    async def rotate(self, account_id: str) -> Credentials | None:
        """New credentials; the old ones stop working (within the ingress's cache time)."""
        secret, password = _new_secret()
        result = await self._collection.update_one(
            {"_id": account_id, "deleted_at": 0}, {"$set": {"remote_write_secret": secret}}
        )
        return Credentials(account_id, password) if result.matched_count else None

    async def rename(self, account_id: str, name: str) -> Account | None:
        """The live account under its new name, or None if there is none."""
        result = await self._collection.update_one({"_id": account_id, "deleted_at": 0}, {"$set": {"name": name}})
        return await self.get(account_id) if result.matched_count else None

    async def delete(self, account_id: str) -> bool:
        """Mark deleted: writes are refused, history stays."""
        result = await self._collection.update_one(
            {"_id": account_id, "deleted_at": 0}, {"$set": {"deleted_at": int(time.time())}}
        )
        return result.matched_count == 1

    async def get(self, account_id: str) -> Account | None:
        doc = await self._collection.find_one({"_id": account_id, "deleted_at": 0})
        return Account.from_document(doc) if doc else None

    async def list(self, organization_id: str | None = None) -> list[Account]:
        query: dict[str, Any] = {"deleted_at": 0, "type": KUBERNETES_CNR}
        if organization_id is not None:
            query["organization_id"] = organization_id
        return [Account.from_document(doc) async for doc in self._collection.find(query).sort("_id", 1)]

    async def select(self, account_ids: Sequence[str] | None, organization_id: str | None = None) -> list[Account]:
        """The live Kubernetes accounts a job is asked for: these ids, else the organization's, else all.

        LookupError names an id that is not a live account, or an organization without one.
        """
        if account_ids:
            accounts = []
            for account_id in dict.fromkeys(account_ids):
                account = await self.get(account_id)
                if account is None:
                    raise LookupError(f"cloud account {account_id!r} does not exist or was deleted")
                accounts.append(account)
            return accounts
        accounts = await self.list(organization_id)
        if organization_id is not None and not accounts:
            raise LookupError(f"organization {organization_id!r} has no live Kubernetes cloud account")
        return accounts

    async def authenticate(self, credentials: Credentials) -> Account | None:
        """The live account these credentials open, or None."""
        doc = await self._collection.find_one({"_id": credentials.account_id, "deleted_at": 0})
        if doc is None:
            return None
        secret = doc["remote_write_secret"]
        if not hmac.compare_digest(secret["sha256"], _digest(secret["salt"], credentials.password)):
            return None
        return Account.from_document(doc)
