"""What a client sees when ingest checks its events: accepted records, per-event codes, request errors."""

from __future__ import annotations

import copy
import io
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import orjson
import pytest

from services.ingest.model import (
    Code,
    Limits,
    RequestContext,
    RequestError,
    identity_link_key,
    normalise_batch,
    normalise_cloudevents,
    normalise_single,
)
from tests.cost_support import cpu_costs

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
NOW = 1_760_000_000_000
LIMITS = Limits()


def ctx(customer: str = "acme") -> RequestContext:
    return RequestContext(
        customer_id=customer,
        api_key_id="k1",
        request_id="r1",
        received_at_ms=NOW,
        library="plg-sdk-python/0.1.0",
    )


def event(**over: object) -> dict[str, object]:
    e: dict[str, object] = {
        "event_id": "e-1",
        "name": "api_call",
        "timestamp": NOW - 1000,
        "properties": {"tokens": 12, "model": "large", "ok": True, "cost": 0.5, "x": None},
    }
    e.update(over)
    return {k: v for k, v in e.items() if v is not ...}


def batch(*events: object, **top: object) -> bytes:
    return orjson.dumps({"batch": list(events), **top})


def codes(n):  # type: ignore[no-untyped-def]
    return [r.get("code", r["status"]) for r in n.results()]


def test_valid_event_becomes_a_record_of_the_key_tenant_that_the_avro_schema_accepts() -> None:
    n = normalise_batch(batch(event(user_id="u1", session_id="s1")), ctx(), LIMITS)
    assert codes(n) == ["accepted"]
    [(index, record)] = n.records
    assert index == 0
    assert record["customer_id"] == "acme"
    assert record["timestamp"] == NOW - 1000
    assert record["ingest"]["api_key_id"] == "k1"
    assert record["ingest"]["received_at"] == NOW
    schema = fastavro.parse_schema(orjson.loads((SCHEMAS / "usage_event.avsc").read_bytes()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, schema, schema)
    assert back["properties"] == {"tokens": 12, "model": "large", "ok": True, "cost": 0.5, "x": None}
    assert back["user_id"] == "u1"


def test_iso_timestamps_with_offset_are_converted_to_epoch_millis() -> None:
    iso = datetime.fromtimestamp((NOW - 60_000) / 1000, UTC).isoformat().replace("+00:00", "Z")
    n = normalise_batch(batch(event(timestamp=iso)), ctx(), LIMITS)
    assert n.records[0][1]["timestamp"] == NOW - 60_000
    n = normalise_batch(batch(event(timestamp="2025-10-09T09:53:20.123+02:00")), ctx(), LIMITS)
    assert n.records[0][1]["timestamp"] == NOW - 3600 * 1000 + 123


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"timestamp": NOW + 5 * 60_000 + 1}, Code.TIMESTAMP_IN_FUTURE),
        ({"timestamp": NOW + 5 * 60_000}, Code.ACCEPTED),
        ({"timestamp": NOW - 35 * 86_400_000 - 1}, Code.TIMESTAMP_TOO_OLD),
        ({"timestamp": NOW // 1000}, Code.TIMESTAMP_TOO_OLD),  # epoch seconds by mistake
        ({"timestamp": "2025-10-09T09:53:20"}, Code.INVALID_TIMESTAMP),  # no offset: ambiguous
        ({"timestamp": "yesterday"}, Code.INVALID_TIMESTAMP),
        ({"timestamp": 1.7e12}, Code.INVALID_TIMESTAMP),
        ({"timestamp": ...}, Code.MISSING_FIELD),
        ({"event_id": ...}, Code.MISSING_FIELD),
        ({"event_id": "has space"}, Code.INVALID_EVENT_ID),
        ({"event_id": 42}, Code.INVALID_EVENT_ID),
        ({"event_id": "x" * 129}, Code.INVALID_EVENT_ID),
        ({"name": ""}, Code.INVALID_NAME),
        ({"name": " padded"}, Code.INVALID_NAME),
        ({"name": "bad\nname"}, Code.INVALID_NAME),
        ({"name": "$identify"}, Code.RESERVED_NAME),
        ({"name": "Order Completed"}, Code.ACCEPTED),
        ({"name": ["api_call"]}, Code.INVALID_NAME),
        ({"name": {"a": 1}}, Code.INVALID_NAME),
        ({"properties": {"nested": {"a": 1}}}, Code.UNREPRESENTABLE_PROPERTY),
        ({"properties": {"list": [1, 2]}}, Code.UNREPRESENTABLE_PROPERTY),
        ({"properties": {"big": 2**63}}, Code.UNREPRESENTABLE_PROPERTY),
        ({"properties": {"big": 2**63 - 1}}, Code.ACCEPTED),
        ({"properties": {"": 1}}, Code.INVALID_PROPERTY_KEY),
        ({"properties": {"a\tb": 1}}, Code.INVALID_PROPERTY_KEY),
        ({"properties": {"$plan": 1}}, Code.RESERVED_PROPERTY_KEY),
        ({"properties": [1]}, Code.INVALID_PROPERTIES),
        ({"properties": None}, Code.ACCEPTED),
        ({"user_id": 42}, Code.INVALID_FIELD),
        ({"session_id": ""}, Code.INVALID_FIELD),
        ({"propreties": {}}, Code.UNKNOWN_FIELD),
        ({"type": "page"}, Code.INVALID_FIELD),
        ({"type": "identify", "name": ...}, Code.MISSING_FIELD),
    ],
)
def test_each_bad_event_is_rejected_with_a_precise_code(over: dict[str, object], code: Code) -> None:
    n = normalise_batch(batch(event(**over)), ctx(), LIMITS)
    assert codes(n) == [code.value]
    if code is not Code.ACCEPTED:
        [result] = n.results()
        assert result["index"] == 0
        assert result["message"]


