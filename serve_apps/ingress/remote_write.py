"""Prometheus Remote-Write 1.0 bodies: decode, police for one tenant, encode.

The ingress's hot path, in two tiers. The full path parses a body once (upb, in C) with
every label kept as its encoded bytes; a label set is validated and given its tenant label
the first time it is seen, and later recognised by those bytes alone. The fast path takes
the steady case — every series already judged fit, one sample each, as Prometheus sends a
scrape — without a Python object per label or sample: each series stays one ``bytes``, its
labels are looked up whole, its 18-byte sample is checked with the body's others at once
(numpy), and the body to forward is joined from the stamped labels kept per series. Any
body it cannot vouch for whole goes the full way, which decides and counts exactly as
before: the fast path only ever passes what the full path would pass unchanged.

What is kept: CloudTuner's own families (``Limits.allowed_metrics``) with any labels, and the
usage families of ``k8scost.usage_series`` with only the labels of their allow-list; a usage
series carrying another label is dropped whole (not stripped: two series told apart only by
the stripped label would become one, and their samples would collide in the TSDB), counted
as ``label_not_allowed``. Other families are dropped, counted as ``metric_not_allowed``.

Active series, in the spirit of Mimir's ``max_global_series_per_user``: a series is active
while it had a sample within ``Limits.active_series_seconds``. A body's series the tenant
already has always pass; its new series pass while the tenant has fewer than
``Limits.max_series`` active ones, and the rest are dropped, counted as ``series_limit``, and
reported in ``Policed.over_limit`` so the ingress answers 400 once the others are stored,
as Mimir does. 400, because Prometheus retries 5xx and (with ``retry_on_http_429``) 429
only: any other 4xx drops the batch for good, which is what a write that can only pass
once the tenant has fewer series needs; retrying it would repeat the refusal forever.
The count is per replica (one ``TenantPolice`` per tenant and replica) against the whole
limit: Serve routes a tenant's writes to any replica, so within the window every replica
sees nearly all of the tenant's series, and a replica's count is the tenant's from below.
Mimir divides the limit among ingesters because its distributors shard series over them;
nothing shards here, and dividing would refuse a tenant at a fraction of its limit.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np
import snappy
from google.protobuf.message import DecodeError

from k8scost.settings import DAY
from k8scost.usage_series import USAGE_FAMILIES
from serve_apps.ingress.proto.remote_write_pb2 import (
    Label,
    RawTimeSeries,
    RawWriteRequest,
    SeriesBytesWriteRequest,
    WriteRequest,
)

TENANT_LABEL = "tenant_id"
METRIC_NAME_LABEL = "__name__"
# Prometheus' staleness marker: a NaN with this exact bit pattern ends a series. It must
# pass untouched, or a vanished pod's last rate would be extended and billed.
STALE_NAN_BITS = 0x7FF0000000000002
_STALE_NAN_BYTES = struct.pack("<Q", STALE_NAN_BITS)

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Label sets remembered per tenant before the memory is reset; a cluster sends a few
# thousand distinct series, so this only bounds what a hostile sender can make us hold.
_MAX_REMEMBERED_LABEL_SETS = 200_000

# A series' one sample as Prometheus encodes it, after its labels: field 2 of 16 bytes, the
# value (field 1, 8 bytes) and the timestamp (field 2, a varint of 6 bytes: every
# millisecond from February 1971 to 2109). A value of 0 is left out (proto3): 9 bytes.
_SAMPLE_BYTES = 18
_ZERO_SAMPLE_HEAD = b"\x12\x07"
_ZERO_VALUE = b"\x12\x10\x09" + bytes(8)  # the same sample's head with its 0 written out
_SAMPLE = np.dtype([("tag", "u1"), ("length", "u1"), ("value_tag", "u1"), ("value", "<u8"),
                    ("timestamp_tag", "u1"), ("timestamp", "u1", (6,))])
_VARINT_SHIFTS = np.arange(0, 42, 7, dtype=np.int64)


class WriteRejected(Exception):
    """The body breaks a rule: answer ``status`` with ``message``; ``reason`` labels metrics."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one series may look like; see ``IngressSettings`` for the meaning of each."""

    allowed_metrics: str = "cloudtuner_.+|kubecost_.+"
    max_labels_per_series: int = 40
    max_label_name_length: int = 1024
    max_label_value_length: int = 2048
    max_future_seconds: float = 600.0
    max_past_seconds: float = 29.0 * DAY
    max_decoded_bytes: int = 64 << 20
    max_series: int = 150_000
    active_series_seconds: float = 1200.0


