"""Kubernetes resources in MongoDB ``cloud_resource``, the documents OptScale's readers expect.

A resource's ``_id`` is a UUID5 of (account, cluster, kind, namespace, name): the same
object always gets the same id, and a namespace of one name in two clusters gets two.

A document is written when its resource is new or its fields change (the tenant actor),
and a backfill writes it once for the days it covers: ``first_seen``..``last_seen`` spans
the days of its writes, not every later day the resource has cost. Those days are the
resource's ledger rows, where readers take them from (the REST API's ``clean_expenses``
does): moving every running resource's ``last_seen`` each midnight would cost FerretDB
≈ 25 ms per document, bulk or not (2,100 documents in one ``update_many``: 51 s).

Writes are never half-applied in effect: ``upsert`` is idempotent (``$set`` of the same
values, ``$min``/``$max`` of the same bounds), so when a bulk write fails midway the retry
of the whole cycle completes it and changes nothing it had already written.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import uuid
from collections.abc import Iterable
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure

from k8scost.stores.mongo import raises_store_unavailable


COLLECTION = "cloud_resource"
_DUPLICATE_KEY = 11000
_INDEX_NOT_FOUND = 27
SERVICE_NAME = "Kubernetes"
# Fixed forever: changing it would give every resource a new id.
_ID_NAMESPACE = uuid.UUID("5f0c7a52-2a64-4c8e-9a55-6f1d1b3c9e10")
# Fields ``find`` filters on, each with an index next to cloud_account_id.
FILTER_FIELDS = ("k8s_cluster", "k8s_namespace", "k8s_node", "k8s_service", "resource_type")
# The indexes the design's production notes list: an account's live resources of a
# namespace, and a namespace's resources by last seen, newest first. The first begins with
# (cloud_account_id, k8s_namespace), so it is also that filter's index.
DESIGN_INDEXES = (
    (("cloud_account_id", ASCENDING), ("k8s_namespace", ASCENDING), ("deleted_at", ASCENDING)),
    (("k8s_namespace", ASCENDING), ("last_seen", DESCENDING)),
)
# What earlier releases made for the k8s_namespace filter: a prefix of the first, only a cost to writes.
_REPLACED_INDEX = "cloud_account_id_1_k8s_namespace_1"
# Updates per ``update`` command: FerretDB 1.24 (SQLite) never answers one of 100 or more
# statements (measured: 99 take 0.14 s, 100 hang); MongoDB takes any size.
UPDATE_BATCH = 50


class Kind(enum.StrEnum):
    """What a resource is; the value prefixes its ``cloud_resource_id``."""

    CLUSTER = "k8s-cluster"
    NODE = "k8s-node"
    NAMESPACE = "k8s-namespace"
    POD = "k8s-pod"
    # A component of a cluster's bill (CPU, RAM, management fee, …): a ledger row per
    # cluster-day, never a MongoDB document.
    CLUSTER_COST = "k8s-cluster-cost"


RESOURCE_TYPES = {
    Kind.CLUSTER: "K8s Cluster",
    Kind.NODE: "K8s Node",
    Kind.NAMESPACE: "K8s Namespace",
    Kind.POD: "K8s Pod",
    Kind.CLUSTER_COST: "K8s Cluster Cost",
}
# Resource types a user may sum: each is a whole view of the cost. Cluster cost components
# only break a cluster's cost down.
SUMMABLE_TYPES = tuple(name for kind, name in RESOURCE_TYPES.items() if kind is not Kind.CLUSTER_COST)


# A tenant's cycle names every resource of its answers, each cycle: folding 20,000 pods'
# open hours took 0.50–0.98 s, 0.57 s of it making ids, and 0.14–0.23 s with this cache
# (ad hoc, in-process, bench_ledger's tenant). The bound keeps a host of several big
# tenants hitting, at ≈ 0.5 kB an entry.
@functools.lru_cache(maxsize=1 << 17)
def resource_id(cloud_account_id: str, cluster: str, kind: Kind, namespace: str | None, name: str) -> str:
    """The stable ``_id`` of a resource."""
    # JSON keeps the parts apart whatever characters they hold, and None apart from "".
    key = json.dumps([cloud_account_id, cluster, str(kind), namespace, name])
    return str(uuid.uuid5(_ID_NAMESPACE, key))


@dataclasses.dataclass(frozen=True)
class Resource:
    """A cluster, node, namespace or pod of one cluster, and where it runs.

    ``namespace`` is the namespace the resource belongs to (a namespace's own name for a
    namespace, None for clusters and nodes); ``node`` and ``service`` likewise, when known.
    """

    kind: Kind
    cluster: str
    namespace: str | None
    name: str
    node: str | None = None
    service: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def cloud_resource_id(self) -> str:
        """Readable and unique per account, e.g. ``k8s-pod/<cluster>/<namespace>/<pod>``."""
        parts = {
            Kind.CLUSTER: [self.cluster],
            Kind.NODE: [self.cluster, self.name],
            Kind.NAMESPACE: [self.cluster, self.name],
            Kind.POD: [self.cluster, self.namespace or "", self.name],
            Kind.CLUSTER_COST: [self.cluster, self.name],
        }[self.kind]
        return "/".join([str(self.kind), *parts])

    def id(self, cloud_account_id: str) -> str:
        return resource_id(cloud_account_id, self.cluster, self.kind, self.namespace, self.name)


def _changes(
    cloud_account_id: str, organization_id: str, resource: Resource, first_seen: int, last_seen: int
) -> dict[str, dict[str, Any]]:
    """The update of one resource's document, which also describes a new document."""
    return {
        # Fixed at creation; other components may edit tags or mark the resource deleted.
        "$setOnInsert": {
            "cloud_resource_id": resource.cloud_resource_id(),
            "cloud_account_id": cloud_account_id,
            "organization_id": organization_id,
            "resource_type": RESOURCE_TYPES[resource.kind],
            "service_name": SERVICE_NAME,
            "tags": {},
            "deleted_at": 0,
        },
        # What may change (a pod rescheduled, a label edited), and every field that may be
        # None: FerretDB 1.24 drops null values of $setOnInsert. Setting the identity
        # fields again writes the same values, so it stays idempotent.
        "$set": {
            "region": None,
            "k8s_cluster": resource.cluster,
            "k8s_namespace": resource.namespace,
            "name": resource.name,
            "k8s_node": resource.node,
            "k8s_service": resource.service,
            "meta": resource.meta,
            "active": True,
        },
        # The seen interval only widens, whatever order cycles and backfills run in.
        "$min": {"first_seen": first_seen},
        "$max": {"last_seen": last_seen},
    }


