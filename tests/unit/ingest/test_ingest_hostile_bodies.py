"""Bodies a fuzz run found mishandled: integers beyond 64 bits, gzip members after the first, NULs in
timestamps; and where a wrong Content-Type is sent instead."""

from __future__ import annotations

import gzip

import pytest

from services.ingest import metrics as m
from services.ingest.api import wrong_cloudevents_media_message, wrong_json_media_message
from services.ingest.app import _observe
from services.ingest.model import (
    Code,
    Limits,
    RequestContext,
    RequestError,
    normalise_batch,
    normalise_single,
)
from services.ingest.resources import gunzip
from services.kernel.http import RequestOutcome

NOW = 1_760_000_000_000


def ctx() -> RequestContext:
    return RequestContext(customer_id="acme", api_key_id="k1", request_id="r1", received_at_ms=NOW)


def batch_with(properties: bytes) -> bytes:
    return b'{"batch": [{"event_id": "e1", "name": "n", "timestamp": %d, "properties": %s}]}' % (
        NOW,
        properties,
    )


@pytest.mark.parametrize(
    "literal", [b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616", b"1" + b"0" * 100]
)
def test_an_integer_beyond_64_bits_is_rejected_naming_its_field_not_stored_as_a_double(
    literal: bytes,
) -> None:
    out = normalise_batch(batch_with(b'{"ok": 1.5, "big": %s}' % literal), ctx(), Limits())
    assert not out.records
    [rejection] = out.rejections
    assert rejection.code is Code.UNREPRESENTABLE_PROPERTY
    assert "properties.big" in rejection.message
    assert "64-bit" in rejection.message


def test_huge_float_literals_stay_doubles_and_in_range_integers_stay_integers() -> None:
    body = batch_with(b'{"f": 1e300, "g": -2.5e19, "i": 9223372036854775807, "j": 1.5}')
    out = normalise_batch(body, ctx(), Limits())
    [(_, record)] = out.records
    props = record["properties"]
    assert props == {"f": 1e300, "g": -2.5e19, "i": 2**63 - 1, "j": 1.5}
    assert all(type(props[k]) is float for k in "fgj")
    assert type(props["i"]) is int


@pytest.mark.parametrize(
    "timestamp",
    [
        "2025-10-09T08:00:00\x00Z",
        "2025-10-09\x0008:00:00Z",
        "2025-10-09T08:00:00Z\x00",
        "2025-10-09X08:00:00Z",
    ],
)
def test_a_timestamp_with_a_nul_or_a_foreign_separator_is_refused(timestamp: str) -> None:
    import orjson

    body = orjson.dumps({"event_id": "e1", "name": "n", "timestamp": timestamp})
    out = normalise_single(body, ctx(), Limits(), kind="track")
    assert [r.code for r in out.rejections] == [Code.INVALID_TIMESTAMP]


def test_every_gzip_member_is_read_and_trailing_bytes_are_refused() -> None:
    assert gunzip(gzip.compress(b"ab") + gzip.compress(b"cd"), 100, Code.BATCH_TOO_LARGE) == b"abcd"
    with pytest.raises(RequestError, match="follow the gzip data") as trailing:
        gunzip(gzip.compress(b"ab") + b"\n", 100, Code.BATCH_TOO_LARGE)
    assert trailing.value.status == 400
    with pytest.raises(RequestError) as too_big:  # the limit counts every member
        gunzip(gzip.compress(b"a" * 60) + gzip.compress(b"b" * 60), 100, Code.BATCH_TOO_LARGE)
    assert too_big.value.status == 413


def test_wrong_content_type_messages_name_the_endpoint_and_the_right_type() -> None:
    ce = wrong_json_media_message("/v1/track", "application/cloudevents+json")
    assert "POST /v1/events" in ce
    assert "POST /v1/track takes application/json" in ce
    assert "POST /v1/batch takes application/json" in wrong_json_media_message("/v1/batch", "text/plain")
    plain = wrong_cloudevents_media_message("/v1/events", "application/json")
    assert "application/cloudevents+json" in plain
    assert "/v1/batch" in plain


def test_a_500_counts_in_the_request_metrics_and_ops_endpoints_do_not() -> None:
    def count(endpoint: str, status: str) -> float:
        return m.REQUESTS.labels(endpoint, status)._value.get()  # type: ignore[attr-defined]

    before = count("track", "500"), count("unmatched", "404")
    _observe(RequestOutcome("POST", "/v1/track", "/v1/track", 500, 0.01))
    _observe(RequestOutcome("GET", "/nope", None, 404, 0.01))
    _observe(RequestOutcome("GET", "/metrics", None, 200, 0.01))
    assert (count("track", "500"), count("unmatched", "404")) == (before[0] + 1, before[1] + 1)