@dataclasses.dataclass
class Policed:
    """A body made fit to forward, with what was dropped from it and why."""

    body: bytes  # snappy-compressed WriteRequest, ready for the TSDB
    series: int
    samples: int
    dropped: Counter[str]  # samples dropped, by reason
    oldest_ms: int  # the oldest sample's timestamp (of the body as sent): whether the write came late
    over_limit: int = 0  # new series refused by the tenant's series limit (their samples are in ``dropped``)
    fast: bool = False  # it took the fast path


class _Known(NamedTuple):
    """A fit label set as the fast path knows it, by the bytes it arrives as."""

    prefix: bytes  # the series' own field header and stamped labels, for a one-sample series
    key: bytes  # the series among the tenant's active ones (``_Verdict.key``)
    is_cost: bool
    as_sent: bool  # the client's labels are the stamped ones


class _Verdict(NamedTuple):
    """What to do with every series that carries one exact label set."""

    labels: tuple[bytes, ...] | None  # labels to forward; None: drop the series
    relabel: bool  # the client's labels differ from ``labels``
    is_cost: bool
    reason: str = ""  # why the series is dropped
    # The series among the tenant's active ones: its stamped labels encoded, one object for
    # both paths, whose hash Python computes once.
    key: bytes = b""


def decompress(body: bytes, max_decoded_bytes: int) -> bytes:
    """Snappy block format, refusing a body that claims to inflate past the limit."""
    declared = _declared_length(body)
    if declared > max_decoded_bytes:
        raise WriteRejected(
            413, "too_large", f"body decompresses to {declared} bytes, over the limit of {max_decoded_bytes}"
        )
    try:
        return snappy.uncompress(body)
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise WriteRejected(400, "bad_snappy", f"body is not snappy block format: {exc or type(exc).__name__}") from None


def _declared_length(body: bytes) -> int:
    # The block format starts with the uncompressed length as a varint.
    result = shift = 0
    for i, byte in enumerate(body[:5]):
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result
        shift += 7
    raise WriteRejected(400, "bad_snappy", "body is not snappy block format: no valid length header")


