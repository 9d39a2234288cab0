"""The ingress's fast path against its full path, without servers.

The fast path may only pass a body the full path would pass unchanged: the same series and
samples forwarded, nothing dropped, nothing refused. Anything else it must hand over.
"""

from __future__ import annotations

import struct

import snappy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k8scost.usage_series import USAGE_FAMILIES
from serve_apps.ingress.proto.remote_write_pb2 import WriteRequest
from serve_apps.ingress.remote_write import STALE_NAN_BITS, Limits, Policed, TenantPolice, WriteRejected, encode
from tests.test_remote_write import NOW_MS, STALE_NAN, cost, field, raw_body

DAY_MS = 86_400_000


def usage(family: str, container: str, **extra: str) -> dict[str, str]:
    """A series of a usage family with every label its allow-list has (``tenant_id`` aside)."""
    labels = {name: f"{name}-{container}" for name in USAGE_FAMILIES[family].allowed_labels if name != "tenant_id"}
    return {**labels, "__name__": family, **extra}


def forwarded(policed: Policed) -> list[tuple[tuple[tuple[str, str], ...], tuple[tuple[int, int], ...]]]:
    """What a body forwards, labels in order and values bit-exact (NaNs compare)."""
    request = WriteRequest.FromString(snappy.uncompress(policed.body))
    return [(tuple((l.name, l.value) for l in ts.labels),
             tuple((s.timestamp, struct.unpack("<Q", struct.pack("<d", s.value))[0]) for s in ts.samples))
            for ts in request.timeseries]


def steady(police: TenantPolice, body: bytes, now_ms: int = NOW_MS) -> Policed:
    """``body`` policed again once its label sets are known, as every scrape after the first is."""
    police.police(body, now_ms)
    return police.police(body, now_ms)


def test_a_scrape_after_the_first_takes_the_fast_path_and_forwards_what_the_full_path_would() -> None:
    series = [(usage(family, f"c{i}"), [(NOW_MS, value)])
              for i, family in enumerate(sorted(USAGE_FAMILIES))
              for value in (0.0, 1.5, -2.0, 3e9, STALE_NAN)]
    series += [(cost(f"ns{i}"), [(NOW_MS - i, 0.25 * i)]) for i in range(5)]
    body = encode(series)
    fast = steady(TenantPolice("tenant-a", Limits()), body)
    full = TenantPolice("tenant-a", Limits()).police(body, NOW_MS)
    assert (fast.fast, full.fast) == (True, False)
    assert forwarded(fast) == forwarded(full)
    assert (fast.series, fast.samples, fast.dropped) == (full.series, full.samples, full.dropped) == (
        len(series), len(series), {})
    # Both see how late the write is: by its oldest sample.
    assert fast.oldest_ms == full.oldest_ms == NOW_MS - 4
    # Every series got the tenant label, value 0 included (proto3 leaves it out: a shorter sample).
    assert all(("tenant_id", "tenant-a") in labels for labels, _ in forwarded(fast))


def test_an_honest_body_goes_on_as_it_came_on_the_fast_path() -> None:
    body = encode([(cost(tenant_id="tenant-a"), [(NOW_MS, 0.5)]), (cost("b", tenant_id="tenant-a"), [(NOW_MS, 1.0)])])
    policed = steady(TenantPolice("tenant-a", Limits()), body)
    assert policed.fast and policed.body is body


def test_the_fast_path_counts_active_series_as_the_full_path() -> None:
    limits = Limits(max_series=3)
    police = TenantPolice("tenant-a", limits)
    first = encode([(cost(f"ns{i}"), [(NOW_MS, 1.0)]) for i in range(3)])
    assert steady(police, first).fast and police.active_series == 3
    # A fourth series, known to the verdicts but over the limit: the full path refuses it, counted.
    police.police(encode([(cost("ns3"), [(NOW_MS, 1.0)])]), NOW_MS - 1)  # judged; refused, not active
    mixed = encode([(cost(f"ns{i}"), [(NOW_MS + 1, 1.0)]) for i in range(4)])
    policed = police.police(mixed, NOW_MS + 1)
    assert (policed.fast, policed.over_limit, policed.dropped, police.active_series) == (
        False, 1, {"series_limit": 1}, 3)


_FIT = [cost("a"), cost("b", tenant_id="tenant-a"), cost("c", tenant_id="victim"),
        usage("container_cpu_usage_seconds_total", "x"), usage("kube_pod_owner", "y")]
