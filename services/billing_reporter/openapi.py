"""What the billing reporter's OpenAPI document says of each answer (FastAPI ``responses=``): every
refusal in plg's error shape, so clients and the schemathesis runs know each status a route can give."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="customer_not_found, invalid_signature, unknown_plan, ...")
    message: str
    request_id: str = Field(description="Also in the X-Request-Id header; quote it when reporting a 500.")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


_RETRY = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
_COMMON: dict[int | str, dict[str, Any]] = {
    500: _error("A bug of ours, logged with the request id the body carries."),
    503: {**_error("PostgreSQL is unavailable; retry after Retry-After seconds."), "headers": _RETRY},
}

UPCOMING_INVOICE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The running invoice of the current period: lines, subtotal, tax, total (Decimal "
        "strings)."
    },
    404: _error("No such customer (customer_not_found)."),
    409: _error("The customer's plan has no price in the meters-and-plans config (plan_not_configured)."),
    **_COMMON,
}

CHECKOUT: dict[int | str, dict[str, Any]] = {
    200: {"description": "A Stripe Checkout Session: url, session_id, plan, customer_id."},
    400: _error("The body is not JSON, not an object with an optional string plan, or names no plan."),
    404: _error("No such customer (customer_not_found)."),
    409: _error("No upgrade path, already on that plan, or a plan sold by contract."),
    502: {**_error("Stripe did not create the session (stripe_unavailable); retry."), "headers": _RETRY},
    **_COMMON,
}

CHECKOUT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"plan": {"type": "string", "description": "default: the upgrade target"}},
                }
            }
        },
    }
}

WEBHOOK: dict[int | str, dict[str, Any]] = {
    200: {"description": "Handled, or already handled (idempotent by Stripe event id)."},
    400: _error(
        "Missing or invalid Stripe-Signature (or a timestamp beyond the tolerance), or not a Stripe event."
    ),
    409: _error(
        "`not_known_yet`: the event's customer or subscription is not known to plg yet; nothing was"
        " recorded, so Stripe's retry applies it once the event that introduces it has arrived."
    ),
    **_COMMON,
}

WEBHOOK_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": "Stripe-Signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": "Stripe's signature of the raw body, checked with STRIPE_WEBHOOK_SECRET.",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["id", "type", "data"],
                    "properties": {
                        "id": {"type": "string"},
                        "type": {"type": "string"},
                        "data": {"type": "object", "required": ["object"]},
                    },
                }
            }
        },
    },
}

PREVIEW_INVOICE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The invoice the customer would get for the period on that plan (a draft)."},
    400: _error("`unknown_plan`, `unknown_version` or `invalid_period` (YYYY-MM)."),
    401: _error("No credential: the customer's secret key or an operator token is needed."),
    403: _error("Another customer's key, or a publishable key (a preview needs the secret key)."),
    404: _error("`customer_not_found`."),
    **_COMMON,
}
