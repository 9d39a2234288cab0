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
    """The real store, counting its updates and when each was made."""

    def __init__(self, stores: StoreSettings) -> None:
        super().__init__(connect(stores))
        self.updates: list[float] = []

    async def record(self, account_id: str, landed_at: float) -> None:
        self.updates.append(landed_at)
        await super().record(account_id, landed_at)


@pytest.fixture()
async def stores(real_services: None) -> AsyncIterator[StoreSettings]:
    stores = from_env(StoreSettings, mongodb_database=f"test_late_{uuid.uuid4().hex[:12]}")
    yield stores
    await connect(stores).client.drop_database(stores.mongodb_database)


async def test_a_tenants_concurrent_late_writes_share_updates_made_after_each_landed(stores: StoreSettings) -> None:
    store = CountedStore(stores)
    late = LateWrites(store)
    landed: list[float] = []
    heard: list[float] = []

    async def write(tenant: str, delay: float) -> None:
        await asyncio.sleep(delay)
        landed.append(time.time())
        await late.record(tenant)
        heard.append(time.time())

    # 60 writes of one tenant over ≈ 0.3 s, and one of another
    await asyncio.gather(*(write("a", i * 0.005) for i in range(60)), write("b", 0.1))
    assert len(heard) == 61
    assert len(store.updates) < 30  # shared: one update in flight per tenant, the next one for all who came meanwhile
    recorded = await store.landed_at("a")
    assert recorded == max(u for u in store.updates) >= max(landed)  # the record is no older than any landing
    assert await store.landed_at("b") is not None


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
    assert await store.landed_at("a") == store.updates[-1]