class TenantPolice:
    """Polices the writes of one tenant: validates, stamps ``tenant_id``, drops the unfit.

    One instance per tenant and replica; it remembers the label sets it has judged.
    """

    def __init__(self, tenant_id: str, limits: Limits) -> None:
        self.tenant_id = tenant_id
        self.limits = limits
        self._allowed = re.compile(limits.allowed_metrics)
        self._tenant_label = Label(name=TENANT_LABEL, value=tenant_id).SerializeToString()
        self._verdicts: dict[tuple[bytes, ...], _Verdict] = {}
        self._known: dict[bytes, _Known] = {}  # the fit label sets, by their encoded labels
        # Stamped label set → the wall-clock second of its last sample here; never holds
        # more than ``limits.max_series`` sets.
        self._active: dict[tuple[bytes, ...], float] = {}
        self._swept_at = 0.0

    @property
    def active_series(self) -> int:
        """Series of this tenant active as of the last write (those older than the window go at the next)."""
        return len(self._active)

    def _sweep(self, now: float) -> None:
        """Forget the series idle for longer than the window; at most every tenth of it."""
        window = self.limits.active_series_seconds
        if now - self._swept_at < window / 10:
            return
        self._swept_at = now
        oldest = now - window
        self._active = {labels: seen for labels, seen in self._active.items() if seen > oldest}

    def police(self, body: bytes, now_ms: int) -> Policed:
        """Turn a client's compressed body into the one to forward, or raise WriteRejected."""
        raw = decompress(body, self.limits.max_decoded_bytes)
        self._sweep(now_ms / 1000)
        return self._police_known(body, raw, now_ms) or self._police(body, raw, now_ms)

    def _police_known(self, body: bytes, raw: bytes, now_ms: int) -> Policed | None:
        """The fast path: the body as the full path would pass it, or None when it cannot say."""
        request = SeriesBytesWriteRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError:
            return None
        series = request.timeseries
        if not series:
            return None
        lookup = self._known.get
        known = [lookup(encoded[:-_SAMPLE_BYTES]) for encoded in series]
        samples = [encoded[-_SAMPLE_BYTES:] for encoded in series]
        if None in known:  # a sample of value 0, or a label set not judged yet, or not one sample
            for i in [i for i, entry in enumerate(known) if entry is None]:
                encoded = series[i]
                entry = lookup(encoded[:-9])
                if entry is None or encoded[-9:-7] != _ZERO_SAMPLE_HEAD:
                    return None
                known[i], samples[i] = entry, _ZERO_VALUE + encoded[-7:]
        timestamps = self._passing_timestamps(np.frombuffer(b"".join(samples), dtype=_SAMPLE), known, now_ms)
        if timestamps is None:
            return None
        keys = [entry.key for entry in known]
        active, now = self._active, now_ms / 1000
        # Far from the limit (every steady tenant), new series need not even be counted.
        if len(active) + len(keys) > self.limits.max_series and (
            len(active) + len(set(keys).difference(active)) > self.limits.max_series
        ):
            return None
        active.update(dict.fromkeys(keys, now))
        prefixes = [entry.prefix for entry in known]
        if all(entry.as_sent for entry in known) and len(raw) == len(series) * _SAMPLE_BYTES + sum(map(len, prefixes)):
            forward = body  # nothing else in it, and every label set already stamped: as it came
        else:
            parts: list[bytes] = [b""] * (2 * len(known))
            parts[0::2] = prefixes
            parts[1::2] = samples
            forward = snappy.compress(b"".join(parts))
        return Policed(body=forward, series=len(known), samples=len(known), dropped=Counter(),
                       oldest_ms=int(timestamps.min()), fast=True)

    def _passing_timestamps(self, sample: np.ndarray, known: list[_Known], now_ms: int) -> np.ndarray | None:
        """The timestamps of the series' last 18 bytes when each is one sample the full path
        would keep as it is; otherwise None."""
        digits = sample["timestamp"]
        if not ((sample["tag"] == 0x12) & (sample["length"] == 16) & (sample["value_tag"] == 0x09)
                & (sample["timestamp_tag"] == 0x10) & (digits[:, :5] >= 0x80).all(axis=1)
                & (digits[:, 5] < 0x80)).all():
            return None
        timestamp = ((digits & 0x7F).astype(np.int64) << _VARINT_SHIFTS).sum(axis=1)
        if not ((timestamp >= now_ms - int(self.limits.max_past_seconds * 1000))
                & (timestamp <= now_ms + int(self.limits.max_future_seconds * 1000))).all():
            return None  # the full path names the series and the bound
        bits = sample["value"]
        value = bits.view(np.float64) if bits.flags.c_contiguous else bits.copy().view(np.float64)
        if not (np.isfinite(value) | (bits == STALE_NAN_BITS)).all():
            return None
        negative = np.flatnonzero(value < 0)
        return None if any(known[i].is_cost for i in negative) else timestamp

    def _police(self, body: bytes, raw: bytes, now_ms: int) -> Policed:
        """The full path: every rule, every drop counted."""
        request = RawWriteRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError as exc:
            raise WriteRejected(400, "bad_protobuf", f"body is not a protobuf WriteRequest: {exc}") from None
        # Exemplars, native histograms and metadata are not ours to store.
        request.DiscardUnknownFields()
        # Unchanged so far: the body may go on as it came, without encoding it again.
        untouched = request.ByteSize() == len(raw)

        newest_ms = now_ms + int(self.limits.max_future_seconds * 1000)
        oldest_ms = now_ms - int(self.limits.max_past_seconds * 1000)
        verdicts = self._verdicts
        now = now_ms / 1000
        active, max_series = self._active, self.limits.max_series
        fresh: set[bytes] = set()  # new series, counted once the whole body has passed
        over_limit: set[bytes] = set()
        rebuild = False  # some series or sample must go: rebuild the request without it
        samples = 0
        oldest_sample = newest_ms
        # The hot loop: kept free of anything the common case does not need.
        for index, series in enumerate(request.timeseries):
            key = tuple(series.labels)
            verdict = verdicts.get(key) or self._judge(key, index)
            labels, relabel, is_cost, _, series_key = verdict
            if labels is None:
                rebuild = True
                continue
            if series_key in active:
                active[series_key] = now
            elif series_key not in fresh:
                if len(active) + len(fresh) >= max_series:
                    over_limit.add(series_key)
                    rebuild = True
                    continue
                fresh.add(series_key)
            if relabel:
                series.labels[:] = labels
                untouched = False
            for sample in series.samples:
                if not oldest_ms <= sample.timestamp <= newest_ms:
                    raise self._out_of_range(index, sample.timestamp, newest_ms)
                if sample.timestamp < oldest_sample:
                    oldest_sample = sample.timestamp
                value = sample.value
                # Finite and not negative passes at once; only the odd sample pays for the exact test.
                if not 0.0 <= value < math.inf:
                    rebuild = rebuild or _bad_value(value, is_cost)
            samples += len(series.samples)
        active.update(dict.fromkeys(fresh, now))
        dropped: Counter[str] = Counter()
        if rebuild:
            request, samples = _rebuilt(request, verdicts, over_limit, dropped)
        return Policed(
            body=body if untouched and not rebuild else snappy.compress(request.SerializeToString()),
            series=len(request.timeseries),
            samples=samples,
            dropped=+dropped,  # without the reasons of series that had no sample: counters refuse 0
            oldest_ms=oldest_sample,
            over_limit=len(over_limit),
        )

    def _out_of_range(self, index: int, timestamp: int, newest_ms: int) -> WriteRejected:
        if timestamp > newest_ms:
            return WriteRejected(
                400,
                "future_timestamp",
                f"series {index}: sample at {timestamp} ms is more than {self.limits.max_future_seconds:g} s in the future",
            )
        # The TSDB can never store it (it answers such a sample 500, which senders retry forever).
        return WriteRejected(
            400,
            "past_timestamp",
            f"series {index}: sample at {timestamp} ms is more than {self.limits.max_past_seconds / DAY:g} days in the past",
        )

    def _judge(self, key: tuple[bytes, ...], index: int) -> _Verdict:
        """Validate a label set never seen before and decide its fate."""
        limits = self.limits
        if not key:
            raise WriteRejected(400, "empty_labels", f"series {index} has no labels")
        if len(key) > limits.max_labels_per_series:
            raise WriteRejected(
                400, "too_many_labels", f"series {index} has {len(key)} labels, over the limit of {limits.max_labels_per_series}"
            )
        names: list[str] = []
        values: list[str] = []
        for encoded in key:
            try:
                label = Label.FromString(encoded)
            except DecodeError:
                raise WriteRejected(400, "bad_label", f"series {index}: a label is not valid protobuf or UTF-8") from None
            names.append(label.name)
            values.append(label.value)
        for name, value in zip(names, values):
            _check_label(index, name, value, limits)
        for previous, name in zip(names, names[1:]):
            if name == previous:
                raise WriteRejected(400, "duplicate_label", f"series {index}: label {name!r} appears twice")
            if name < previous:
                raise WriteRejected(400, "unsorted_labels", f"series {index}: labels are not sorted by name ({previous!r} before {name!r})")
        if METRIC_NAME_LABEL not in names:
            raise WriteRejected(400, "missing_metric_name", f"series {index} has no __name__ label")
        metric = values[names.index(METRIC_NAME_LABEL)]
        if not _METRIC_NAME.fullmatch(metric):
            raise WriteRejected(400, "invalid_metric_name", f"series {index}: {metric!r} is not a valid metric name")

        if len(self._verdicts) >= _MAX_REMEMBERED_LABEL_SETS:
            self._verdicts.clear()
            self._known.clear()
        family = USAGE_FAMILIES.get(metric)
        if family is None and not self._allowed.fullmatch(metric):
            verdict = _Verdict(labels=None, relabel=False, is_cost=False, reason="metric_not_allowed")
        elif family is not None and not family.allowed_labels.issuperset(names):
            verdict = _Verdict(labels=None, relabel=False, is_cost=False, reason="label_not_allowed")
        else:
            stamped = self._stamped(key, names)
            encoded = _encoded_labels(stamped)
            verdict = _Verdict(labels=stamped, relabel=stamped != key, is_cost=metric.endswith("_cost"), key=encoded)
            # The stamped set is fit as it is: a series relabelled in place is known by it too.
            self._verdicts[stamped] = verdict._replace(relabel=False)
            self._know(_encoded_labels(key), encoded, verdict.is_cost)
        self._verdicts[key] = verdict
        return verdict

    def _know(self, sent: bytes, stamped: bytes, is_cost: bool) -> None:
        """Let the fast path recognise a fit label set by its encoded labels, as sent and as stamped."""
        prefix = _field(stamped + bytes(_SAMPLE_BYTES))[:-_SAMPLE_BYTES]
        self._known[sent] = _Known(prefix, stamped, is_cost, as_sent=sent == stamped)
        self._known[stamped] = _Known(prefix, stamped, is_cost, as_sent=True)

    def _stamped(self, key: tuple[bytes, ...], names: list[str]) -> tuple[bytes, ...]:
        """The label set with ``tenant_id`` = this tenant, whatever the client sent; ``key`` itself if already so."""
        position = next((i for i, name in enumerate(names) if name >= TENANT_LABEL), len(names))
        if position < len(names) and names[position] == TENANT_LABEL:
            if key[position] == self._tenant_label:
                return key
            return key[:position] + (self._tenant_label,) + key[position + 1 :]
        return key[:position] + (self._tenant_label,) + key[position:]


