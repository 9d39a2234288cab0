"""Hostile remote-write bodies for R4, drawn by hypothesis, each with the answers it may get.

``generate(count, ...)`` runs a derandomized hypothesis search (same cases every run of the
same code) that only collects cases; the test sends them concurrently. Kinds are weighted:
mutations of honest bodies dominate, zip bombs (each up to 64 MiB to inflate) stay rare.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import struct
from collections.abc import Callable, Mapping

import snappy
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from k8scost.promql import COST_METRICS
from serve_apps.ingress.proto.remote_write_pb2 import Sample
from serve_apps.ingress.remote_write import STALE_NAN_BITS, Limits, encode
from tests.test_remote_write import field, raw_body

MINUTE_MS = 60_000
DAY_MS = 86_400_000
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# The ingress's limits: the test deployment keeps the defaults.
_LIMITS = Limits()
MAX_LABELS = _LIMITS.max_labels_per_series
MAX_NAME = _LIMITS.max_label_name_length
MAX_VALUE = _LIMITS.max_label_value_length
MAX_DECODED = _LIMITS.max_decoded_bytes
MAX_FUTURE_MS = int(_LIMITS.max_future_seconds * 1000)

_BATCH = 10
OK = frozenset({204, 429})  # 429: the tenant's rate limit, which comes after the parser
ANY = frozenset(range(200, 300)) | frozenset(range(400, 500))


@dataclasses.dataclass(frozen=True)
class Case:
    """One body to send, the answers allowed, and what a 4xx must say."""

    kind: str
    body: bytes
    statuses: frozenset[int]
    needle: str | None = None  # in the 4xx message
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Series that must land exactly so (namespace → [(ms, value)]) if the body is accepted.
    lands: Mapping[str, tuple[tuple[int, float], ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Run:
    """What the bodies are about: the time they were made and their namespace prefixes."""

    now_ms: int
    honest: str  # namespaces of mutated honest bodies: anything may land
    dropped: str  # namespaces whose every sample must be dropped (NaN, ±Inf, negative cost)
    mixed: str  # namespaces that must hold exactly their ``Case.lands`` samples


def _nan(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


# Values a cost series must never store: NaNs of any payload but the staleness marker, ±Inf, negatives.
_unfit_values = st.one_of(
    st.builds(
        lambda sign, mantissa: _nan(sign << 63 | 0x7FF << 52 | mantissa),
        st.integers(0, 1),
        st.integers(1, 2**52 - 1).filter(lambda m: 0x7FF << 52 | m != STALE_NAN_BITS),
    ),
    st.sampled_from([math.inf, -math.inf, math.nan, -math.nan]),
    st.floats(max_value=-5e-324, allow_infinity=False, allow_nan=False),
)
_names = st.sampled_from(["cluster", "namespace", "node", "pod", "container", "zone", "x"])
_odd_values = st.sampled_from(['"} or vector(1) #', "a\nb", ".*", "é漢字🙂", "a\x00b", "v", "' OR 1=1 --", "\\"])


@st.composite
def _honest_series(draw: st.DrawFn, run: Run) -> tuple[dict[str, str], list[tuple[int, float]]]:
    metric = draw(st.sampled_from([*COST_METRICS, "cloudtuner_exporter_up", "node_cpu_seconds_total"]))
    labels = {"__name__": metric, "cluster": "r4", "namespace": f"{run.honest}-{draw(st.integers(0, 20))}"}
    if draw(st.booleans()):
        labels[draw(_names)] = draw(_odd_values)
    if draw(st.booleans()):
        labels["tenant_id"] = "someone-else"
    times = draw(st.lists(st.integers(0, 5 * MINUTE_MS), min_size=1, max_size=3, unique=True))
    return labels, [_honest_sample(run.now_ms - t) for t in times]


def _honest_sample(at: int) -> tuple[int, float]:
    # The value follows from the time: a series written twice at one time by two bodies
    # gets the same value, which the TSDB takes, not a second one, which it refuses.
    return at, (at % 100_000) / 64


@st.composite
def _honest_body(draw: st.DrawFn, run: Run) -> bytes:
    return encode(draw(st.lists(_honest_series(run), min_size=1, max_size=4)))


def _raw_of(body: bytes) -> bytes:
    return snappy.uncompress(body)


def _position(draw: st.DrawFn, length: int) -> int:
    """A position in [0, length): drawn as a fraction, so the draws do not depend on the body's
    length (which varies with the time in it) and every run makes the same choices."""
    return draw(st.integers(0, (1 << 20) - 1)) * length >> 20


def _flip(draw: st.DrawFn, data: bytes, max_flips: int) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_flips))):
        out[_position(draw, len(out))] ^= draw(st.integers(1, 255))
    return bytes(out)


# --- the kinds ------------------------------------------------------------------------


@st.composite
def truncated_snappy(draw: st.DrawFn, run: Run) -> Case:
    body = draw(_honest_body(run))
    return Case("truncated snappy", body[: _position(draw, len(body))], frozenset({400}), "snappy")


@st.composite
def flipped_snappy(draw: st.DrawFn, run: Run) -> Case:
    return Case("bit-flipped snappy", _flip(draw, draw(_honest_body(run)), 8), ANY)


@st.composite
def bad_protobuf(draw: st.DrawFn, run: Run) -> Case:
    raw = _raw_of(draw(_honest_body(run)))
    how = draw(st.sampled_from(["flip", "truncate", "insert", "random"]))
    if how == "flip":
        raw = _flip(draw, raw, 8)
    elif how == "truncate":
        raw = raw[: _position(draw, len(raw))]
    elif how == "insert":
        at = _position(draw, len(raw) + 1)
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=16)) + raw[at:]
    else:
        raw = draw(st.binary(min_size=1, max_size=512))
    return Case(f"bad protobuf ({how})", snappy.compress(raw), ANY)


@st.composite
def random_bytes(draw: st.DrawFn, run: Run) -> Case:
    return Case("random bytes", draw(st.binary(min_size=1, max_size=2048)), ANY)


def _cost_labels(run: Run, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    labels = [("__name__", "cloudtuner_kubecost_namespace_total_cost"), ("cluster", "r4"), ("namespace", f"{run.honest}-x")]
    return sorted(labels + (extra or []))


def _with_bad_series(draw: st.DrawFn, run: Run, labels: list[tuple[str, str]]) -> bytes:
    """A body of honest series with ``labels`` at a drawn position (labels sent in that order)."""
    sample = [(run.now_ms, 1.0)]
    series = [(_cost_labels(run), sample) for _ in range(draw(st.integers(0, 2)))]
    series.insert(draw(st.integers(0, len(series))), (labels, sample))
    return raw_body(*series)


@st.composite
def many_labels(draw: st.DrawFn, run: Run) -> Case:
    n = draw(st.one_of(st.integers(MAX_LABELS, MAX_LABELS + 10), st.integers(MAX_LABELS + 1, 5000)))
    labels = _cost_labels(run, [(f"l{i:05d}", "v") for i in range(n)])
    return Case("huge label count", _with_bad_series(draw, run, labels), frozenset({400}), "over the limit")


@st.composite
def long_label_name(draw: st.DrawFn, run: Run) -> Case:
    name = "a" * draw(st.integers(MAX_NAME + 1, 100_000))
    return Case("label name too long", _with_bad_series(draw, run, _cost_labels(run, [(name, "v")])), frozenset({400}), "label name of")


@st.composite
def long_label_value(draw: st.DrawFn, run: Run) -> Case:
    value = draw(st.sampled_from("x漢🙂")) * draw(st.integers(MAX_VALUE + 1, 200_000))
    return Case("label value too long", _with_bad_series(draw, run, _cost_labels(run, [("pod", value)])), frozenset({400}), "characters, over")


_BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82"]


@st.composite
def bad_utf8(draw: st.DrawFn, run: Run) -> Case:
    """A label name or value with bytes that are not UTF-8, built on the wire (protobuf refuses to)."""
    labels = [(n.encode(), v.encode()) for n, v in _cost_labels(run)]
    which, part = draw(st.integers(0, len(labels) - 1)), draw(st.integers(0, 1))
    text = labels[which][part]
    at = _position(draw, len(text) + 1)
    broken = text[:at] + draw(st.sampled_from(_BAD_UTF8)) + text[at:]
    labels[which] = (broken, labels[which][1]) if part == 0 else (labels[which][0], broken)
    series = b"".join(field(1, field(1, n) + field(2, v)) for n, v in labels)
    series += field(2, Sample(timestamp=run.now_ms, value=1.0).SerializeToString())
    return Case("bad UTF-8", snappy.compress(field(1, series)), frozenset({400}), "UTF-8")


@st.composite
def unfit_values(draw: st.DrawFn, run: Run) -> Case:
    """Cost series with only NaN, ±Inf or negative samples: accepted, and nothing of them stored."""
    series = []
    for _ in range(draw(st.integers(1, 3))):
        metric = draw(st.sampled_from(COST_METRICS))
        labels = {"__name__": metric, "cluster": "r4", "namespace": f"{run.dropped}-{draw(st.integers(0, 9))}"}
        times = draw(st.lists(st.integers(0, 5 * MINUTE_MS), min_size=1, max_size=4, unique=True))
        series.append((labels, [(run.now_ms - t, draw(_unfit_values)) for t in times]))
    return Case("NaN/Inf/negative cost", encode(series), OK)


@st.composite
def mixed_values(draw: st.DrawFn, run: Run) -> Case:
    """One cost series with one fit sample among unfit ones: exactly the fit one is stored."""
    namespace = f"{run.mixed}-{draw(st.integers(0, 10**6))}"  # two cases may share one: both land
    times = draw(st.lists(st.integers(0, 5 * MINUTE_MS), min_size=2, max_size=5, unique=True))
    keep = draw(st.integers(0, len(times) - 1))
    good = _honest_sample(run.now_ms - times[keep])
    samples = [good if i == keep else (run.now_ms - t, draw(_unfit_values)) for i, t in enumerate(times)]
    labels = {"__name__": draw(st.sampled_from(COST_METRICS)), "cluster": "r4", "namespace": namespace}
    return Case("fit sample among unfit", encode([(labels, samples)]), OK, lands={namespace: (good,)})


@st.composite
def far_past(draw: st.DrawFn, run: Run) -> Case:
    at = draw(st.one_of(st.sampled_from([INT64_MIN, -1, 0, 1]), st.integers(INT64_MIN, run.now_ms - 31 * DAY_MS)))
    labels = dict(_cost_labels(run))
    return Case("timestamp far past", encode([(labels, [(at, 1.0)])]), frozenset({400}), "in the past")


@st.composite
def far_future(draw: st.DrawFn, run: Run) -> Case:
    # Half an hour past the limit at least: the body is judged up to minutes after it was made.
    at = draw(st.one_of(st.just(INT64_MAX), st.integers(run.now_ms + MAX_FUTURE_MS + 30 * MINUTE_MS, INT64_MAX)))
    labels = dict(_cost_labels(run))
    honest = [(labels, [(run.now_ms, 1.0)])] * draw(st.integers(0, 2))
    return Case("timestamp far future", encode([*honest, (labels, [(at, 1.0)])]), frozenset({400}), "in the future")


@functools.lru_cache(maxsize=None)
def _compressed_zeros(size: int) -> bytes:
    return snappy.compress(bytes(size))


@functools.lru_cache(maxsize=None)
def _repeated_series(size: int, now_ms: int, namespace: str) -> bytes:
    labels = {"__name__": "cloudtuner_kubecost_namespace_total_cost", "cluster": "r4", "namespace": namespace}
    one = _raw_of(encode([(labels, [(now_ms, 1.0)])]))  # one series: repeated, a valid WriteRequest
    return snappy.compress(one * -(-size // len(one)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _strip_varint(body: bytes) -> bytes:
    for i, byte in enumerate(body):
        if not byte & 0x80:
            return body[i + 1 :]
    return b""


@st.composite
def zip_bomb(draw: st.DrawFn, run: Run) -> Case:
    how = draw(st.sampled_from(["inflates", "declares huge", "declares too little", "declares too much", "valid series"]))
    if how == "inflates":  # real ratio ~20:1; above the limit it is refused before inflating
        size = draw(st.sampled_from([1 << 20, 16 << 20, MAX_DECODED, MAX_DECODED + 1, 150 << 20]))
        status, needle = (400, "protobuf") if size <= MAX_DECODED else (413, "decompresses to")
        return Case(f"zip bomb {how}", _compressed_zeros(size), frozenset({status}), needle)
    if how == "declares huge":  # a few bytes claiming gigabytes
        declared = draw(st.integers(MAX_DECODED + 1, 2**35 - 1))
        return Case(f"zip bomb {how}", _varint(declared) + draw(st.binary(max_size=64)), frozenset({413}), "decompresses to")
    if how == "declares too little":  # the header lies low: the stream would write past it
        declared = draw(st.integers(0, 1 << 16))
        body = _varint(declared) + _strip_varint(_compressed_zeros(1 << 20))
        return Case(f"zip bomb {how}", body, frozenset({400}), "snappy")
    if how == "declares too much":  # the header lies high, within the limit: the stream ends short
        declared = draw(st.integers(1 << 20, MAX_DECODED))
        body = _varint(declared) + _strip_varint(snappy.compress(draw(st.binary(min_size=1, max_size=256))))
        return Case(f"zip bomb {how}", body, frozenset({400}), "snappy")
    # Honest series repeated: parses, costs a dict lookup per series; the rate limit may answer.
    size = draw(st.sampled_from([256 << 10, MAX_DECODED + 1]))
    body = _repeated_series(size, run.now_ms, f"{run.honest}-bomb")
    return Case(f"zip bomb {how}", body, OK if size <= MAX_DECODED else frozenset({413}), None if size <= MAX_DECODED else "decompresses to")


_STRUCTURE = [
    ("duplicate label", lambda base: sorted(base + [("namespace", "again")]), "appears twice"),
    ("duplicate __name__", lambda base: sorted(base + [("__name__", "cloudtuner_x_cost")]), "appears twice"),
    ("missing __name__", lambda base: [lab for lab in base if lab[0] != "__name__"], "no __name__"),
    ("unsorted labels", lambda base: list(reversed(base)), "not sorted"),
    ("no labels", lambda base: [], "no labels"),
    ("empty label name", lambda base: sorted(base + [("", "x")]), "empty name"),
    ("empty label value", lambda base: sorted(base + [("pod", "")]), "empty value"),
    ("invalid label name", lambda base: sorted(base + [("a-b", "x")]), "not a valid label name"),
    ("invalid metric name", lambda base: [("__name__", "cloudtuner kubecost")] + base[1:], "not a valid metric name"),
]


@st.composite
def bad_structure(draw: st.DrawFn, run: Run) -> Case:
    kind, make, needle = draw(st.sampled_from(_STRUCTURE))
    return Case(kind, _with_bad_series(draw, run, make(_cost_labels(run))), frozenset({400}), needle)


@st.composite
def empty_body(draw: st.DrawFn, run: Run) -> Case:
    if draw(st.booleans()):
        return Case("empty body", b"", frozenset({400}), "snappy")
    return Case("empty WriteRequest", snappy.compress(b""), OK)


_WRONG_HEADERS = [
    {"Content-Encoding": "gzip"},
    {"Content-Encoding": "identity"},
    {"Content-Encoding": "br, snappy"},
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/json"},
    {"Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request", "X-Prometheus-Remote-Write-Version": "2.0.0"},
    {"X-Prometheus-Remote-Write-Version": "9.9.9'; DROP"},
    {"Content-Type": "", "Content-Encoding": ""},
]


@st.composite
def wrong_headers(draw: st.DrawFn, run: Run) -> Case:
    headers = draw(st.sampled_from(_WRONG_HEADERS))
    body = draw(_honest_body(run))
    how = draw(st.sampled_from(["snappy", "gzip", "raw"]))
    if how == "snappy":  # headers are not what decides: the body is honest
        return Case("wrong headers, snappy body", body, OK, headers=headers)
    if how == "gzip":
        return Case("wrong headers, gzip body", gzip.compress(_raw_of(body), mtime=0), frozenset({400}), "snappy", headers)
    return Case("wrong headers, uncompressed body", _raw_of(body), ANY - OK, headers=headers)


@st.composite
def unknown_fields(draw: st.DrawFn, run: Run) -> Case:
    """Exemplars, native histograms, metadata and unknown fields: dropped, the rest stored."""
    raw = _raw_of(draw(_honest_body(run)))
    extra = draw(st.sampled_from([field(3, b"\x08\x01"), field(15, b"junk"), b"\x28\x01", field(5, b"\x1a\x02\x18\x05")]))
    return Case("unknown fields", snappy.compress(raw + extra), OK)


# (strategy, weight): mutations of honest bodies dominate, zip bombs stay rare.
KINDS: list[tuple[Callable[[Run], st.SearchStrategy[Case]], int]] = [
    (truncated_snappy, 10),
    (flipped_snappy, 14),
    (bad_protobuf, 14),
    (random_bytes, 6),
    (many_labels, 5),
    (long_label_name, 4),
    (long_label_value, 4),
    (bad_utf8, 6),
    (unfit_values, 8),
    (mixed_values, 4),
    (far_past, 5),
    (far_future, 5),
    (zip_bomb, 1),
    (bad_structure, 8),
    (empty_body, 2),
    (wrong_headers, 4),
    (unknown_fields, 3),
]


def hostile_cases(run: Run) -> st.SearchStrategy[Case]:
    weighted = [strategy for strategy, weight in KINDS for _ in range(weight)]
    return st.sampled_from(weighted).flatmap(lambda strategy: strategy(run))


def generate(count: int, run: Run) -> list[Case]:
    """``count`` cases, the same ones on every run of this code (derandomized, no example database).

    Drawn in lists of ``_BATCH`` distinct bodies: a quarter of the time of one case per
    example, and hardly more repeats.
    """
    cases: list[Case] = []

    @settings(
        max_examples=-(-count // _BATCH),
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(hostile_cases(run), min_size=_BATCH, max_size=_BATCH, unique_by=lambda case: case.body))
    def collect(batch: list[Case]) -> None:
        cases.extend(batch)

    collect()
    if len(cases) < count:
        raise RuntimeError(f"hypothesis drew {len(cases)} cases, fewer than the {count} asked")
    return cases[:count]
