"""The analytics API (``:8086``): funnels, retention, the north star, activation rates and timelines.

Every route is for operators (viewer and up): answers span customers and persons. Queries run in a thread
(the store's engine blocks), with every value passed as a query parameter.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, TypeVar

import orjson
import psycopg
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response

from services.analytics import leads as pql_leads
from services.analytics import pages as pages_html
from services.analytics import queries
from services.analytics.model import QueryError, parse_duration
from services.analytics.resources import AnalyticsResources
from services.analytics.store import StoreError
from services.analytics.suggest import suggest
from services.kernel import login
from services.kernel.auth import Role, operator
from services.kernel.http import HttpError, resources_dependency

_JSON = "application/json"
_T = TypeVar("_T")

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])
VIEWER = Depends(operator(Role.viewer))
# The console's pages: a browser without a session goes to the sign-in page (services/kernel/login.py).
PAGE = Depends(login.operator_page(Role.viewer))


resources = resources_dependency(
    AnalyticsResources, "the analytics store is opening; retry shortly", code="starting"
)


Resources = Annotated[AnalyticsResources, Depends(resources)]


class StepOut(BaseModel):
    name: str
    count: int = Field(description="distinct persons who reached this step after every earlier one, in order")


class FunnelOut(BaseModel):
    steps: list[StepOut]
    window_seconds: int
    since: int
    until: int
    customer_id: str | None
    breakdown_by: str | None = None
    breakdown: list[dict[str, Any]] | None = None


class ErrorOut(BaseModel):
    code: str
    message: str
    request_id: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorOut,
        "description": "A question that cannot be answered as asked (bad step list, window)",
    },
    401: {"model": ErrorOut, "description": "No credential"},
    403: {"model": ErrorOut, "description": "Not an operator"},
    503: {"model": ErrorOut, "description": "The store is opening or unreachable; retry"},
}

Customer = Annotated[str | None, Query(max_length=200, description="only this customer")]
Since = Annotated[
    str | None,
    Query(
        max_length=40, description="ISO 8601 date/time (UTC) or a duration back from now (90d); default 90d"
    ),
]
Until = Annotated[
    str | None, Query(max_length=40, description="ISO 8601 date/time (UTC), exclusive; default now")
]


def parse_instant(text: str, now_ms: int) -> int:
    """``2026-10-01`` / ``2026-10-01T12:00:00Z`` → epoch ms; ``30d`` → 30 days before now."""
    if text[:1].isdigit() and not text[-1:].isdigit() and "-" not in text:
        return now_ms - parse_duration(text) * 1000
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{text!r} is neither an ISO 8601 date/time nor a duration like 30d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def scope_of(
    res: AnalyticsResources, since: str | None, until: str | None, customer: str | None
) -> queries.Scope:
    now_ms = int(time.time() * 1000)
    end = parse_instant(until, now_ms) if until else now_ms + 1
    start = parse_instant(since, now_ms) if since else now_ms - res.default_days * queries.DAY_MS
    if start >= end:
        raise QueryError("since must be before until")
    return queries.Scope(start, end, customer)


async def answer(question: Callable[[], _T]) -> Response:
    """Run a query off the event loop; a question the caller can fix is a 400, a store problem a 503."""
    try:
        result = await run_in_threadpool(question)
    except QueryError as exc:
        raise HttpError(400, "invalid_query", str(exc)) from None
    except StoreError as exc:
        raise HttpError(
            503, "store_unavailable", f"the analytics store failed: {exc}", {"Retry-After": "5"}
        ) from None
    return Response(orjson.dumps(result), media_type=_JSON)


@router.get(
    "/funnel", dependencies=[VIEWER], response_model=None, responses={200: {"model": FunnelOut}, **ERRORS}
)
async def funnel(
    res: Resources,
    steps: Annotated[str, Query(max_length=2000, description="comma-separated event names, in order")],
    window: Annotated[str, Query(max_length=20, description="conversion window, e.g. 7d, 12h")] = "7d",
    breakdown: Annotated[str | None, Query(max_length=210, description="plan, or property:<name>")] = None,
    customer: Customer = None,
    since: Since = None,
    until: Until = None,
) -> Response:
    """Ordered funnel: distinct persons per step, each step after the previous one, all within the window."""

    def ask() -> dict[str, Any]:
        scope = scope_of(res, since, until, customer)
        return queries.funnel(res.store, steps.split(","), parse_duration(window), scope, breakdown)

    return await answer(ask)


@router.get("/retention", dependencies=[VIEWER], response_model=None, responses=ERRORS)
async def retention(
    res: Resources,
    weeks: Annotated[int, Query(ge=1, le=52)] = 8,
    event: Annotated[
        str | None, Query(max_length=200, description="activity that counts (default: any)")
    ] = None,
    customer: Customer = None,
    since: Since = None,
    until: Until = None,
) -> Response:
    """Weekly cohorts by first event; persons active in each following week."""

    def ask() -> dict[str, Any]:
        return queries.retention(res.store, scope_of(res, since, until, customer), weeks, event)

    return await answer(ask)


@router.get("/north-star", dependencies=[VIEWER], response_model=None, responses=ERRORS)
async def north_star(
    res: Resources, customer: Customer = None, since: Since = None, until: Until = None
) -> Response:
    """The north-star metric of activation.yaml per week: events, persons, persons who reached it."""
    star = res.north_star()
    if star is None:
        raise HttpError(404, "no_north_star", "activation.yaml names no north_star threshold")

    def ask() -> dict[str, Any]:
        scope = scope_of(res, since, until, customer)
        return queries.north_star(res.store, scope, star.event, star.count, star.window_days, star.name)

    return await answer(ask)


@router.get("/activation", dependencies=[VIEWER], response_model=None, responses=ERRORS)
async def activation(
    res: Resources, customer: Customer = None, since: Since = None, until: Until = None
) -> Response:
    """For each threshold of activation.yaml: persons seen, persons who crossed it, the rate."""
    thresholds = [
        {"name": t.name, "event": t.event, "count": t.count, "window_days": t.window_days}
        for t in res.activation.thresholds
    ]

    def ask() -> dict[str, Any]:
        return queries.activation_rates(res.store, scope_of(res, since, until, customer), thresholds)

    return await answer(ask)


@router.get("/customers/{customer_id}/timeline", dependencies=[VIEWER], response_model=None, responses=ERRORS)
async def timeline(
    res: Resources,
    customer_id: str,
    person: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    since: Since = None,
    until: Until = None,
) -> Response:
    """A customer's events (or one person's), newest first."""

    def ask() -> dict[str, Any]:
        return queries.timeline(res.store, customer_id, person, limit, scope_of(res, since, until, None))

    return await answer(ask)


@router.get("/activation/suggest", dependencies=[VIEWER], response_model=None, responses=ERRORS)
async def activation_suggest(
    res: Resources,
    within: Annotated[str, Query(max_length=10, description="an account's first days counted (14d)")] = "14d",
    retained_after: Annotated[
        str, Query(max_length=10, description="retained: still active this long after its first event")
    ] = "30d",
    churn_event: Annotated[
        list[str] | None, Query(max_length=200, description="events that mean churned (canceled, downgraded)")
    ] = None,
    min_accounts: Annotated[int, Query(ge=2, le=1_000_000)] = 50,
    min_group: Annotated[int, Query(ge=1, le=1_000_000)] = 10,
    since: Since = None,
    until: Until = None,
) -> Response:
    """For every event accounts do: the count within their first days that best separates retained from
    churned accounts, with lift, a 95 % interval and sample sizes — or why the data cannot tell."""

    def ask() -> dict[str, Any]:
        scope = scope_of(res, since, until, None)
        within_days = max(1, parse_duration(within) // 86400)
        after_days = max(1, parse_duration(retained_after) // 86400)
        accounts = queries.accounts_for_suggestion(
            res.store, scope, within_days, after_days, churn_event or []
        )
        events = sorted({name for a in accounts for name in a.counts})
        found = suggest(accounts, events, min_accounts=min_accounts, min_group=min_group)
        return {
            "accounts": len(accounts),
            "retained": sum(a.retained for a in accounts),
            "within_days": within_days,
            "retained_after_days": after_days,
            "suggestions": [s.as_dict() for s in found],
            "since": scope.since_ms,
            "until": scope.until_ms,
        }

    return await answer(ask)


@router.get("/activity", dependencies=[VIEWER], response_model=None, responses=ERRORS)
async def activity(
    res: Resources, customer: Customer = None, since: Since = None, until: Until = None
) -> Response:
    """Per customer, the days it was active (days since the epoch, UTC): churn labels for backtests."""

    def ask() -> dict[str, Any]:
        return queries.activity_days(res.store, scope_of(res, since, until, customer))

    return await answer(ask)


def _leads(res: AnalyticsResources, window: str | None) -> dict[str, Any]:
    """The accounts that qualify now as product-qualified leads, best first, with the rules applied."""
    if res.connect is None:
        raise StoreError("the customers database is not connected")
    rules = res.pql_rules
    if window is not None:
        days = parse_duration(window) // 86400
        if not 1 <= days <= 180:
            raise QueryError("the pql window is 1 to 180 days (e.g. 14d)")
        rules = replace(rules, window_days=days)
    now_ms = int(time.time() * 1000)
    try:
        leads = pql_leads.find_leads(res.store, res.connect, res.activation, rules, now_ms)
    except psycopg.Error as exc:
        raise StoreError(f"customers database: {exc}") from exc
    return {
        "leads": leads,
        "rules": {
            "plans": sorted(rules.plans),
            "trialing": rules.trialing,
            "window_days": rules.window_days,
            "min_growth": rules.min_growth,
            "min_events": rules.min_events,
            "limit_percent": rules.limit_percent,
        },
        "evaluated_at": now_ms,
    }


@router.get("/pql", dependencies=[VIEWER], response_model=None, responses=ERRORS)
async def pql(
    res: Resources,
    window: Annotated[
        str | None, Query(max_length=10, description="signals' window (default ANALYTICS_PQL_WINDOW_DAYS)")
    ] = None,
) -> Response:
    """Product-qualified leads: free or trialing accounts that activated and show usage growth or plan-limit
    hits, best first, with the evidence for each and when each first qualified."""
    return await answer(lambda: _leads(res, window))


@router.get("/daily-facts", dependencies=[VIEWER], response_model=None, responses=ERRORS)
async def facts(
    res: Resources, customer: Customer = None, since: Since = None, until: Until = None
) -> Response:
    """Per customer and day: events per name and person, score properties, context and limit hits — what
    the health score's batch path rescores past days from (``plg health backtest --rescore``)."""

    def ask() -> dict[str, Any]:
        return queries.daily_facts(res.store, scope_of(res, since, until, customer))

    return await answer(ask)


