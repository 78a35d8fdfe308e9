"""``/v1/onboarding/{customer}/{person}/...``: the next step, completion (idempotent), progress."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.growth import overrides as flag_overrides
from services.growth.api import ERRORS
from services.growth.onboarding import Recommendation, StepState, recommend
from services.growth.progress import pending_emits
from services.growth.resources import Growth, Resources
from services.growth.telemetry import stable_event_id, usage_event
from services.kernel import auth, metrics
from services.kernel.http import HttpError, request_id_of

COMPLETED_EVENT = "onboarding_step_completed"
NEXT_SECONDS = metrics.histogram(
    "plg_growth_onboarding_next_seconds", "Time to answer GET /v1/onboarding/.../next (in the handler)."
)

Id = Annotated[str, Path(min_length=1, max_length=200)]


class StepBody(BaseModel):
    id: str
    title: str
    intent: str | None
    priority: int


class StepStatus(BaseModel):
    step: StepBody
    status: str
    why: str


class NextStep(BaseModel):
    customer_id: str
    person_id: str
    flow: str
    step: StepBody | None
    why: str
    counts_complete: bool


class Progress(BaseModel):
    customer_id: str
    person_id: str
    flow: str
    done: int
    total: int
    steps: list[StepStatus]


class CompletionAction(BaseModel):
    index: int
    kind: str
    detail: dict[str, Any]
    applied_at: str
    actor: str


class Completed(BaseModel):
    customer_id: str
    person_id: str
    step_id: str
    flow: str
    first: bool
    completed_at: str
    #: The step's completion actions as applied by the first completion (the ledger; never re-applied).
    actions: list[CompletionAction]


def _iso(at: Any) -> str:
    return str(at.isoformat().replace("+00:00", "Z"))


def _step(state: StepState) -> dict[str, Any]:
    s = state.step
    return {"id": s.id, "title": s.title, "intent": s.intent, "priority": s.priority}


# A person's onboarding is read and completed from the product itself, often a browser: a key of either
# kind of the customer in the path, or an operator (viewer reads; completing on a customer's behalf needs
# an editor).
READER: Any = Depends(auth.publishable_key())
COMPLETER: Any = Depends(auth.publishable_key(operator_role=auth.Role.editor))


router = APIRouter()


def _context(
    g: Growth,
    customer: str,
    person: str,
    intent: str | None,
    plan: str | None,
    overrides: dict[str, str],
) -> dict[str, Any]:
    ctx: dict[str, Any] = {"user_id": person, "person_id": person, "customer_id": customer}
    if plan:
        ctx["plan"] = plan
    engine = g.runtime.snapshot.engine
    # Values completion actions set for the person or customer count (set_flag, seed 002).
    evaluations = flag_overrides.apply([engine.evaluate(k, ctx) for k in engine.flags], overrides, engine)
    ctx["flags"] = {e.flag_key: e.value for e in evaluations}
    ctx["counts"] = g.activation.counts("person", customer, person)
    ctx["customer_counts"] = g.activation.counts("customer", customer, "")
    if intent:
        ctx["intent"] = intent
    return ctx


def _flow_of(g: Growth, ctx: dict[str, Any]) -> str:
    flag = g.onboarding.flow_flag
    if flag is not None:
        value = g.runtime.snapshot.engine.evaluate(flag, ctx).value
        if isinstance(value, str) and value in g.onboarding.flows:
            return value
    return g.onboarding.default_flow


async def _recommendation(
    g: Growth, customer: str, person: str, intent: str | None, plan: str | None
) -> Recommendation:
    completed = await run_in_threadpool(g.progress.completed, customer, person)
    overrides = g.overrides.cached(customer, person)
    if overrides is None:
        overrides = await run_in_threadpool(g.overrides.get, customer, person)
    ctx = _context(g, customer, person, intent, plan, overrides)
    ctx["completed"] = completed
    return recommend(g.onboarding, _flow_of(g, ctx), ctx, completed)


@router.get(
    "/v1/onboarding/{customer_id}/{person_id}/next",
    response_model=NextStep,
    summary="The recommended next onboarding step (or none), with why",
    responses={**ERRORS, **auth.responses()},
    dependencies=[READER],
)
async def next_step(
    customer_id: Id,
    person_id: Id,
    g: Resources,
    intent: Annotated[
        str | None, Query(max_length=100, description="The person's goal, e.g. import_data")
    ] = None,
    plan: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """Steps already completed, or already done in the product (their `done_when` holds on the
    person's and customer's telemetry), are skipped; steps for another intent or whose condition does
    not hold are hidden. `step` is null when nothing is left. SDKs treat any failure as "no step"."""
    started = asyncio.get_running_loop().time()
    rec = await _recommendation(g, customer_id, person_id, intent, plan)
    body = {
        "customer_id": customer_id,
        "person_id": person_id,
        "flow": rec.flow,
        "step": None if rec.next is None else _step(rec.next),
        "why": rec.why,
        "counts_complete": g.activation.healthy(),
    }
    NEXT_SECONDS.observe(asyncio.get_running_loop().time() - started)
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/v1/onboarding/{customer_id}/{person_id}/progress",
    response_model=Progress,
    summary="Every step of the person's flow with its status",
    responses={**ERRORS, **auth.responses()},
    dependencies=[READER],
)
async def progress(
    customer_id: Id,
    person_id: Id,
    g: Resources,
    intent: Annotated[str | None, Query(max_length=100)] = None,
    plan: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """Statuses: `completed`, `done_in_product` (skipped), `next`, `pending`, `hidden`."""
    rec = await _recommendation(g, customer_id, person_id, intent, plan)
    done = sum(s.status in ("completed", "done_in_product") for s in rec.steps)
    body = {
        "customer_id": customer_id,
        "person_id": person_id,
        "flow": rec.flow,
        "done": done,
        "total": len(rec.steps),
        "steps": [{"step": _step(s), "status": s.status, "why": s.why} for s in rec.steps],
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.post(
    "/v1/onboarding/{customer_id}/{person_id}/steps/{step_id}/complete",
    response_model=Completed,
    summary="Record a completed step (idempotent) and emit onboarding_step_completed",
    responses={
        **ERRORS,
        201: {"model": Completed, "description": "Recorded now."},
        404: {"description": "No such step in any flow, or (operators) no such customer."},
        **auth.responses(),
    },
)
async def complete(
    request: Request,
    customer_id: Id,
    person_id: Id,
    step_id: Id,
    caller: Annotated[auth.Caller, COMPLETER],
    g: Resources,
) -> Response:
    """The first call records it (201), applies the step's completion actions (`on_complete` in
    onboarding.yaml: set a flag for the person or customer, grant a trial feature, emit an event —
    each once, recorded with who and when) and writes one `onboarding_step_completed` event; repeats
    answer 200 with the first completion and its actions and apply or write nothing (a repeat after a
    Kafka failure writes the events then, with the same event ids)."""
    if step_id not in g.onboarding.step_ids():
        raise HttpError(404, "step_not_found", f"no step {step_id!r} in any onboarding flow")
    if caller.operator is not None and await run_in_threadpool(g.customers.lookup, customer_id) is None:
        # A key's customer exists (keys belong to customers); an operator may name any: no progress
        # row and no event for a customer that does not exist.
        raise HttpError(404, "customer_not_found", f"no customer {customer_id!r}")
    overrides = await run_in_threadpool(g.overrides.get, customer_id, person_id)
    ctx = _context(g, customer_id, person_id, None, None, overrides)
    flow = _flow_of(g, ctx)
    step = g.onboarding.flows[flow].step(step_id)
    principal = caller.principal
    actor = (
        f"operator:{principal.name}"
        if isinstance(principal, auth.Operator)
        else f"key:{principal.key_id}"
        if isinstance(principal, auth.CustomerKey)
        else "unknown"
    )
    done = await run_in_threadpool(
        partial(
            g.progress.complete,
            customer_id,
            person_id,
            step_id,
            flow,
            step.actions if step is not None else (),
            actor=actor,
            request_id=request_id_of(request),
        )
    )
    if done.first and done.actions:
        g.overrides.invalidate(customer_id)
    for index, emit in pending_emits(done):
        claimed = await run_in_threadpool(g.progress.claim_emit, customer_id, person_id, step_id, index)
        if not claimed:
            continue  # written already, or a concurrent repeat is writing it
        properties = {"step_id": step_id, "flow": done.flow, **emit.properties}
        action_record = usage_event(
            event_id=stable_event_id("onboarding-action", customer_id, person_id, step_id, str(index)),
            customer_id=customer_id,
            name=emit.event,
            properties=properties,
            user_id=person_id,
        )
        try:
            await asyncio.wait_for(asyncio.wrap_future(g.telemetry.send(action_record)), 10)
        except Exception:
            await run_in_threadpool(g.progress.release_emit, customer_id, person_id, step_id, index)
            raise HttpError(
                503,
                "kafka_unavailable",
                "the step is recorded but an event of its completion actions could not be written; "
                "call again to retry it",
                {"Retry-After": "5"},
            ) from None
        await run_in_threadpool(g.progress.mark_action_emitted, customer_id, person_id, step_id, index)
    # Concurrent repeats of a completion whose event is not written yet: the claim lets one write it.
    if not done.emitted and await run_in_threadpool(g.progress.claim_emit, customer_id, person_id, step_id):
        record = usage_event(
            event_id=stable_event_id("onboarding", customer_id, person_id, step_id),
            customer_id=customer_id,
            name=COMPLETED_EVENT,
            properties={"step_id": step_id, "flow": done.flow, "intent": step.intent if step else None},
            user_id=person_id,
        )
        try:
            await asyncio.wait_for(asyncio.wrap_future(g.telemetry.send(record)), 10)
        except Exception:
            await run_in_threadpool(g.progress.release_emit, customer_id, person_id, step_id)
            raise HttpError(
                503,
                "kafka_unavailable",
                "the step is recorded but its event could not be written; call again to retry it",
                {"Retry-After": "5"},
            ) from None
        await run_in_threadpool(g.progress.mark_emitted, customer_id, person_id, step_id)
    body = {
        "customer_id": customer_id,
        "person_id": person_id,
        "step_id": step_id,
        "flow": done.flow,
        "first": done.first,
        "completed_at": _iso(done.completed_at),
        "actions": [
            {
                "index": a.index,
                "kind": a.kind,
                "detail": a.detail,
                "applied_at": _iso(a.applied_at),
                "actor": a.actor,
            }
            for a in done.actions
        ],
    }
    return Response(orjson.dumps(body), status_code=201 if done.first else 200, media_type="application/json")