def _field(payload: bytes) -> bytes:
    """``payload`` as field 1 (length-delimited) of a message."""
    header = bytearray(b"\x0a")
    length = len(payload)
    while length >= 0x80:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return bytes(header) + payload


def _encoded_labels(labels: tuple[bytes, ...]) -> bytes:
    """The labels of a series as it carries them: each a field 1."""
    return b"".join(_field(label) for label in labels)


def _check_label(index: int, name: str, value: str, limits: Limits) -> None:
    if not name:
        raise WriteRejected(400, "empty_label_name", f"series {index} has a label with an empty name")
    if len(name) > limits.max_label_name_length:
        raise WriteRejected(400, "label_name_too_long", f"series {index}: label name of {len(name)} characters, over {limits.max_label_name_length}")
    if not _LABEL_NAME.fullmatch(name):
        raise WriteRejected(400, "invalid_label_name", f"series {index}: {name!r} is not a valid label name")
    if not value:
        raise WriteRejected(400, "empty_label_value", f"series {index}: label {name!r} has an empty value")
    if len(value) > limits.max_label_value_length:
        raise WriteRejected(400, "label_value_too_long", f"series {index}: value of {name!r} has {len(value)} characters, over {limits.max_label_value_length}")


def _bad_value(value: float, is_cost: bool) -> bool:
    """Whether a sample's value must not be stored: the staleness marker always may."""
    if value != value:
        return struct.pack("<d", value) != _STALE_NAN_BYTES
    return math.isinf(value) or (is_cost and value < 0)