_UNFIT = [{"__name__": "kube_state_something", "pod": "p"},  # not allowed: dropped
          usage("container_memory_working_set_bytes", "y", image="not-allowed")]  # a label off the list
_HONEST_VALUES = [0.0, 1.0, -1.0, 2.5e12, -0.0, 5e-324, STALE_NAN]
_ODD_VALUES = [float("nan"), float("inf"), float("-inf")]
_ODD_TIMESTAMPS = [NOW_MS - 30 * DAY_MS, NOW_MS + 3_600_000, 0, 1, 2**35 - 1, 2**42]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Bodies mostly like a scrape's (the series known, one sample each), some with one
    thing the fast path must not take: an unfit series, an odd value or timestamp, no sample
    or two, metadata, a series without labels."""
    odd = draw(st.sampled_from(["none", "none", "none", "label set", "value", "timestamp", "samples", "tail",
                                "varint", "not a sample"]))
    series = []
    for labels in draw(st.lists(st.sampled_from(_FIT), min_size=1, max_size=6, unique_by=str)):
        samples = [(draw(st.sampled_from([NOW_MS, NOW_MS - 1, NOW_MS - 28 * DAY_MS])),
                    draw(st.sampled_from(_HONEST_VALUES)))]
        series.append([sorted(labels.items()), samples])
    at = draw(st.integers(0, len(series) - 1))
    if odd == "label set":
        series.insert(at, [sorted(draw(st.sampled_from(_UNFIT)).items()), [(NOW_MS, 1.0)]])
    elif odd == "value":
        series[at][1] = [(NOW_MS, draw(st.sampled_from(_ODD_VALUES)))]
    elif odd == "timestamp":
        series[at][1] = [(draw(st.sampled_from(_ODD_TIMESTAMPS)), 1.0)]
    elif odd == "samples":
        series[at][1] = draw(st.sampled_from([[], [(NOW_MS - 1, 1.0), (NOW_MS, 2.0)]]))
    encoded = snappy.uncompress(raw_body(*series))
    if odd in ("varint", "not a sample"):  # a known label set, then bytes shaped like its sample
        known = WriteRequest.FromString(encoded).timeseries[0]
        del known.samples[:]
        now = _varint(NOW_MS)  # 6 bytes; the same value when read 7 bits a byte, whatever the top bits
        if odd == "varint":  # the timestamp runs past the sample's end, or ends early
            digits = draw(st.sampled_from([now[:5] + bytes([now[5] | 0x80]), now[:2] + bytes([now[2] & 0x7F]) + now[3:]]))
            fake = b"\x12\x10\x09" + bytes(8) + b"\x10" + digits
        else:  # field 3 (an exemplar), as long as a sample of value 0 is
            fake = b"\x1a\x07\x10" + now
        encoded += field(1, known.SerializeToString() + fake)
    if odd == "tail":
        encoded += draw(st.sampled_from([field(3, b"\x0a\x01x"),  # metadata
                                         field(1, b"\x12\x10\x09" + bytes(8) + b"\x10\x80\x80\x80\x80\x80\x01")]))
    return snappy.compress(encoded)


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(), warm=st.booleans(), max_series=st.sampled_from([2, 150_000]))
def test_the_fast_path_passes_only_what_the_full_path_passes_unchanged(body: bytes, warm: bool, max_series: int) -> None:
    def outcome(police: TenantPolice) -> Policed | str:
        try:
            return police.police(body, NOW_MS)
        except WriteRejected as rejected:
            return rejected.reason

    limits = Limits(max_series=max_series)
    fast_police, full_police = TenantPolice("tenant-a", limits), TenantPolice("tenant-a", limits)
    if warm:  # every fit label set judged first, as a later scrape finds them
        for police in (fast_police, full_police):
            police.police(encode([(labels, [(NOW_MS - 1000, 1.0)]) for labels in _FIT]), NOW_MS)
            outcome(police)
    result = outcome(fast_police)
    full_police._known.clear()  # the reference: the full path alone, with the same verdicts
    reference = outcome(full_police)
    if isinstance(result, Policed) and result.fast:
        assert isinstance(reference, Policed)
        assert not reference.dropped and not reference.over_limit
        assert forwarded(result) == forwarded(reference)
        assert (result.series, result.samples, result.oldest_ms) == (
            reference.series, reference.samples, reference.oldest_ms)
    else:
        assert type(result) is type(reference)
        if isinstance(result, Policed):
            assert forwarded(result) == forwarded(reference) and result.dropped == reference.dropped
        else:
            assert result == reference
