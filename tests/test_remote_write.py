"""The remote-write codec and tenant police, without servers."""

from __future__ import annotations

import math
import struct

import pytest
import snappy

from serve_apps.ingress.proto.remote_write_pb2 import WriteRequest
from k8scost.usage_series import USAGE_FAMILIES
from serve_apps.ingress.remote_write import STALE_NAN_BITS, Limits, TenantPolice, WriteRejected, decode, encode

NOW_MS = 1_790_000_000_000
STALE_NAN = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


def raw_body(*series: tuple[list[tuple[str, str]], list[tuple[int, float]]]) -> bytes:
    """A body with labels exactly in the given order (``encode`` would sort them)."""
    request = WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        for timestamp, value in samples:
            ts.samples.add(timestamp=timestamp, value=value)
    return snappy.compress(request.SerializeToString())


def cost(namespace: str = "default", **extra: str) -> dict[str, str]:
    return {"__name__": "cloudtuner_kubecost_namespace_total_cost", "cluster": "c1", "namespace": namespace, **extra}


@pytest.fixture()
def police() -> TenantPolice:
    return TenantPolice("tenant-a", Limits())


def test_tenant_label_added_in_sorted_place(police: TenantPolice) -> None:
    out = police.police(encode([(cost(), [(NOW_MS, 0.5)])]), NOW_MS)
    [(labels, samples)] = decode(out.body)
    assert labels == {**cost(), "tenant_id": "tenant-a"}
    names = [l.name for l in WriteRequest.FromString(snappy.uncompress(out.body)).timeseries[0].labels]
    assert names == sorted(names) and "tenant_id" in names
    assert samples == [(NOW_MS, 0.5)]
    assert (out.series, out.samples) == (1, 1)


def test_spoofed_tenant_label_is_overwritten_every_time(police: TenantPolice) -> None:
    body = encode([(cost(tenant_id="victim"), [(NOW_MS, 1.0)]), (cost("b", zone="z"), [(NOW_MS, 2.0)])])
    for _ in range(2):  # the second pass is served from the remembered verdicts
        out = decode(police.police(body, NOW_MS).body)
        assert [labels["tenant_id"] for labels, _ in out] == ["tenant-a", "tenant-a"]
        assert out[1][0]["zone"] == "z"


@pytest.mark.parametrize("family", sorted(USAGE_FAMILIES))
def test_usage_families_cannot_forge_the_tenant_either(police: TenantPolice, family: str) -> None:
    """Each usage family, with every label of its allow-list, claiming another tenant: stamped."""
    labels = {name: "x" for name in USAGE_FAMILIES[family].allowed_labels} | {"__name__": family, "tenant_id": "victim"}
    body = encode([(labels, [(NOW_MS, 1.0)]), ({**labels, "tenant_id": "tenant-a"}, [(NOW_MS + 1, 2.0)])])
    for _ in range(2):
        out = police.police(body, NOW_MS)
        assert not out.dropped
        assert [(got["tenant_id"], samples) for got, samples in decode(out.body)] == [
            ("tenant-a", [(NOW_MS, 1.0)]), ("tenant-a", [(NOW_MS + 1, 2.0)])]


def test_verdicts_are_per_tenant() -> None:
    body = encode([(cost(), [(NOW_MS, 1.0)])])
    a, b = TenantPolice("a", Limits()), TenantPolice("b", Limits())
    assert decode(a.police(body, NOW_MS).body)[0][0]["tenant_id"] == "a"
    assert decode(b.police(body, NOW_MS).body)[0][0]["tenant_id"] == "b"


def test_disallowed_metric_is_dropped_and_counted(police: TenantPolice) -> None:
    body = encode([({"__name__": "node_network_receive_bytes_total", "device": "eth0"}, [(NOW_MS, 1), (NOW_MS + 1, 2)]), (cost(), [(NOW_MS, 3)])])
    out = police.police(body, NOW_MS)
    assert [labels["__name__"] for labels, _ in decode(out.body)] == ["cloudtuner_kubecost_namespace_total_cost"]
    assert out.dropped == {"metric_not_allowed": 2}
    assert out.samples == 1


