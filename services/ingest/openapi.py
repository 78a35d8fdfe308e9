"""OpenAPI documentation of the ingest API (``/openapi.json``, ``/docs``).

The request path does not parse bodies with these models (hand-written checks in ``model.py`` are several
times cheaper per event); they exist to document the contract, and a unit test checks that examples built
from them pass the real checks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

# Avro ``long``: properties hold 64-bit integers; a bigger one is refused (``unrepresentable_property``).
Long = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Scalar = bool | Long | float | str | None
_REF = "#/components/schemas/{model}"
# What the checks in model.py enforce and JSON Schema can state exactly. "Printable" (Python's
# str.isprintable: no control, format, private-use or unassigned characters) is stated in prose only.
EVENT_ID_PATTERN = r"^[!-~]+$"  # printable ASCII, no spaces
NAME_PATTERN = r"^[^$\s](.*\S)?$"  # not '$'-prefixed (reserved), no surrounding spaces
EventId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=EVENT_ID_PATTERN,
        description="Client-generated unique id (UUIDv7 recommended); the dedup key. "
        "1-128 printable ASCII characters without spaces.",
        examples=["01890f6e-7d4c-7cc2-9b51-6b1c9f7e6a10"],
    ),
]
Id = Annotated[str, Field(min_length=1, max_length=255, description="1-255 printable characters.")]
Timestamp = Annotated[
    str | int,
    Field(
        description="ISO-8601 / RFC 3339 with a UTC offset (date and time separated by 'T' or a space), or "
        "integer epoch milliseconds. At most 5 minutes in the future and 35 days in the past: "
        "others are refused with timestamp_in_future / timestamp_too_old.",
        examples=["2025-10-09T08:53:20Z"],
    ),
]
_SCALAR_SCHEMA = {
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        {"type": "number"},
        {"type": "string"},
    ]
}
Properties = Annotated[
    dict[str, Scalar],
    WithJsonSchema(
        {
            "type": "object",
            # Keys: 1-255 printable characters, not starting with '$' (reserved for plg).
            "propertyNames": {"minLength": 1, "maxLength": 255, "pattern": "^[^$]"},
            "additionalProperties": _SCALAR_SCHEMA,
        }
    ),
]


Consent = Annotated[
    dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")], bool],
    Field(
        max_length=16,
        description="Purposes the person agreed to (true) or refused (false); left out = not stated. "
        "analytics=false: the event is metered but never enriched, scored or kept for analytics "
        "(docs/privacy.md).",
        examples=[{"analytics": False, "marketing": True}],
    ),
]


class _Strict(BaseModel):
    # Unknown fields are refused (unknown_field), not dropped.
    model_config = ConfigDict(extra="forbid")


class Event(_Strict):
    """One event. The customer is the API key's tenant; `customer_id`, if sent, must be that tenant."""

    event_id: EventId
    name: str = Field(
        min_length=1,
        max_length=200,
        pattern=NAME_PATTERN,
        description="Event name, 1-200 printable characters without surrounding spaces; names starting "
        "with '$' are reserved.",
        examples=["api_call"],
    )
    timestamp: Timestamp
    properties: Properties | None = Field(
        default=None,
        description="Flat object: values are null, boolean, number (64-bit integers or doubles) or string; "
        "keys are 1-255 printable characters, not starting with '$' (reserved).",
    )
    user_id: Id | None = None
    anonymous_id: Id | None = None
    session_id: Id | None = None
    consent: Consent | None = None
    type: Literal["track"] = Field(
        default="track", description="An identify event in a batch is a `BatchIdentify`."
    )
    customer_id: str | None = Field(
        default=None, description="Optional; refused with 403 unless it is the key's."
    )


class Identify(_Strict):
    event_id: EventId
    timestamp: Timestamp
    anonymous_id: Id
    user_id: Id
    properties: Properties | None = Field(default=None, description="Traits of the user.")
    session_id: Id | None = None
    consent: Consent | None = None
    type: Literal["identify"] = "identify"
    name: Literal["$identify"] = Field(default="$identify", description="Omit it; $identify if given.")
    customer_id: str | None = Field(default=None, description="Optional; refused with 403 unless the key's.")


class BatchIdentify(Identify):
    """An identify event inside a batch: links anonymous_id to user_id (both required), takes no name."""

    type: Literal["identify"]


class Batch(_Strict):
    """Each event is accepted or rejected on its own: an event that does not match `Event` is listed as
    rejected (with its code) in the 202's results, and the others go on."""

    batch: list[Event | BatchIdentify] = Field(
        max_length=500, description="At most 500 events (413 too_many_events)."
    )
    customer_id: str | None = Field(default=None, description="Optional; refused with 403 unless the key's.")