# -- the console's pages -----------------------------------------------------------------------------------

pages = APIRouter(prefix="/analytics", include_in_schema=False)


async def _page(question: Callable[[], str]) -> HTMLResponse:
    """A page; a question the operator can fix is shown on the page (400), a store problem too (503)."""
    try:
        return HTMLResponse(await run_in_threadpool(question))
    except QueryError as exc:
        return HTMLResponse(pages_html.error(str(exc)), status_code=400)
    except StoreError as exc:
        return HTMLResponse(pages_html.error(f"the analytics store failed: {exc}"), status_code=503)


@pages.get("/funnel", dependencies=[PAGE], response_class=HTMLResponse)
async def funnel_page(
    res: Resources,
    steps: Annotated[str, Query(max_length=2000)] = "signed_up,project_created,team_invite_sent",
    window: Annotated[str, Query(max_length=20)] = "7d",
    breakdown: Annotated[str | None, Query(max_length=210)] = None,
    customer: Customer = None,
    since: Since = None,
    until: Until = None,
) -> HTMLResponse:
    customer = customer or None
    breakdown = breakdown or None

    def render() -> str:
        form = pages_html.funnel_form(steps, window, customer, breakdown)
        try:
            scope = scope_of(res, since, until, customer)
            answer = queries.funnel(res.store, steps.split(","), parse_duration(window), scope, breakdown)
        except QueryError as exc:
            return pages_html.page("Funnel", "funnel", form + pages_html.error(str(exc)), res.health_url)
        return pages_html.page("Funnel", "funnel", form + pages_html.funnel_chart(answer), res.health_url)

    return await _page(render)


