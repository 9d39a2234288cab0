"""Late writes on record: a batch of one tenant's writes shares one MongoDB update made after they
all landed, and a failed update reaches every write of its batch (each answered 503)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from k8scost.settings import StoreSettings, from_env
from k8scost.stores import StoreUnavailable
from k8scost.stores.late_samples import LateSampleStore
from k8scost.stores.mongo import connect
from serve_apps.ingress.late import LateWrites

pytestmark = pytest.mark.services


class CountedStore(LateSampleStore):
    """The real store, counting its updates, each ``delay`` s late: an update in flight for a while,
    as on a busy FerretDB."""

    def __init__(self, stores: StoreSettings, delay: float = 0.0) -> None:
        super().__init__(connect(stores))
        self.delay = delay
        self.updates: list[tuple[str, float]] = []  # (account, landed_at) of each update, in the order stored

    async def record(self, account_id: str, landed_at: float) -> None:
        await asyncio.sleep(self.delay)
        await super().record(account_id, landed_at)
        self.updates.append((account_id, landed_at))


@pytest.fixture()
async def stores(real_services: None) -> AsyncIterator[StoreSettings]:
    stores = from_env(StoreSettings, mongodb_database=f"test_late_{uuid.uuid4().hex[:12]}")
    yield stores
    await connect(stores).client.drop_database(stores.mongodb_database)


async def test_a_tenants_concurrent_late_writes_share_updates_made_after_each_landed(stores: StoreSettings) -> None:
    store = CountedStore(stores, delay=0.3)
    late = LateWrites(store)
    stale: list[str] = []

    async def write(tenant: str, delay: float) -> None:
        await asyncio.sleep(delay)
        landed = time.time()
        await late.record(tenant)
        if max((at for account, at in store.updates if account == tenant), default=0.0) < landed:
            stale.append(tenant)  # answered before any update of its tenant made after it landed

    # Three waves of 30 writes of one tenant, the later two while the first's update is in
    # flight; one write of another tenant.
    await asyncio.gather(*(write("a", wave * 0.1) for wave in range(3) for _ in range(30)), write("b", 0.05))
    assert not stale
    # a's first wave, its two later ones together, and b
    assert [account for account, _ in store.updates] == ["a", "b", "a"]
    assert await store.landed_at("a") == store.updates[2][1] > store.updates[0][1]
    assert await store.landed_at("b") == store.updates[1][1]


async def test_a_failed_update_fails_every_write_of_its_batch_and_the_next_batch_retries(stores: StoreSettings) -> None:
    store = CountedStore(stores)
    late = LateWrites(store)
    # MongoDB unreachable: a client whose server selection gives up at once
    broken = LateSampleStore(connect(from_env(StoreSettings, mongodb_url="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200",
                                              mongodb_database=stores.mongodb_database)))
    late.store = broken
    outcomes = await asyncio.gather(*(late.record("a") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
    late.store = store
    await late.record("a")
    assert await store.landed_at("a") == store.updates[-1][1]
