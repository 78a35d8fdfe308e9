"""Historical import: export shapes mapped to plg events, bodies parsed, old timestamps allowed, identify
and non-event calls refused with a reason, the usual event checks applied."""

from __future__ import annotations

import orjson
import pytest

from services.ingest.importing import normalise_import, parse_body, to_plg_event
from services.ingest.model import Limits, RequestContext, RequestError

NOW = 1_800_000_000_000
YEAR = 366 * 86_400_000
CTX = RequestContext("acme", "key1", "req1", NOW, source="import")


def test_posthog_segment_and_plg_shapes_map_to_plg_events() -> None:
    posthog = to_plg_event(
        {
            "uuid": "u1",
            "event": "signed_up",
            "distinct_id": "p1",
            "timestamp": "2025-01-01T00:00:00Z",
            "properties": {"$browser": "Firefox", "plan": "free", "$set": {"email": "x"}, "nested": {"a": 1}},
        }
    )
    assert posthog == {
        "event_id": "u1",
        "name": "signed_up",
        "timestamp": "2025-01-01T00:00:00Z",
        "user_id": "p1",
        "properties": {"posthog_browser": "Firefox", "plan": "free"},
    }
    segment = to_plg_event(
        {"messageId": "m1", "type": "page", "anonymousId": "a1", "originalTimestamp": "2025-01-01T00:00:00Z"}
    )
    assert segment["name"] == "page_viewed"
    assert segment["anonymous_id"] == "a1"
    assert segment["timestamp"] == "2025-01-01T00:00:00Z"
    plg = {"event_id": "e1", "name": "x", "timestamp": 1}
    assert to_plg_event(plg) is plg


def test_bodies_are_json_lines_or_arrays() -> None:
    lines = b'{"event_id": "a"}\n\n{"event_id": "b"}\n'
    assert [e["event_id"] for e in parse_body(lines, "application/x-ndjson")] == ["a", "b"]
    assert len(parse_body(b'{"batch": [{}, {}]}', "application/json")) == 2
    with pytest.raises(RequestError, match="line 2"):
        parse_body(b"{}\n{nope", "application/x-ndjson")
    with pytest.raises(RequestError):
        parse_body(b'{"x": 1}', "application/json")


def test_history_a_year_old_is_accepted_and_identify_is_refused() -> None:
    events = [
        {"event_id": "old", "name": "signed_up", "timestamp": NOW - YEAR, "user_id": "p1"},
        {"messageId": "m2", "type": "identify", "userId": "p1", "timestamp": NOW - YEAR},
        {"event_id": "i", "type": "identify", "user_id": "p1", "anonymous_id": "a", "timestamp": NOW},
        {"event_id": "future", "name": "x", "timestamp": NOW + 3_600_000},
    ]
    body = b"\n".join(orjson.dumps(e) for e in events)
    outcome = normalise_import(body, "application/x-ndjson", CTX, Limits())
    assert [r["event_id"] for _, r in outcome.records] == ["old"]
    reasons = {r.event_id: r.code.value for r in outcome.rejections}
    assert set(reasons) == {"m2", "i", "future"}
    assert reasons["future"] == "timestamp_in_future"
