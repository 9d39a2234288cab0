"""Late writes put on record (``k8scost.stores.late_samples``), one MongoDB update per tenant at a time.

A sender catching up sends nothing but late writes, many at once, and after an outage of
the SaaS every sender does. An update per write would queue on the tenant's one document
(FerretDB takes ≈ 20 ms an update): instead the writes of a tenant that landed while its
update was in flight share the next one, whose ``landed_at`` is read after they all
landed. Each write still hears back only once an update made after its landing is stored.
"""

from __future__ import annotations

import asyncio
import time

from k8scost.stores.late_samples import LateSampleStore


class LateWrites:
    """Records that a tenant's late write landed, for every caller waiting on it."""

    def __init__(self, store: LateSampleStore) -> None:
        self.store = store
        self._joining: dict[str, asyncio.Future[None]] = {}  # tenant → the batch writes join now
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # tenant → its batch being stored

    async def record(self, tenant: str) -> None:
        """Return once a record no older than this call is stored; raise what storing it raised
        (``StoreUnavailable``: the sender is answered 503 and sends the write again)."""
        batch = self._joining.get(tenant)
        if batch is None:
            batch = self._joining[tenant] = asyncio.get_running_loop().create_future()
            self._in_flight[tenant] = asyncio.create_task(self._store(tenant, batch, self._in_flight.get(tenant)))
        await asyncio.shield(batch)  # a caller gone (its sender hung up) leaves the batch to the others

    async def _store(self, tenant: str, batch: asyncio.Future[None], previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        del self._joining[tenant]  # writes landing from now on join the next batch
        try:
            await self.store.record(tenant, time.time())
        except Exception as exc:
            batch.set_exception(exc)
            batch.exception()  # its callers raise it; asyncio need not log it when they all hung up
        else:
            batch.set_result(None)
        finally:
            if self._in_flight.get(tenant) is asyncio.current_task():
                del self._in_flight[tenant]
