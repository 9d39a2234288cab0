"""What /metrics shows: the latest cost snapshot and the exporter's own health."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.snapshot import COST_METRICS, Snapshot

SERIES_GAUGE = "cloudtuner_exporter_series"
_SERIES_HELP = "Cost series currently exported (0 once they are withdrawn after failed polls)."


class FailureReason(StrEnum):
    """Why a poll of Kubecost failed (label ``reason``)."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    BAD_RESPONSE = "bad_response"


class SnapshotCollector(Collector):
    """Yields the cost series of the latest successful poll.

    The snapshot is replaced by one assignment, so a scrape sees one whole poll; series
    absent from the new snapshot vanish from /metrics and Prometheus marks them stale.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot = {}

    def replace(self, snapshot: Snapshot) -> None:
        """Export ``snapshot`` from the next scrape on."""
        self._snapshot = snapshot

    def withdraw(self) -> None:
        """Export no cost series: a stale rate would be billed as cost."""
        self._snapshot = {}

    def describe(self) -> Iterator[Metric]:
        """The metric names, so the registry refuses clashes."""
        for metric in COST_METRICS:
            yield GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
        yield GaugeMetricFamily(SERIES_GAUGE, _SERIES_HELP)

    def collect(self) -> Iterator[Metric]:
        """The series of the current snapshot, and how many there are."""
        snapshot = self._snapshot  # one read: a concurrent replace() cannot mix two polls
        count = 0
        for metric, series in snapshot.items():
            if not series:
                continue
            family = GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
            for labels, value in series.items():
                family.add_metric(labels, value)
            count += len(series)
            yield family
        yield GaugeMetricFamily(SERIES_GAUGE, _SERIES_HELP, value=count)


class ExporterMetrics:
    """The registry behind /metrics: cost snapshot plus health metrics, which are never withdrawn."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.costs = SnapshotCollector()
        self.registry.register(self.costs)
        self.up = Gauge(
            "cloudtuner_exporter_up",
            "1 if the last poll of Kubecost succeeded, 0 if it failed.",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "cloudtuner_exporter_last_success_timestamp_seconds",
            "Unix time of the last successful poll of Kubecost (0: none yet).",
            registry=self.registry,
        )
        self.poll_duration = Histogram(
            "cloudtuner_exporter_poll_duration_seconds",
            "Duration of one poll of Kubecost (all its requests), successful or not.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
            registry=self.registry,
        )
        self.poll_failures = Counter(
            "cloudtuner_exporter_poll_failures",
            "Failed polls of Kubecost, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in FailureReason:  # exported at 0 from the start, so increase() sees the first failure
            self.poll_failures.labels(reason)
