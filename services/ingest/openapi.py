"""OpenAPI documentation of the ingest API (``/openapi.json``, ``/docs``).

The request path does not parse bodies with these models (hand-written checks in ``model.py`` are several
times cheaper per event); they exist to document the contract, and a unit test checks that examples built
from them pass the real checks.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Scalar = bool | int | float | str | None
_REF = "#/components/schemas/{model}"


class Event(BaseModel):
    """One event. The customer is the API key's tenant; `customer_id`, if sent, must be that tenant."""

    event_id: str = Field(
        description="Client-generated unique id (UUIDv7 recommended); the dedup key. "
        "1-128 printable ASCII characters without spaces.",
        examples=["01890f6e-7d4c-7cc2-9b51-6b1c9f7e6a10"],
    )
    name: str = Field(
        description="Event name, 1-200 printable characters; names starting with '$' are reserved.",
        examples=["api_call"],
    )
    timestamp: str | int = Field(
        description="ISO-8601 with a UTC offset, or epoch milliseconds. At most 5 "
        "minutes in the future and 35 days in the past.",
        examples=["2025-10-09T08:53:20Z"],
    )
    properties: dict[str, Scalar] = Field(
        default_factory=dict,
        description="Flat object: values are null, boolean, number (64-bit integers or doubles) or string.",
    )
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    type: Literal["track", "identify"] = Field(
        default="track",
        description="identify links anonymous_id to user_id (both required) and takes no name.",
    )
    customer_id: str | None = Field(
        default=None, description="Optional; refused with 403 unless it is the key's."
    )


class Batch(BaseModel):
    batch: list[Event] = Field(max_length=500)


class Identify(BaseModel):
    event_id: str
    timestamp: str | int
    anonymous_id: str
    user_id: str
    properties: dict[str, Scalar] = Field(default_factory=dict, description="Traits of the user.")


class CloudEvent(BaseModel):
    """CloudEvents 1.0, structured JSON mode."""

    specversion: Literal["1.0"]
    id: str
    source: str = Field(description="Stored as the property `$ce_source`.")
    type: str = Field(description="The event name.")
    time: str | None = Field(default=None, description="RFC 3339; the receive time when absent.")
    subject: str | None = Field(
        default=None, description="The customer (OpenMeter's convention): must be the key's."
    )
    datacontenttype: str | None = Field(default=None, description="application/json when given.")
    data: dict[str, Scalar] | None = Field(default=None, description="The properties (a flat JSON object).")
    userid: str | None = None
    anonymousid: str | None = None
    sessionid: str | None = None
    customerid: str | None = None


class EventResult(BaseModel):
    index: int
    event_id: str | None
    status: Literal["accepted", "rejected"]
    code: str | None = Field(default=None, description="Why it was rejected, e.g. timestamp_too_old.")
    message: str | None = None


class Accepted(BaseModel):
    request_id: str
    accepted: int
    rejected: int
    results: list[EventResult]


class Error(BaseModel):
    code: str = Field(
        description="Machine-readable: invalid_json, invalid_body, unauthorized, "
        "forbidden_customer, batch_too_large, too_many_events, event_too_large, rate_limited, "
        "kafka_unavailable, ..."
    )
    message: str
    request_id: str


_MODELS: tuple[type[BaseModel], ...] = (Event, Batch, Identify, CloudEvent, EventResult, Accepted, Error)


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


def _answer(description: str, name: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(name)}},
    }
    if headers:
        out["headers"] = headers
    return out


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
    415: _answer("Unsupported Content-Type or Content-Encoding.", "Error"),
    429: _answer("The key is over its rate.", "Error", _RETRY_AFTER),
    503: _answer(
        "Kafka cannot take the write now; nothing of the request was accepted. Retry the same events.",
        "Error",
        _RETRY_AFTER,
    ),
}
