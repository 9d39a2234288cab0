"""Where tenants run: hosts filled lowest first, and one host per account however many place it at once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from k8scost.settings import StoreSettings, from_env
from k8scost.stores.mongo import connect
from k8scost.stores.placements import PlacementStore, assign


def test_new_accounts_fill_the_lowest_hosts_with_room() -> None:
    placed = {"a": "tenant-host-0", "b": "tenant-host-0", "c": "tenant-host-2"}
    assert assign(["d", "e", "f", "g"], placed, per_host=2) == {
        "d": "tenant-host-1", "e": "tenant-host-1", "f": "tenant-host-2", "g": "tenant-host-3"}
    assert assign(["x"], {}, per_host=8) == {"x": "tenant-host-0"}


@pytest.fixture()
async def database(real_services: None) -> AsyncIterator[StoreSettings]:
    stores = from_env(StoreSettings, mongodb_database=f"test_placements_{uuid.uuid4().hex[:12]}")
    yield stores
    await connect(stores).client.drop_database(stores.mongodb_database)


@pytest.mark.services
async def test_placers_racing_over_new_accounts_agree_and_hosts_keep_their_tenants(database: StoreSettings) -> None:
    accounts = {f"acc-{k:02d}": "org" for k in range(10)}
    # Three placers (the supervisor, backfills), each with a client of its own, at once.
    answers = await asyncio.gather(*(PlacementStore(connect(database)).place(accounts, 4) for _ in range(3)))
    store = PlacementStore(connect(database))
    stored = await store.all()
    assert all(answer == stored for answer in answers)
    assert set(stored) == set(accounts)
    # Placers that read the same placements choose alike: whichever insert landed, no host is overfilled.
    assert Counter(stored.values()) == {"tenant-host-0": 4, "tenant-host-1": 4, "tenant-host-2": 2}
    assert await store.on(stored["acc-00"]) == {a: "org" for a, host in stored.items() if host == stored["acc-00"]}
    # Placing again moves nothing; a removed account frees its slot for the next new one.
    assert await store.place(accounts, 4) == stored
    await store.remove(["acc-00"])
    staying = {a: o for a, o in accounts.items() if a != "acc-00"}
    assert await store.place({**staying, "acc-new": "org"}, 4) == {
        **{a: stored[a] for a in staying}, "acc-new": stored["acc-00"]}