def _new_document(resource_id: str, changes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"_id": resource_id, **changes["$setOnInsert"], **changes["$set"], **changes["$min"], **changes["$max"]}


@raises_store_unavailable
class ResourceStore:
    """Reads and writes ``cloud_resource``."""

    def __init__(self, db: AsyncIOMotorDatabase) -> None:
        self._collection = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes; idempotent, and safe to run from several processes at once.

        Plain ascending/descending compound keys only: what FerretDB 1.24 and MongoDB 6 both build.
        """
        await self._collection.create_index(
            [("cloud_account_id", ASCENDING), ("cloud_resource_id", ASCENDING)], unique=True
        )
        for field in FILTER_FIELDS:
            if field != "k8s_namespace":  # DESIGN_INDEXES' first serves it
                await self._collection.create_index([("cloud_account_id", ASCENDING), (field, ASCENDING)])
        for keys in DESIGN_INDEXES:
            await self._collection.create_index(list(keys))
        try:
            await self._collection.drop_index(_REPLACED_INDEX)
        except OperationFailure as exc:
            if exc.code != _INDEX_NOT_FOUND:  # never made, or another process dropped it first
                raise

    async def upsert(
        self,
        cloud_account_id: str,
        organization_id: str,
        resources: Iterable[Resource],
        first_seen: int,
        last_seen: int,
    ) -> None:
        """Create or refresh ``resources``, seen with cost from ``first_seen`` to ``last_seen`` (unix s).

        Documents are inserted in bulk; those that exist already (the insert says which:
        duplicate keys) are updated. A big tenant's first cycle then costs one insert, not
        one upsert (a find and a write) per resource, and nothing asks which ids exist: on
        FerretDB 1.24 an ``$in`` over many ids is slower than the insert itself.
        """
        changes = {
            r.id(cloud_account_id): _changes(cloud_account_id, organization_id, r, first_seen, last_seen)
            for r in resources
        }
        if not changes:
            return
        fresh = [_new_document(rid, change) for rid, change in changes.items()]
        existing: set[str] = set()
        try:
            await self._collection.insert_many(fresh, ordered=False)
        except BulkWriteError as error:
            failures = error.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY for e in failures):
                raise
            existing = {fresh[e["index"]]["_id"] for e in failures}
        updates = [UpdateOne({"_id": rid}, change, upsert=True) for rid, change in changes.items() if rid in existing]
        for batch in range(0, len(updates), UPDATE_BATCH):
            await self._collection.bulk_write(updates[batch : batch + UPDATE_BATCH], ordered=False)

    async def find(self, cloud_account_id: str, **filters: Any) -> list[dict[str, Any]]:
        """The account's resources whose fields equal ``filters``, by ``cloud_resource_id``."""
        unknown = set(filters) - {*FILTER_FIELDS, "cloud_resource_id", "active"}
        if unknown:
            raise ValueError(f"cannot filter resources by {sorted(unknown)}")
        # Plain values only: a dict would smuggle an operator ($ne, $regex) into the query.
        if any(not isinstance(v, str | bool | None) for v in filters.values()):
            raise ValueError("resource filters take str, bool or None values")
        query = {"cloud_account_id": cloud_account_id, **filters}
        return await self._collection.find(query).sort("cloud_resource_id", ASCENDING).to_list(None)