def test_a_mixed_batch_accepts_exactly_the_good_events_and_reports_bad_ones_by_index() -> None:
    good1, bad, good2 = event(event_id="a"), event(event_id="b", timestamp="nope"), event(event_id="c")
    n = normalise_batch(batch(good1, bad, "not an object", good2), ctx(), LIMITS)
    assert [i for i, _ in n.records] == [0, 3]
    results = n.results()
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "accepted"]
    assert results[1] == {
        "index": 1,
        "event_id": "b",
        "status": "rejected",
        "code": "invalid_timestamp",
        "message": results[1]["message"],
    }
    assert results[2]["code"] == "invalid_event"
    assert results[2]["event_id"] is None


def test_a_repeated_event_id_within_one_batch_is_rejected_the_second_time() -> None:
    n = normalise_batch(batch(event(), event()), ctx(), LIMITS)
    assert codes(n) == ["accepted", "duplicate_event_id"]


def test_another_tenants_customer_id_refuses_the_whole_request_with_403() -> None:
    for body in (batch(event(customer_id="globex")), batch(event(), customer_id="globex")):
        with pytest.raises(RequestError) as err:
            normalise_batch(body, ctx(), LIMITS)
        assert err.value.status == 403
        assert err.value.code is Code.FORBIDDEN_CUSTOMER
    # naming one's own customer is fine
    assert codes(normalise_batch(batch(event(customer_id="acme")), ctx(), LIMITS)) == ["accepted"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, Code.INVALID_JSON),
        (b"[]", 400, Code.INVALID_BODY),
        (b'{"events": []}', 400, Code.INVALID_BODY),
        (b'{"batch": {}}', 400, Code.INVALID_BODY),
        (b'{"batch": [], "extra": 1}', 400, Code.INVALID_BODY),
    ],
)
def test_malformed_bodies_are_refused_with_400(body: bytes, status: int, code: Code) -> None:
    with pytest.raises(RequestError) as err:
        normalise_batch(body, ctx(), LIMITS)
    assert (err.value.status, err.value.code) == (status, code)