def test_a_dropped_series_without_samples_adds_no_reason(police: TenantPolice) -> None:
    """The ingress counts each reason's samples in a Ray counter, which refuses 0 (R4 found a
    bit-flipped body that decoded to such a series and got a 500)."""
    body = encode([({"__name__": "node_network_receive_bytes_total"}, []), (cost(), [(NOW_MS, 3)])])
    out = police.police(body, NOW_MS)
    assert out.dropped == {} and out.samples == 1


def test_staleness_marker_passes_bit_exact(police: TenantPolice) -> None:
    out = police.police(encode([(cost(), [(NOW_MS, STALE_NAN)])]), NOW_MS)
    [(_, [(_, value)])] = decode(out.body)
    assert struct.pack("<d", value) == struct.pack("<Q", STALE_NAN_BITS)
    assert not out.dropped


@pytest.mark.parametrize(
    ("value", "reason"),
    [(math.inf, "non_finite_value"), (-math.inf, "non_finite_value"), (math.nan, "non_finite_value"), (-0.5, "negative_cost")],
)
def test_unfit_values_are_dropped_alone(police: TenantPolice, value: float, reason: str) -> None:
    body = encode([(cost("bad"), [(NOW_MS, value), (NOW_MS + 1000, 0.25)]), (cost("good"), [(NOW_MS, 1.5)])])
    out = police.police(body, NOW_MS)
    assert decode(out.body) == [
        ({**cost("bad"), "tenant_id": "tenant-a"}, [(NOW_MS + 1000, 0.25)]),
        ({**cost("good"), "tenant_id": "tenant-a"}, [(NOW_MS, 1.5)]),
    ]
    assert out.dropped == {reason: 1}


def test_negative_values_of_non_cost_metrics_pass(police: TenantPolice) -> None:
    body = encode([({"__name__": "cloudtuner_exporter_delta", "a": "b"}, [(NOW_MS, -1.0)])])
    assert decode(police.police(body, NOW_MS).body)[0][1] == [(NOW_MS, -1.0)]


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ([], "empty_labels"),
        ([("__name__", "cloudtuner_a_cost"), ("", "x")], "empty_label_name"),
        ([("__name__", "cloudtuner_a_cost"), ("ns", "a"), ("ns", "b")], "duplicate_label"),
        ([("__name__", "cloudtuner_a_cost"), ("pod", "a"), ("namespace", "b")], "unsorted_labels"),
        ([("namespace", "b")], "missing_metric_name"),
        ([("__name__", "9cloudtuner")], "invalid_metric_name"),
        ([("__name__", "cloudtuner_a_cost"), ("bad-name", "x")], "invalid_label_name"),
        ([("__name__", "cloudtuner_a_cost"), ("ns", "")], "empty_label_value"),
        ([("__name__", "cloudtuner_a_cost"), ("ns", "x" * 3000)], "label_value_too_long"),
        ([("__name__", "cloudtuner_a_cost"), ("n" * 2000, "x")], "label_name_too_long"),
        ([("__name__", "cloudtuner_a_cost")] + [(f"l{i:03d}", "x") for i in range(60)], "too_many_labels"),
    ],
)
def test_malformed_series_rejects_the_body(police: TenantPolice, labels, reason: str) -> None:
    body = raw_body((list(cost().items()), [(NOW_MS, 1)]), (labels, [(NOW_MS, 1)]))
    with pytest.raises(WriteRejected) as caught:
        police.police(body, NOW_MS)
    assert (caught.value.status, caught.value.reason) == (400, reason)
    assert "series 1" in caught.value.message


def test_future_sample_rejects_the_body(police: TenantPolice) -> None:
    ok = police.police(encode([(cost(), [(NOW_MS + 599_000, 1)])]), NOW_MS)
    assert ok.samples == 1
    with pytest.raises(WriteRejected) as caught:
        police.police(encode([(cost(), [(NOW_MS + 601_000, 1)])]), NOW_MS)
    assert caught.value.reason == "future_timestamp" and "600 s in the future" in caught.value.message


