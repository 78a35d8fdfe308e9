"""Validation and normalisation of incoming events into ``usage-events`` records: pure, no I/O.

Two input formats end up as the same Avro record (``schemas/usage_event.avsc``):

* plg's JSON API (``/v1/batch``, ``/v1/track``, ``/v1/identify``): ``{"batch": [event, ...]}`` where an event
  is ``{"event_id", "name", "timestamp", "properties", "user_id", "anonymous_id", "session_id", "type",
  "consent"}``;
* CloudEvents 1.0 in structured JSON mode (one event, or a JSON array for the batch content type).

This is the hot path (tens of thousands of events per second on two cores), so events are checked with
hand-written type tests on the dicts orjson returns rather than with a pydantic model per event: a
pydantic model costs several times more per event and its error messages name pydantic internals.

A request-level problem (not JSON, wrong shape, too big, another tenant's customer id) raises
:class:`RequestError`; a problem with one event rejects that event only, with its index, a machine-readable
code and a message, and the other events of the batch go on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

# Avro ``long`` is a signed 64-bit integer.
_LONG_MIN = -(2**63)
_LONG_MAX = 2**63 - 1
# orjson parses an integer literal beyond the 64-bit range as a float; a float this large may be one, so
# such a body is parsed again exactly (see :func:`parse_json_exact`).
_INEXACT_FLOAT = 2.0**63

MAX_ID_CHARS = 255
MAX_EVENT_ID_CHARS = 128
MAX_NAME_CHARS = 200
MAX_PROPERTY_KEY_CHARS = 255

IDENTIFY_EVENT_NAME = "$identify"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# The fields a plg JSON event may carry; anything else is refused rather than silently dropped, so a client
# that misspells ``propreties`` finds out on the first request.
_EVENT_FIELDS = frozenset(
    {
        "event_id",
        "name",
        "timestamp",
        "properties",
        "user_id",
        "anonymous_id",
        "session_id",
        "type",
        "customer_id",
        "consent",
    }
)
_BATCH_FIELDS = frozenset({"batch", "customer_id"})

# CloudEvents 1.0 context attributes we understand. Other extension attributes (traceparent, ...) are
# accepted and not stored: the usage-events record has no place for them.
_CE_USER_ID = "userid"
_CE_ANONYMOUS_ID = "anonymousid"
_CE_SESSION_ID = "sessionid"
_CE_CUSTOMER_ID = "customerid"
CE_SOURCE_PROPERTY = "$ce_source"


class Code(StrEnum):
    """Machine-readable outcomes, per event or per request. Clients switch on these; never rename one."""

    ACCEPTED = "accepted"
    # per event
    INVALID_EVENT = "invalid_event"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    INVALID_EVENT_ID = "invalid_event_id"
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    INVALID_NAME = "invalid_name"
    RESERVED_NAME = "reserved_name"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    INVALID_PROPERTIES = "invalid_properties"
    INVALID_PROPERTY_KEY = "invalid_property_key"
    RESERVED_PROPERTY_KEY = "reserved_property_key"
    UNREPRESENTABLE_PROPERTY = "unrepresentable_property"
    EVENT_TOO_LARGE = "event_too_large"
    UNSUPPORTED_SPECVERSION = "unsupported_specversion"
    UNSUPPORTED_DATA = "unsupported_data"
    # per request
    INVALID_JSON = "invalid_json"
    INVALID_BODY = "invalid_body"
    BATCH_TOO_LARGE = "batch_too_large"
    TOO_MANY_EVENTS = "too_many_events"
    FORBIDDEN_CUSTOMER = "forbidden_customer"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    KAFKA_UNAVAILABLE = "kafka_unavailable"
    SERVICE_UNAVAILABLE = "service_unavailable"


class RequestError(Exception):
    """The request as a whole is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: Code, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits; defaults follow Segment's (32 KB per event, 500 KB and 500 events per batch) and
    Stripe's accepted event-time window (5 minutes ahead, 35 days back)."""

    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    max_batch_events: int = 500
    max_future_ms: int = 5 * 60 * 1000
    max_age_ms: int = 35 * 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who sent the request and when; the tenant comes from the API key, never from the body."""

    customer_id: str
    api_key_id: str | None
    request_id: str
    received_at_ms: int
    source: str = "http"
    library: str | None = None
    #: The registry's version of usage-events-value whose schema the records are encoded (so validated)
    #: with: stamped on each record, so a consumer knows the contract an event was accepted under.
    registry_version: int | None = None

    def ingest_metadata(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at_ms,
            "source": self.source,
            "api_key_id": self.api_key_id,
            "request_id": self.request_id,
            "library": self.library,
            "registry_version": self.registry_version,
        }


@dataclass(slots=True)
class Rejection:
    index: int
    event_id: str | None
    code: Code
    message: str


@dataclass(slots=True)
class Normalised:
    """The outcome of checking a request: records ready to encode, and one result per input event."""

    # (index, usage-events record) for every valid event, in input order.
    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # identity-links records for the identify events among ``records``.
    identity_links: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    total: int = 0

    def results(self) -> list[dict[str, Any]]:
        """Per-event results in input order, as the HTTP answer lists them."""
        out: list[dict[str, Any]] = [{}] * self.total
        for index, record in self.records:
            out[index] = {"index": index, "event_id": record["event_id"], "status": Code.ACCEPTED.value}
        for r in self.rejections:
            out[r.index] = {
                "index": r.index,
                "event_id": r.event_id,
                "status": "rejected",
                "code": r.code.value,
                "message": r.message,
            }
        return out


class _Reject(Exception):
    """Internal: one event is refused. Raised deep in the checks, caught per event."""

    def __init__(self, code: Code, message: str) -> None:
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------------------
# body-level parsing


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, Code.INVALID_JSON, f"the body is not valid JSON: {exc}") from None


class _ExactFloat(float):
    """A float written as a float literal (from :func:`parse_json_exact`), as opposed to an integer literal
    too big for 64 bits that orjson turned into a float."""

    __slots__ = ()


class _InexactNumbers(Exception):
    """Internal: a property holds a float of 2^63 or more, which may be an out-of-range integer literal
    that orjson silently made a float; the request is checked again from :func:`parse_json_exact`."""


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse_json_exact(body: bytes) -> Any:
    """The slow, exact parse, only for bodies :func:`parse_json` already accepted that hold huge numbers:
    integers stay Python ints of any size (so an out-of-range one is refused naming its field, not stored
    as a double), float literals become :class:`_ExactFloat`."""
    try:
        return json.loads(body, parse_float=_ExactFloat, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, Code.INVALID_JSON, f"the body is not valid JSON: {exc}"[:300]) from None


def _checked_exactly(check: Callable[[Any], Normalised], body: bytes) -> Normalised:
    try:
        return check(parse_json(body))
    except _InexactNumbers:
        return check(parse_json_exact(body))


def check_body_size(length: int, limits: Limits, *, single_event: bool) -> None:
    limit = limits.max_event_bytes if single_event else limits.max_batch_bytes
    if length > limit:
        what = "an event" if single_event else "a batch"
        raise RequestError(
            413,
            Code.BATCH_TOO_LARGE if not single_event else Code.EVENT_TOO_LARGE,
            f"the body is {length} bytes; {what} may be at most {limit} bytes",
        )


def _check_count(n: int, limits: Limits) -> None:
    if n > limits.max_batch_events:
        raise RequestError(
            413,
            Code.TOO_MANY_EVENTS,
            f"the batch has {n} events; at most {limits.max_batch_events} are allowed per request",
        )


def _check_customer(named: Any, ctx: RequestContext, where: str) -> None:
    if named is not None and named != ctx.customer_id:
        raise RequestError(
            403,
            Code.FORBIDDEN_CUSTOMER,
            f"{where} names customer {str(named)[:130]!r}, but this API key belongs to another "
            "customer; a key can only write its own customer's events",
        )


# ---------------------------------------------------------------------------------------------------------
# field checks shared by both formats

# Event names and property keys that passed their checks (not reserved). They repeat from event to event,
# so most events skip the checks; bounded so hostile clients cannot grow them without limit.
_VALID_NAMES: set[str] = set()
_VALID_KEYS: set[str] = set()
_MAX_REMEMBERED = 50_000


def _remember(cache: set[str], value: str) -> None:
    if len(cache) >= _MAX_REMEMBERED:
        cache.clear()
    cache.add(value)


def _string_id(value: Any, label: str, *, max_chars: int = MAX_ID_CHARS) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise _Reject(Code.INVALID_FIELD, f"{label} must be a string or null, got {_json_type(value)}")
    if not value or len(value) > max_chars or not value.isprintable():
        raise _Reject(Code.INVALID_FIELD, f"{label} must be 1 to {max_chars} printable characters")
    return value


MAX_CONSENT_PURPOSES = 16
_PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,39}")


def check_consent(value: Any, label: str = "consent") -> dict[str, bool] | None:
    """``{"analytics": false, ...}``: purpose → granted (docs/ingest.md); None when not stated."""
    if value is None:
        return None
    if type(value) is not dict:
        raise _Reject(
            Code.INVALID_FIELD,
            f'{label} must be an object of purpose → boolean, e.g. {{"analytics": false}}, '
            f"got {_json_type(value)}",
        )
    if len(value) > MAX_CONSENT_PURPOSES:
        raise _Reject(Code.INVALID_FIELD, f"{label} names at most {MAX_CONSENT_PURPOSES} purposes")
    for purpose, granted in value.items():
        if _PURPOSE.fullmatch(purpose) is None:
            raise _Reject(
                Code.INVALID_FIELD,
                f"{label}: purpose {purpose[:64]!r} must be a lower-case name (a-z, 0-9, _; up to 40)",
            )
        if type(granted) is not bool:
            raise _Reject(
                Code.INVALID_FIELD, f"{label}.{purpose} must be true or false, got {_json_type(granted)}"
            )
    return value


def _event_id(value: Any, label: str) -> str:
    if value is None:
        raise _Reject(
            Code.MISSING_FIELD, f"{label} is required (a client-generated unique id, e.g. a UUIDv7)"
        )
    # ASCII printable without spaces: ids travel in logs, URLs and Stripe identifiers unchanged.
    if (
        type(value) is not str
        or not 0 < len(value) <= MAX_EVENT_ID_CHARS
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        raise _Reject(
            Code.INVALID_EVENT_ID,
            f"{label} must be a string of 1 to {MAX_EVENT_ID_CHARS} printable ASCII characters "
            "without spaces",
        )
    return value


def _event_name(value: Any, label: str, *, allow_reserved: bool = False) -> str:
    # The common case: names repeat, checking them again is wasted work.
    if type(value) is str and value in _VALID_NAMES:
        return value
    if value is None:
        raise _Reject(Code.MISSING_FIELD, f"{label} is required")
    if (
        type(value) is not str
        or not 0 < len(value) <= MAX_NAME_CHARS
        or not value.isprintable()
        or value != value.strip()
    ):
        raise _Reject(
            Code.INVALID_NAME,
            f"{label} must be a string of 1 to {MAX_NAME_CHARS} printable characters "
            "without leading or trailing spaces",
        )
    if value[0] == "$" and not allow_reserved:
        raise _Reject(Code.RESERVED_NAME, f"{label} {value!r}: names starting with '$' are reserved for plg")
    _remember(_VALID_NAMES, value)
    return value


def parse_timestamp(value: Any, label: str = "timestamp") -> int:
    """Epoch milliseconds from an integer or an ISO-8601 / RFC 3339 string with a UTC offset."""
    if type(value) is int:
        return value
    if type(value) is str:
        # fromisoformat takes any character between date and time, NUL included, and ignores some
        # trailing ones: only printable ASCII with RFC 3339's separators is a timestamp.
        if not (value.isascii() and value.isprintable()) or (len(value) > 10 and value[10] not in "Tt "):
            raise _Reject(Code.INVALID_TIMESTAMP, f"{label} {value[:64]!r} is not an ISO-8601 date-time")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Reject(
                Code.INVALID_TIMESTAMP, f"{label} {value[:64]!r} is not an ISO-8601 date-time"
            ) from None
        if parsed.tzinfo is None:
            raise _Reject(
                Code.INVALID_TIMESTAMP, f"{label} {value[:64]!r} has no UTC offset; add 'Z' or '+hh:mm'"
            )
        # Integer arithmetic: float seconds * 1000 can land one millisecond short.
        return (parsed - _EPOCH) // _ONE_MS
    if value is None:
        raise _Reject(Code.MISSING_FIELD, f"{label} is required (ISO-8601 string or epoch milliseconds)")
    if type(value) is float and not -_INEXACT_FLOAT < value < _INEXACT_FLOAT:
        raise _InexactNumbers  # maybe an integer beyond 64 bits: say what is wrong with it exactly
    raise _Reject(
        Code.INVALID_TIMESTAMP,
        f"{label} must be an ISO-8601 string or an integer of epoch milliseconds, got {_json_type(value)}",
    )


def _check_window(ts: int, label: str, ctx: RequestContext, limits: Limits) -> None:
    if ts > ctx.received_at_ms + limits.max_future_ms:
        raise _Reject(
            Code.TIMESTAMP_IN_FUTURE,
            f"{label} is {(ts - ctx.received_at_ms) // 1000} s in the future; at most "
            f"{limits.max_future_ms // 1000} s ahead of the server clock is accepted",
        )
    if ts < ctx.received_at_ms - limits.max_age_ms:
        raise _Reject(
            Code.TIMESTAMP_TOO_OLD,
            f"{label} is older than {limits.max_age_ms // 86_400_000} days; such events can no "
            "longer be billed (if you sent epoch seconds, send milliseconds)",
        )


def check_properties(value: Any, label: str = "properties") -> dict[str, Any]:
    """A flat map whose values Avro's ``map<null|boolean|long|double|string>`` holds exactly."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise _Reject(Code.INVALID_PROPERTIES, f"{label} must be a JSON object, got {_json_type(value)}")
    valid_keys = _VALID_KEYS
    for key, v in value.items():
        if key in valid_keys:
            pass
        elif not 0 < len(key) <= MAX_PROPERTY_KEY_CHARS or not key.isprintable():
            raise _Reject(
                Code.INVALID_PROPERTY_KEY,
                f"{label} key {key[:64]!r} must be 1 to {MAX_PROPERTY_KEY_CHARS} printable characters",
            )
        elif key[0] == "$":
            raise _Reject(
                Code.RESERVED_PROPERTY_KEY,
                f"{label} key {key[:64]!r}: keys starting with '$' are reserved for plg",
            )
        else:
            _remember(valid_keys, key)
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is float:
            if -_INEXACT_FLOAT < v < _INEXACT_FLOAT:
                continue
            raise _InexactNumbers
        if t is int:
            if _LONG_MIN <= v <= _LONG_MAX:
                continue
            digits = str(v)
            shown = digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
            raise _Reject(
                Code.UNREPRESENTABLE_PROPERTY,
                f"{label}.{key[:64]} = {shown} does not fit a signed 64-bit integer; send it as a string",
            )
        if t is _ExactFloat:
            value[key] = float(v)
            continue
        raise _Reject(
            Code.UNREPRESENTABLE_PROPERTY,
            f"{label}.{key[:64]} is {_json_type(v)}; properties are flat: values must be null, "
            "boolean, number or string (send nested data as a JSON string)",
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------------------
# plg JSON events


def _normalise_plg_event(
    raw: Any, ctx: RequestContext, limits: Limits, meta: dict[str, Any], *, default_type: str = "track"
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One JSON event → (usage-events record, identity-links record or None)."""
    if type(raw) is not dict:
        raise _Reject(Code.INVALID_EVENT, f"an event must be a JSON object, got {_json_type(raw)}")
    if not raw.keys() <= _EVENT_FIELDS:
        unknown = sorted(k for k in raw if k not in _EVENT_FIELDS)
        raise _Reject(
            Code.UNKNOWN_FIELD,
            f"unknown field(s) {', '.join(repr(k[:64]) for k in unknown[:5])}; an event has "
            f"{', '.join(sorted(_EVENT_FIELDS))}",
        )
    event_id = _event_id(raw.get("event_id"), "event_id")
    kind = raw.get("type", default_type)
    user_id = _string_id(raw.get("user_id"), "user_id")
    anonymous_id = _string_id(raw.get("anonymous_id"), "anonymous_id")
    if kind == "track":
        name = _event_name(raw.get("name"), "name")
    elif kind == "identify":
        if raw.get("name", IDENTIFY_EVENT_NAME) != IDENTIFY_EVENT_NAME:
            raise _Reject(
                Code.INVALID_NAME, f"an identify event is named {IDENTIFY_EVENT_NAME!r}; omit 'name'"
            )
        name = IDENTIFY_EVENT_NAME
        if user_id is None or anonymous_id is None:
            raise _Reject(
                Code.MISSING_FIELD, "identify links an anonymous_id to a user_id: both are required"
            )
    else:
        raise _Reject(Code.INVALID_FIELD, f"type must be 'track' or 'identify', got {str(kind)[:32]!r}")
    ts = parse_timestamp(raw.get("timestamp"), "timestamp")
    _check_window(ts, "timestamp", ctx, limits)
    consent = check_consent(raw.get("consent"))
    record = {
        "event_id": event_id,
        "customer_id": ctx.customer_id,
        "name": name,
        "timestamp": ts,
        "properties": check_properties(raw.get("properties"), "properties"),
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "session_id": _string_id(raw.get("session_id"), "session_id"),
        "ingest": meta,
        "consent": consent,
    }
    # An identify whose person refused analytics links nothing: the identity graph serves analytics only.
    refused = consent is not None and consent.get("analytics") is False
    link = identity_link(record, ctx) if kind == "identify" and not refused else None
    return record, link


def identity_link(record: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
    return {
        "customer_id": ctx.customer_id,
        "anonymous_id": record["anonymous_id"],
        "user_id": record["user_id"],
        "event_id": record["event_id"],
        "linked_at": record["timestamp"],
    }


def identity_link_key(link: Mapping[str, Any]) -> str:
    """``customer_id|anonymous_id``: compaction keeps the latest user for each anonymous id of a tenant."""
    return f"{link['customer_id']}|{link['anonymous_id']}"


def _event_too_large(raw: Any, limits: Limits) -> int | None:
    try:
        size = len(orjson.dumps(raw))
    except TypeError:  # from parse_json_exact: an int beyond 64 bits, an _ExactFloat
        size = len(json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode())
    return size if size > limits.max_event_bytes else None


def _normalise_many(
    events: list[Any], body_len: int, ctx: RequestContext, limits: Limits, one: Any
) -> Normalised:
    _check_count(len(events), limits)
    out = Normalised(total=len(events))
    meta = ctx.ingest_metadata()  # shared by every record of the request
    seen: set[str] = set()
    # Measuring each event costs a re-serialisation; a body no larger than the per-event limit cannot hold
    # an oversized event, which is the common case for batches of small events.
    measure = body_len > limits.max_event_bytes
    for index, raw in enumerate(events):
        try:
            if measure and (size := _event_too_large(raw, limits)) is not None:
                raise _Reject(
                    Code.EVENT_TOO_LARGE,
                    f"the event is {size} bytes; at most {limits.max_event_bytes} bytes are allowed",
                )
            record, link = one(raw, ctx, limits, meta)
            event_id = record["event_id"]
            if event_id in seen:
                raise _Reject(
                    Code.DUPLICATE_EVENT_ID,
                    f"event_id {event_id!r} appears earlier in this batch; each event needs its own id",
                )
            seen.add(event_id)
        except _Reject as r:
            out.rejections.append(Rejection(index, _event_id_of(raw), r.code, r.message))
            continue
        out.records.append((index, record))
        if link is not None:
            out.identity_links.append(link)
    return out


def _event_id_of(raw: Any) -> str | None:
    if type(raw) is dict:
        value = raw.get("event_id", raw.get("id"))
        if type(value) is str:
            return value[:MAX_EVENT_ID_CHARS]
    return None


def normalise_batch(body: bytes, ctx: RequestContext, limits: Limits) -> Normalised:
    """``POST /v1/batch``: ``{"batch": [event, ...]}``."""
    check_body_size(len(body), limits, single_event=False)
    return _checked_exactly(lambda doc: _normalise_batch_doc(doc, len(body), ctx, limits), body)


def _normalise_batch_doc(doc: Any, body_len: int, ctx: RequestContext, limits: Limits) -> Normalised:
    if type(doc) is not dict or type(doc.get("batch")) is not list:
        raise RequestError(400, Code.INVALID_BODY, 'the body must be a JSON object {"batch": [event, ...]}')
    if not doc.keys() <= _BATCH_FIELDS:
        unknown = sorted(k for k in doc if k not in _BATCH_FIELDS)
        raise RequestError(
            400,
            Code.INVALID_BODY,
            f"unknown top-level field(s) {', '.join(repr(k[:64]) for k in unknown[:5])}",
        )
    _check_customer(doc.get("customer_id"), ctx, "the batch")
    _check_event_customers(doc["batch"], ctx, "customer_id")
    return _normalise_many(doc["batch"], body_len, ctx, limits, _normalise_plg_event)


def normalise_events(events: list[Any], body_len: int, ctx: RequestContext, limits: Limits) -> Normalised:
    """Already parsed plg events (the historical import maps its export shapes to them first)."""
    _check_event_customers(events, ctx, "customer_id")
    return _normalise_many(events, body_len, ctx, limits, _normalise_plg_event)


def normalise_single(body: bytes, ctx: RequestContext, limits: Limits, *, kind: str) -> Normalised:
    """``POST /v1/track`` and ``POST /v1/identify``: one event object."""
    check_body_size(len(body), limits, single_event=True)
    return _checked_exactly(lambda doc: _normalise_single_doc(doc, len(body), ctx, limits, kind), body)


def _normalise_single_doc(
    doc: Any, body_len: int, ctx: RequestContext, limits: Limits, kind: str
) -> Normalised:
    if type(doc) is not dict:
        raise RequestError(400, Code.INVALID_BODY, "the body must be one JSON event object")
    if "type" in doc and doc["type"] != kind:
        raise RequestError(400, Code.INVALID_BODY, f"this endpoint takes {kind} events; omit 'type'")
    _check_event_customers([doc], ctx, "customer_id")

    def one(raw: Any, c: RequestContext, lim: Limits, meta: dict[str, Any]) -> Any:
        return _normalise_plg_event(raw, c, lim, meta, default_type=kind)

    return _normalise_many([doc], body_len, ctx, limits, one)


def _check_event_customers(events: list[Any], ctx: RequestContext, attr: str) -> None:
    # Isolation is checked for the whole request before anything is produced: one event naming another
    # tenant refuses the request, so nothing of a confused or hostile client's batch is written.
    for raw in events:
        if type(raw) is dict:
            named = raw.get(attr)
            if named is not None:
                _check_customer(named, ctx, f"an event ({attr})")


# ---------------------------------------------------------------------------------------------------------
# CloudEvents 1.0 (structured JSON mode)

CE_CONTENT_TYPE = "application/cloudevents+json"
CE_BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
_CE_JSON_DATA_TYPES = frozenset({"application/json", "text/json"})


def _normalise_cloudevent(
    raw: Any, ctx: RequestContext, limits: Limits, meta: dict[str, Any]
) -> tuple[dict[str, Any], None]:
    """CloudEvent → usage-events record: ``id`` → event_id, ``type`` → name, ``time`` → timestamp,
    ``data`` (a JSON object) → properties, ``source`` → property ``$ce_source``, extensions ``userid``,
    ``anonymousid``, ``sessionid`` → the ids. ``subject``/``customerid`` name the customer (OpenMeter's
    convention) and must be the key's own."""
    if type(raw) is not dict:
        raise _Reject(Code.INVALID_EVENT, f"a CloudEvent must be a JSON object, got {_json_type(raw)}")
    spec = raw.get("specversion")
    if spec != "1.0":
        if spec is None:
            raise _Reject(Code.MISSING_FIELD, 'specversion is required ("1.0")')
        raise _Reject(
            Code.UNSUPPORTED_SPECVERSION, f'specversion {str(spec)[:16]!r} is not supported; use "1.0"'
        )
    event_id = _event_id(raw.get("id"), "id")
    source = raw.get("source")
    if source is None:
        raise _Reject(Code.MISSING_FIELD, "source is required")
    if type(source) is not str or not 0 < len(source) <= 1024 or not source.isprintable():
        raise _Reject(Code.INVALID_FIELD, "source must be a non-empty URI-reference string")
    name = _event_name(raw.get("type"), "type")
    time = raw.get("time")
    if time is None:
        # The CloudEvents spec makes `time` optional; such an event happened when we received it.
        ts = ctx.received_at_ms
    else:
        if type(time) is not str:
            raise _Reject(Code.INVALID_TIMESTAMP, "time must be an RFC 3339 string")
        ts = parse_timestamp(time, "time")
        _check_window(ts, "time", ctx, limits)
    if "data_base64" in raw:
        raise _Reject(
            Code.UNSUPPORTED_DATA, "data_base64 (binary data) cannot be stored; send data as a JSON object"
        )
    content_type = raw.get("datacontenttype")
    if content_type is not None and (
        type(content_type) is not str
        or content_type.split(";", 1)[0].strip().lower() not in _CE_JSON_DATA_TYPES
    ):
        raise _Reject(
            Code.UNSUPPORTED_DATA,
            f"datacontenttype {str(content_type)[:64]!r} is not supported; data must be a JSON object",
        )
    properties = dict(check_properties(raw.get("data"), "data"))
    properties[CE_SOURCE_PROPERTY] = source
    record = {
        "event_id": event_id,
        "customer_id": ctx.customer_id,
        "name": name,
        "timestamp": ts,
        "properties": properties,
        "user_id": _string_id(raw.get(_CE_USER_ID), _CE_USER_ID),
        "anonymous_id": _string_id(raw.get(_CE_ANONYMOUS_ID), _CE_ANONYMOUS_ID),
        "session_id": _string_id(raw.get(_CE_SESSION_ID), _CE_SESSION_ID),
        "ingest": meta,
        "consent": None,  # CloudEvents carry no consent yet (docs/privacy.md)
    }
    return record, None


def normalise_cloudevents(body: bytes, ctx: RequestContext, limits: Limits, *, batch: bool) -> Normalised:
    """``application/cloudevents+json`` (one event) or ``application/cloudevents-batch+json`` (an array)."""
    check_body_size(len(body), limits, single_event=not batch)
    return _checked_exactly(lambda doc: _normalise_cloudevents_doc(doc, len(body), ctx, limits, batch), body)


def _normalise_cloudevents_doc(
    doc: Any, body_len: int, ctx: RequestContext, limits: Limits, batch: bool
) -> Normalised:
    if batch:
        if type(doc) is not list:
            raise RequestError(
                400, Code.INVALID_BODY, f"{CE_BATCH_CONTENT_TYPE} takes a JSON array of CloudEvents"
            )
        events = doc
    else:
        if type(doc) is not dict:
            raise RequestError(400, Code.INVALID_BODY, f"{CE_CONTENT_TYPE} takes one CloudEvent JSON object")
        events = [doc]
    _check_event_customers(events, ctx, "subject")
    _check_event_customers(events, ctx, _CE_CUSTOMER_ID)
    return _normalise_many(events, body_len, ctx, limits, _normalise_cloudevent)