def test_size_limits_answer_413_for_the_request_and_a_code_for_one_oversized_event() -> None:
    limits = Limits(max_event_bytes=1000, max_batch_bytes=5000, max_batch_events=3)
    with pytest.raises(RequestError) as err:
        normalise_batch(batch(*[event(event_id=str(i)) for i in range(4)]), ctx(), limits)
    assert (err.value.status, err.value.code) == (413, Code.TOO_MANY_EVENTS)
    with pytest.raises(RequestError) as err:
        normalise_batch(batch(event(properties={"s": "x" * 6000})), ctx(), limits)
    assert (err.value.status, err.value.code) == (413, Code.BATCH_TOO_LARGE)
    n = normalise_batch(
        batch(event(event_id="big", properties={"s": "x" * 1500}), event(event_id="ok")), ctx(), limits
    )
    assert codes(n) == ["event_too_large", "accepted"]
    with pytest.raises(RequestError) as err:
        normalise_single(orjson.dumps(event(properties={"s": "x" * 1500})), ctx(), limits, kind="track")
    assert (err.value.status, err.value.code) == (413, Code.EVENT_TOO_LARGE)


def test_identify_makes_an_identify_event_and_an_identity_link() -> None:
    body = orjson.dumps(
        {
            "event_id": "i1",
            "timestamp": NOW,
            "anonymous_id": "anon-9",
            "user_id": "u-1",
            "properties": {"email_domain": "acme.io"},
        }
    )
    n = normalise_single(body, ctx(), LIMITS, kind="identify")
    [(_, record)] = n.records
    assert record["name"] == "$identify"
    assert record["user_id"] == "u-1"
    [link] = n.identity_links
    assert link == {
        "customer_id": "acme",
        "anonymous_id": "anon-9",
        "user_id": "u-1",
        "event_id": "i1",
        "linked_at": NOW,
    }
    assert identity_link_key(link) == "acme|anon-9"
    # a track body on the identify endpoint is refused
    with pytest.raises(RequestError):
        normalise_single(orjson.dumps(event(type="track")), ctx(), LIMITS, kind="identify")


def ce(**over: object) -> dict[str, object]:
    e: dict[str, object] = {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "//billing/api",
        "type": "api_call",
        "time": "2025-10-09T08:53:00Z",
        "subject": "acme",
        "data": {"tokens": 5},
        "userid": "u-7",
        "traceparent": "00-abc",
    }
    e.update(over)
    return {k: v for k, v in e.items() if v is not ...}


def test_cloudevents_map_onto_usage_events() -> None:
    n = normalise_cloudevents(orjson.dumps(ce()), ctx(), LIMITS, batch=False)
    [(_, record)] = n.records
    assert record["event_id"] == "ce-1"
    assert record["name"] == "api_call"
    assert record["user_id"] == "u-7"
    assert record["properties"] == {"tokens": 5, "$ce_source": "//billing/api"}
    assert record["timestamp"] == int(datetime(2025, 10, 9, 8, 53, tzinfo=UTC).timestamp() * 1000)


def test_cloudevents_batch_rejects_bad_events_individually() -> None:
    body = orjson.dumps(
        [
            ce(id="a"),
            ce(id="b", specversion="0.3"),
            ce(id="c", data_base64="AAA"),
            ce(id="d", time=...),
            ce(id="e", source=...),
        ]
    )
    n = normalise_cloudevents(body, ctx(), LIMITS, batch=True)
    assert codes(n) == [
        "accepted",
        "unsupported_specversion",
        "unsupported_data",
        "accepted",
        "missing_field",
    ]
    assert n.records[1][1]["timestamp"] == NOW  # no time: received time


def test_a_cloudevent_for_another_subject_is_forbidden() -> None:
    for bad in (ce(subject="globex"), ce(subject=..., customerid="globex")):
        with pytest.raises(RequestError) as err:
            normalise_cloudevents(orjson.dumps([ce(), bad]), ctx(), LIMITS, batch=True)
        assert err.value.status == 403


def test_checking_a_batch_costs_about_as_much_as_deep_copying_its_parsed_events() -> None:
    body = batch(*[event(event_id=f"e{i}") for i in range(100)])

    def check() -> None:
        for _ in range(20):
            normalise_batch(body, ctx(), LIMITS)

    def baseline() -> None:  # the least any check walking every event and value could do
        for _ in range(20):
            copy.deepcopy(orjson.loads(body))

    checking, copying = cpu_costs(check, baseline)
    # About half a deep copy on a quiet core (2.5 against 4.5 µs per event); 5 times one means a check
    # that is no longer a few µs per event. The figure itself: `make bench-ingest`.
    assert checking < 5 * copying, (checking, copying)