def test_sample_older_than_the_tsdb_takes_rejects_the_body(police: TenantPolice) -> None:
    # Prometheus answers such a sample 500 ("too old sample"): a sender would retry it forever.
    oldest = NOW_MS - 29 * 86_400_000
    assert police.police(encode([(cost(), [(oldest, 1)])]), NOW_MS).samples == 1
    with pytest.raises(WriteRejected) as caught:
        police.police(encode([(cost(), [(NOW_MS, 1)]), (cost("b"), [(oldest - 1, 1)])]), NOW_MS)
    assert caught.value.reason == "past_timestamp" and "series 1" in caught.value.message
    assert "29 days in the past" in caught.value.message


def test_bad_utf8_label_is_rejected(police: TenantPolice) -> None:
    request = WriteRequest()
    request.timeseries.add().samples.add(timestamp=NOW_MS, value=1)
    raw = request.SerializeToString()
    # A series whose one label has the name bytes b"\xff\xfe": field 1, length-delimited.
    label = b"\x0a\x02\xff\xfe\x12\x01x"
    series = b"\x0a" + bytes([len(label)]) + label
    body = snappy.compress(b"\x0a" + bytes([len(series)]) + series + raw)
    with pytest.raises(WriteRejected) as caught:
        police.police(body, NOW_MS)
    assert caught.value.reason == "bad_label"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"not snappy at all", 400, "bad_snappy"),
        (snappy.compress(b"\xff\xff\xff\xff"), 400, "bad_protobuf"),
        (b"\xff\xff\xff\xff\x7f" + b"\x00" * 10, 413, "too_large"),  # claims 34 GB decompressed
        (b"", 400, "bad_snappy"),
    ],
)
def test_undecodable_bodies(police: TenantPolice, body: bytes, status: int, reason: str) -> None:
    with pytest.raises(WriteRejected) as caught:
        police.police(body, NOW_MS)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_zip_bomb_within_declared_limit_is_refused() -> None:
    police = TenantPolice("t", Limits(max_decoded_bytes=1 << 20))
    bomb = snappy.compress(b"\x00" * (4 << 20))  # 4 MiB of zeros packs into ~200 kB
    assert len(bomb) < 250_000
    with pytest.raises(WriteRejected) as caught:
        police.police(bomb, NOW_MS)
    assert caught.value.status == 413


def test_exemplars_histograms_and_metadata_are_not_forwarded(police: TenantPolice) -> None:
    request = WriteRequest()
    ts = request.timeseries.add()
    for name, value in sorted(cost(tenant_id="tenant-a").items()):
        ts.labels.add(name=name, value=value)
    ts.samples.add(timestamp=NOW_MS, value=1)
    plain_series = ts.SerializeToString()
    # The same series with an exemplar (field 3) and a native histogram (field 4) appended.
    series = plain_series + b"\x1a\x02\x18\x05" + b"\x22\x02\x08\x01"
    metadata = request.metadata.add(metric_family_name="cloudtuner_kubecost_namespace_total_cost", help="h")
    body = field(1, series) + field(3, metadata.SerializeToString())
    assert WriteRequest.FromString(body).metadata  # the hand-made body is well formed

    forwarded = snappy.uncompress(police.police(snappy.compress(body), NOW_MS).body)
    assert forwarded == field(1, plain_series)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    length, size = bytearray(), len(payload)
    while size >= 0x80:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return bytes([number << 3 | 2]) + bytes(length) + payload


def test_honest_body_is_forwarded_as_it_came(police: TenantPolice) -> None:
    body = encode([(cost(tenant_id="tenant-a"), [(NOW_MS, 0.5)])])
    assert police.police(body, NOW_MS).body is body
    spoofed = encode([(cost(tenant_id="tenant-b"), [(NOW_MS, 0.5)])])
    assert police.police(spoofed, NOW_MS).body != spoofed