def _rebuilt(
    request: RawWriteRequest,
    verdicts: Mapping[tuple[bytes, ...], _Verdict],
    over_limit: set[bytes],
    dropped: Counter[str],
) -> tuple[RawWriteRequest, int]:
    """The request without its dropped series (``over_limit`` too) and unfit samples, counted in ``dropped``.

    Runs after the hot loop, which has already judged and relabelled every series.
    """
    rebuilt = RawWriteRequest()
    samples = 0
    for series in request.timeseries:
        # Every label set here was judged by the hot loop, relabelled ones under their stamped labels too.
        verdict = verdicts[tuple(series.labels)]
        if verdict.labels is None:
            dropped[verdict.reason] += len(series.samples)
            continue
        if verdict.key in over_limit:  # left as the client sent it, known by its verdict's stamped labels
            dropped["series_limit"] += len(series.samples)
            continue
        out = rebuilt.timeseries.add()
        out.labels.extend(series.labels)
        for sample in series.samples:
            if _bad_value(sample.value, is_cost=False):
                dropped["non_finite_value"] += 1
            elif _bad_value(sample.value, verdict.is_cost):
                dropped["negative_cost"] += 1
            else:
                out.samples.append(sample)
        samples += len(out.samples)
    return rebuilt, samples


def encode(series: Iterable[tuple[Mapping[str, str], Iterable[tuple[int, float]]]]) -> bytes:
    """A snappy-compressed WriteRequest, labels sorted as Prometheus sends them.

    ``series`` yields (labels, [(timestamp_ms, value), ...]); for clients, tests and benchmarks.
    """
    request = WriteRequest()
    for labels, samples in series:
        out = request.timeseries.add()
        for name in sorted(labels):
            out.labels.add(name=name, value=labels[name])
        for timestamp_ms, value in samples:
            out.samples.add(timestamp=timestamp_ms, value=value)
    return snappy.compress(request.SerializeToString())


def decode(body: bytes) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    """The inverse of ``encode``: (labels, samples) for each series of a compressed body."""
    request = WriteRequest.FromString(snappy.uncompress(body))
    return [
        ({label.name: label.value for label in ts.labels}, [(s.timestamp, s.value) for s in ts.samples])
        for ts in request.timeseries
    ]
