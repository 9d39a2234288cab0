"""The poll loop: ask Kubecost, swap the snapshot in, account for failures."""

from __future__ import annotations

import asyncio
import logging

import httpx

from exporter.allocation import Allocation, BadResponse, parse_allocations, parse_management_rate
from exporter.collector import ExporterMetrics, FailureReason
from exporter.snapshot import AGGREGATES, Snapshot, allocation_params, assets_params, build_snapshot
from k8scost.settings import ExporterSettings

log = logging.getLogger(__name__)


class PollError(Exception):
    """A poll that yielded no usable answer; the message says why."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Poller:
    """Polls Kubecost's allocation and assets APIs into an :class:`ExporterMetrics`."""

    def __init__(self, settings: ExporterSettings, client: httpx.AsyncClient, metrics: ExporterMetrics) -> None:
        self._settings = settings
        self._client = client
        self._metrics = metrics
        self._failures_in_a_row = 0
        base = settings.kubecost_url.rstrip("/")
        self._allocation_url = base + settings.allocation_path
        self._assets_url = base + settings.assets_path

    async def run(self) -> None:
        """Poll every ``scrape_interval`` seconds, start to start, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.poll()
            await asyncio.sleep(max(0.0, self._settings.scrape_interval - (loop.time() - started)))

    async def poll(self) -> None:
        """Poll once: export the new snapshot, or count the failure and maybe withdraw the old one."""
        with self._metrics.poll_duration.time():
            try:
                snapshot = await self._fetch()
            except PollError as error:
                self._failed(error)
                return
        self._succeeded(snapshot)

    async def _fetch(self) -> Snapshot:
        management = asyncio.create_task(self._management_rate())  # never raises: a failure costs one gauge
        # return_exceptions: wait for every request, so none outlives a failed poll.
        results = await asyncio.gather(*(self._allocations(a) for a in AGGREGATES), return_exceptions=True)
        management_rate = await management
        answers: dict[str, list[Allocation]] = {}
        for aggregate, result in zip(AGGREGATES, results):
            if isinstance(result, BaseException):
                raise result
            answers[aggregate] = result
        return build_snapshot(answers, management_rate, self._settings.tenant_id, self._settings.cluster_name)

    async def _allocations(self, aggregate: str) -> list[Allocation]:
        body = await self._get_json(self._allocation_url, allocation_params(self._settings.allocation_window, aggregate))
        try:
            return parse_allocations(body, aggregate)
        except BadResponse as error:
            raise PollError(FailureReason.BAD_RESPONSE, f"aggregate={aggregate}: {error}") from None

    async def _management_rate(self) -> float | None:
        """The cluster-management rate; None if the assets API fails, which costs only that gauge."""
        try:
            params = assets_params(self._settings.allocation_window)
            return parse_management_rate(await self._get_json(self._assets_url, params))
        except (PollError, BadResponse) as error:
            log.warning("assets API failed, kubecost_cluster_management_cost left out: %s", error)
            return None

    async def _get_json(self, url: str, params: dict[str, str]) -> object:
        try:
            response = await self._client.get(url, params=params)
        except httpx.TimeoutException:
            message = f"GET {url}: no answer within {self._settings.request_timeout}s"
            raise PollError(FailureReason.TIMEOUT, message) from None
        except httpx.TransportError as error:
            raise PollError(FailureReason.UNREACHABLE, f"GET {url}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            raise PollError(FailureReason.HTTP_ERROR, f"GET {response.url}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise PollError(FailureReason.BAD_RESPONSE, f"GET {response.url}: answer is not JSON") from None

    def _succeeded(self, snapshot: Snapshot) -> None:
        self._metrics.costs.replace(snapshot)
        self._metrics.up.set(1)
        self._metrics.last_success.set_to_current_time()
        if self._failures_in_a_row:
            log.info("poll of Kubecost succeeded again after %d failed polls", self._failures_in_a_row)
        self._failures_in_a_row = 0

    def _failed(self, error: PollError) -> None:
        self._failures_in_a_row += 1
        self._metrics.up.set(0)
        self._metrics.poll_failures.labels(error.reason).inc()
        withdrawn = self._failures_in_a_row >= self._settings.stale_after_failures
        if withdrawn:
            self._metrics.costs.withdraw()
        log.warning(
            "poll of Kubecost failed (%s, %d in a row%s): %s",
            error.reason,
            self._failures_in_a_row,
            ", cost series withdrawn" if withdrawn else "",
            error,
        )