@pages.get("/retention", dependencies=[PAGE], response_class=HTMLResponse)
async def retention_page(
    res: Resources,
    weeks: Annotated[int, Query(ge=1, le=52)] = 8,
    customer: Customer = None,
    since: Since = None,
    until: Until = None,
) -> HTMLResponse:
    def render() -> str:
        answer = queries.retention(res.store, scope_of(res, since, until, customer or None), weeks)
        return pages_html.page(
            "Weekly retention", "retention", pages_html.retention_heatmap(answer), res.health_url
        )

    return await _page(render)


@pages.get("/north-star", dependencies=[PAGE], response_class=HTMLResponse)
async def north_star_page(
    res: Resources, customer: Customer = None, since: Since = None, until: Until = None
) -> HTMLResponse:
    star = res.north_star()

    def render() -> str:
        if star is None:
            body = pages_html.error("activation.yaml names no north_star threshold")
        else:
            scope = scope_of(res, since, until, customer or None)
            answer = queries.north_star(res.store, scope, star.event, star.count, star.window_days, star.name)
            body = pages_html.north_star_chart(answer)
        return pages_html.page("North star", "north-star", body, res.health_url)

    return await _page(render)


@pages.get("/pql", dependencies=[PAGE], response_class=HTMLResponse)
async def pql_page(
    res: Resources, window: Annotated[str | None, Query(max_length=10)] = None
) -> HTMLResponse:
    def render() -> str:
        return pages_html.page(
            "Product-qualified leads",
            "pql",
            pages_html.pql_table(_leads(res, window or None)),
            res.health_url,
        )

    return await _page(render)