class CloudEvent(BaseModel):
    """CloudEvents 1.0, structured JSON mode. Extension attributes other than those below are accepted
    and not stored."""

    specversion: Literal["1.0"]
    id: EventId
    source: str = Field(
        min_length=1, max_length=1024, description="A URI-reference; stored as the property `$ce_source`."
    )
    type: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN, description="The event name.")
    time: str | None = Field(
        default=None, description="RFC 3339; the receive time when absent. Same window as `timestamp`."
    )
    subject: str | None = Field(
        default=None, description="The customer (OpenMeter's convention): must be the key's."
    )
    datacontenttype: Literal["application/json", "text/json"] | None = Field(
        default=None, description="JSON only (parameters such as charset allowed) when given."
    )
    data: Properties | None = Field(default=None, description="The properties (a flat JSON object).")
    userid: Id | None = None
    anonymousid: Id | None = None
    sessionid: Id | None = None
    customerid: str | None = None


class EventResult(BaseModel):
    index: int
    event_id: str | None
    status: Literal["accepted", "rejected"]
    code: str | None = Field(default=None, description="Why it was rejected, e.g. timestamp_too_old.")
    message: str | None = None


class SuspendedNotice(BaseModel):
    code: Literal["suspended"]
    reason: str
    suspended_since: str | None = Field(description="UTC, ISO 8601")
    suspended_until: str | None = Field(description="End of the cool-down; null: until lifted by support")
    appeal: str = Field(description="How to appeal the suspension")


class Accepted(BaseModel):
    request_id: str
    accepted: int
    rejected: int
    results: list[EventResult]
    suspended: SuspendedNotice | None = Field(
        default=None,
        description="Only while the customer is suspended by the abuse guard or support: the events are "
        "still accepted and metered, but every entitlement check answers allowed: false (code suspended).",
    )


class Error(BaseModel):
    code: str = Field(
        description="Machine-readable: invalid_json, invalid_body, unauthorized, "
        "forbidden_customer, batch_too_large, too_many_events, event_too_large, rate_limited, "
        "kafka_unavailable, ..."
    )
    message: str
    request_id: str


_MODELS: tuple[type[BaseModel], ...] = (
    Event,
    Batch,
    Identify,
    BatchIdentify,
    CloudEvent,
    EventResult,
    Accepted,
    Error,
)


def component_schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _body(schema: dict[str, Any], *media_types: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {mt: {"schema": schema} for mt in media_types}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "batch": _body(_ref("Batch"), "application/json"),
    "track": _body(_ref("Event"), "application/json"),
    "identify": _body(_ref("Identify"), "application/json"),
    # Export lines of three shapes (plg, PostHog, Segment), each checked on its own and answered per event:
    # as JSON the request is only a list of objects; JSON lines (application/x-ndjson) are taken too.
    "import": _body(
        {
            "type": "object",
            "required": ["batch"],
            "properties": {"batch": {"type": "array", "items": {"type": "object"}, "maxItems": 500}},
            "description": "Events in plg's shape, or as PostHog and Segment export them "
            "(docs/analytics.md).",
        },
        "application/json",
    ),
    "cloudevents": {
        "requestBody": {
            "required": True,
            "content": {
                "application/cloudevents+json": {"schema": _ref("CloudEvent")},
                "application/cloudevents-batch+json": {
                    "schema": {"type": "array", "items": _ref("CloudEvent")}
                },
            },
        }
    },
}


_REQUEST_ID = {
    "X-Request-Id": {
        "description": "The request's id: the one the client sent (up to 128 printable ASCII characters) "
        "or a fresh one. Also in the body of every error.",
        "required": True,
        "schema": {"type": "string"},
    }
}


def _answer(description: str, name: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(name)}},
        "headers": {**_REQUEST_ID, **(headers or {})},
    }


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}

RESPONSES: dict[int | str, dict[str, Any]] = {
    202: _answer(
        "Written to Kafka (acknowledged by the broker): one result per event, in order.", "Accepted"
    ),
    400: _answer(
        "Not JSON, not the expected shape, or (single-event endpoints) the event was refused.", "Error"
    ),
    401: _answer("Missing, malformed, unknown or revoked API key.", "Error"),
    403: _answer("The body names another customer than the key's.", "Error"),
    413: _answer("Over the size limits (500 KB / 500 events per batch, 32 KB per event).", "Error"),
    408: _answer("The body did not fully arrive in time (INGEST_BODY_READ_TIMEOUT_SECONDS).", "Error"),
    415: _answer(
        "Unsupported Content-Type or Content-Encoding; the message names the type this endpoint takes.",
        "Error",
    ),
    429: _answer("The key is over its rate.", "Error", _RETRY_AFTER),
    503: _answer(
        "Kafka (kafka_unavailable) or PostgreSQL (database_unavailable) cannot serve the request now; "
        "nothing of the request was accepted. Retry the same events.",
        "Error",
        _RETRY_AFTER,
    ),
    500: _answer("A bug of ours, logged with the request id the body carries.", "Error"),
}
