"""Historical import (``POST /v1/import``, ``plg import FILE``): events with past timestamps, in plg's own
shape or as PostHog and Segment export them, checked like any event and written to
``usage-events-import`` — enriched and stored for analytics, never metered (the metering aggregator does
not read that topic).

Shapes, recognised per line:

* **plg**: the ``/v1/batch`` event (``event_id``, ``name``, ``timestamp``, ``user_id``, ...);
* **PostHog** (``posthog`` event export / batch export): ``uuid`` → event_id, ``event`` → name,
  ``distinct_id`` → user_id, ``timestamp``, ``properties`` (``$browser`` becomes ``posthog_browser``:
  plg reserves ``$``; ``$set``/``$set_once`` and other nested values dropped: plg properties are flat);
* **Segment** (a ``track``, ``page`` or ``screen`` call as its warehouse/S3 export writes it):
  ``messageId`` → event_id, ``event`` (or ``page_viewed`` / ``screen_viewed``) → name, ``userId`` /
  ``anonymousId``, ``timestamp``, ``properties``.

Idempotent by ``event_id``: the analytics store keeps one row per event id and customer, so importing a
file twice stores it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from services.ingest.model import (
    Code,
    Limits,
    Normalised,
    RequestContext,
    RequestError,
    check_body_size,
    normalise_events,
)

#: History reaches back this far (a PostHog or Segment export of a few years); the future limit stays.
IMPORT_MAX_AGE_MS = 10 * 366 * 86_400_000
NDJSON = "application/x-ndjson"
_SEGMENT_CALLS = {"track": None, "page": "page_viewed", "screen": "screen_viewed"}


def _flat(properties: Any) -> dict[str, Any]:
    """Scalar properties only (strings, numbers, booleans, null): what plg's events carry."""
    if not isinstance(properties, Mapping):
        return {}
    return {str(k): v for k, v in properties.items() if v is None or isinstance(v, str | int | float | bool)}


def _posthog_properties(properties: Any) -> dict[str, Any]:
    """PostHog's own properties start with ``$`` (``$browser``), which plg reserves for itself: they keep
    their value as ``posthog_<name>``; ``$set``/``$set_once`` (person updates, nested) are dropped."""
    return {
        (f"posthog_{k[1:]}" if k.startswith("$") else k): v
        for k, v in _flat(properties).items()
        if not k.startswith("$set")
    }


def to_plg_event(raw: Any) -> Any:
    """One export line as a plg event; anything unrecognised is passed on as is, to be refused with the
    precise reason the event checks give."""
    if not isinstance(raw, Mapping):
        return raw
    if "distinct_id" in raw and "event" in raw:  # PostHog
        return {
            "event_id": raw.get("uuid"),
            "name": raw.get("event"),
            "timestamp": raw.get("timestamp"),
            "user_id": raw.get("distinct_id"),
            "properties": _posthog_properties(raw.get("properties")),
        }
    if "messageId" in raw and "type" in raw:  # Segment
        call = raw.get("type")
        if call not in _SEGMENT_CALLS:
            return {"event_id": raw.get("messageId"), "type": f"segment {call}"}  # refused: not an event
        name = raw.get("event") if call == "track" else _SEGMENT_CALLS[call]
        return {
            "event_id": raw.get("messageId"),
            "name": name,
            "timestamp": raw.get("timestamp") or raw.get("originalTimestamp"),
            "user_id": raw.get("userId"),
            "anonymous_id": raw.get("anonymousId"),
            "properties": _flat(raw.get("properties")),
        }
    return raw


def parse_body(body: bytes, content_type: str) -> list[Any]:
    """JSON lines (``application/x-ndjson``), or JSON: an array or ``{"batch": [...]}``."""
    if content_type == NDJSON:
        events = []
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise RequestError(400, Code.INVALID_JSON, f"line {number} is not JSON: {exc}") from None
        return events
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, Code.INVALID_JSON, f"the body is not JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("batch"), list):
        doc = doc["batch"]
    if not isinstance(doc, list):
        raise RequestError(
            400, Code.INVALID_BODY, 'an import is JSON lines, a JSON array, or {"batch": [...]}'
        )
    return doc


def import_limits(limits: Limits) -> Limits:
    return replace(limits, max_age_ms=IMPORT_MAX_AGE_MS)


def normalise_import(body: bytes, content_type: str, ctx: RequestContext, limits: Limits) -> Normalised:
    """The request's events, mapped from their export shape and checked as plg events (old timestamps
    allowed); ``identify`` is not imported (identity links are live state, not history)."""
    check_body_size(len(body), limits, single_event=False)
    events = [to_plg_event(raw) for raw in parse_body(body, content_type)]
    for event in events:
        if isinstance(event, dict) and event.get("type") == "identify":
            event["type"] = "identify (not imported: link ids with POST /v1/identify)"
    return normalise_events(events, len(body), ctx, import_limits(limits))
