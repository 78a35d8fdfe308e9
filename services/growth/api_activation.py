"""``/v1/activation/{customer}/{person}``: thresholds, counts and crossings; and their SSE stream."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.growth.api import ERRORS, sse_response
from services.growth.flags import Broadcaster
from services.growth.resources import Resources
from services.kernel import auth
from services.kernel.sse import event as sse_event

PROMPT_EVENT = "show-upgrade-prompt"
UPGRADE_FLAG = "growth_upgrade_prompt"
Id = Annotated[str, Path(min_length=1, max_length=200)]


class ThresholdStatus(BaseModel):
    threshold: str
    event: str
    required: int
    window_days: int | None
    north_star: bool
    count: int
    crossed: bool
    crossed_at: int | None


class ActivationStatus(BaseModel):
    customer_id: str
    person_id: str
    complete: bool
    show_upgrade_prompt: bool
    plans: list[str]
    person: list[ThresholdStatus]
    customer: list[ThresholdStatus]


def crossing_message(record: dict[str, Any]) -> tuple[str, str | None, bytes]:
    """What the activation broadcaster carries: (customer, person or None, the SSE bytes)."""
    return (
        record["customer_id"],
        record.get("person_id"),
        sse_event(PROMPT_EVENT, orjson.dumps(record), record["event_id"]),
    )


# Activation state is not on the publishable key's list: the customer's backend (secret key) or an operator.
READER: Any = Depends(auth.secret_key())


async def crossings(request: Request) -> Broadcaster:
    """The broadcaster of activation crossings (``build_app`` makes it, the activation view publishes)."""
    found: Broadcaster = request.app.state.activation_crossings
    return found


router = APIRouter()


@router.get(
    "/v1/activation/{customer_id}/{person_id}",
    response_model=ActivationStatus,
    summary="Activation thresholds for a person and their customer: counts, crossings, prompt",
    responses={**ERRORS, **auth.responses()},
    dependencies=[READER],
)
async def status(customer_id: Id, person_id: Id, g: Resources) -> Response:
    """Counts per threshold in its window (now), whether it was crossed (once, for good), and
    `show_upgrade_prompt`: something was crossed and the `growth_upgrade_prompt` flag is on for this
    person. `complete` is false while the service is still reading its state after a start."""
    body = g.activation.status(customer_id, person_id)
    engine = g.runtime.snapshot.engine
    if UPGRADE_FLAG in engine:
        flag = engine.evaluate(UPGRADE_FLAG, {"user_id": person_id, "customer_id": customer_id})
        body["show_upgrade_prompt"] = body["show_upgrade_prompt"] and flag.value is True
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/v1/activation/{customer_id}/{person_id}/stream",
    summary="Crossings for this person (and their customer) as server-sent events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": f"`text/event-stream`: `event: {PROMPT_EVENT}` with the activation-events "
            "record (schemas/activation_event.avsc) per crossing of this person or of their customer.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **ERRORS,
        **auth.responses(),
    },
    dependencies=[READER],
)
async def stream(
    customer_id: Id,
    person_id: Id,
    request: Request,
    g: Resources,
    broadcaster: Annotated[Broadcaster, Depends(crossings)],
) -> StreamingResponse:
    def mine(item: tuple[str, str | None, bytes]) -> bytes | None:
        customer, person, message = item
        return message if customer == customer_id and person in (None, person_id) else None

    return sse_response(
        request, broadcaster, b": activation stream\n\n", g.settings.sse_heartbeat_seconds, mine
    )
