"""The health-score API and the CS dashboard's pages: ``GET /v1/health/{customer}``, ``GET /v1/health``,
``GET /v1/health/stream`` (SSE), the dashboard at ``/`` and ``/customers/{customer}``. Everything is served
from memory (the serving cache fed by the views); resources come in as a dependency (:func:`resources`,
opened by the app's lifespan), the caller from each route's policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from services.customers import suspension
from services.health_score import dashboard
from services.health_score.customer_list import CustomerDirectorySnapshot, Filters, ListRows, customer_list
from services.health_score.serving import Hub, ServingCache, detail
from services.health_score.store import HealthStore
from services.kernel import auth, login
from services.kernel.http import HttpError, resources_dependency
from services.kernel.login import BrowserLogin, PageCaller
from services.kernel.privacy import ErasureFollower
from services.kernel.processing import AtLeastOnceLoop
from services.kernel.processing.view import MaterializedView
from services.kernel.sse import StreamLimits, event_stream
from services.kernel.sse import event as sse_event
from services.kernel.workers import Workers
from services.plans.model import PlansConfig

_JSON = "application/json"


@dataclass
class HealthResources:
    """What the routes and /readyz need, opened by the app's lifespan (``app.state.resources``). The scorer's
    pieces (loop, erasures, workers) are None in role ``api``, the views in role ``scorer``."""

    cache: ServingCache
    hub: Hub
    sse_limits: StreamLimits
    pool: ConnectionPool
    store: HealthStore
    authenticator: auth.Authenticator
    browser_login: BrowserLogin
    # The customer list: prices per plan (recurring revenue) and the customers table (plan, CSM, suspension).
    plans: PlansConfig
    directory: CustomerDirectorySnapshot
    views: list[MaterializedView] = field(default_factory=list)
    # the list's rows, kept between requests (GET /v1/health and the overview only filter them)
    list_rows: ListRows = field(default_factory=ListRows)
    loop: AtLeastOnceLoop | None = None
    erasures: ErasureFollower | None = None
    workers: Workers | None = None


# 503 with Retry-After until the lifespan has opened them (services/kernel/http.py)
resources = resources_dependency(HealthResources, "the health-score service is starting or stopping")


Resources = Annotated[HealthResources, Depends(resources)]


class FactorOut(BaseModel):
    name: str
    component: str
    value: float
    points: float
    max_points: float
    change: float
    detail: str


class HistoryPoint(BaseModel):
    day: str
    score: int
    band: str | None


class HealthOut(BaseModel):
    """A customer's health: score 0-100, band, components, trend against the previous period,
    explanation (contributions in points, every factor, the top ones) and daily history."""

    customer_id: str
    score: int
    band: str | None
    segment: str | None
    plan: str | None
    components: dict[str, float]
    churn_risk: float | None
    trend: dict[str, Any]
    explanation: dict[str, Any]
    history: list[HistoryPoint]
    active_users: int | None
    seats: int | None
    computed_at: int
    path: str | None
    config_version: int | None


class SummaryOut(BaseModel):
    customer_id: str
    name: str | None
    score: int
    band: str | None
    segment: str | None
    plan: str | None = Field(description="the customer's plan now (customers table)")
    csm_owner: str | None
    billing_status: str | None
    suspended: bool
    mrr: str = Field(description="monthly recurring revenue: the base price of its price version, decimal")
    trend: int
    trend_direction: str | None
    churn_risk: float | None
    computed_at: int
    sparkline: list[int]


class BandRevenueOut(BaseModel):
    customers: int
    mrr: str = Field(description="their monthly recurring revenue, decimal")


class ListOut(BaseModel):
    customers: list[SummaryOut]
    total: int
    currency: str
    revenue_at_risk: dict[str, BandRevenueOut] = Field(
        description="per band (red, yellow, green): the listed customers and their recurring revenue"
    )


class ErrorOut(BaseModel):
    code: str
    message: str
    request_id: str


# The CS dashboard, its list API and its live stream show every customer: operators only (a token, or the
# browser session of a signed-in operator). Pages send a browser without a session to the login page.
CS_VIEWER: Any = Depends(auth.operator(auth.Role.viewer))
CS_PAGE: Any = Depends(login.operator_page(auth.Role.viewer))
Page = Annotated[PageCaller, CS_PAGE]  # first in a page's parameters: the policy decides before anything
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown customer (no score yet)"}
}

router = APIRouter()

# The list only filters rows the cache keeps (0.2 ms for 500 customers, model level) and the customers
# table is re-read in the background (CustomerDirectorySnapshot), so up to this many scored customers it
# is answered on the event loop: the hop to a worker thread and back cost more than the work under load
# (two GIL hand-offs; p99 5.1 -> 4.1 ms in bench-health with the scorer at 5,000 events/s). Longer lists
# go to a worker thread so that one large list never holds up every other request.
INLINE_LIST_CUSTOMERS = 2_000


@router.get(
    "/v1/health",
    response_model=None,
    responses={200: {"model": ListOut}, 422: {"model": ErrorOut, "description": "Invalid parameter"}},
    summary="Customers by risk",
    dependencies=[CS_VIEWER],
)
async def list_health(
    res: Resources,
    band: Literal["red", "yellow", "green"] | None = None,
    segment: str | None = Query(default=None, max_length=100),
    q: str | None = Query(default=None, max_length=200, description="part of the customer's id or name"),
    plan: str | None = Query(default=None, max_length=100),
    csm: str | None = Query(default=None, max_length=200, description="the CSM's name; none: unowned"),
    suspended: bool | None = Query(default=None, description="only (un)suspended customers"),
    limit: int = Query(default=100, ge=1, le=10_000),
) -> Response:
    """Every scored customer, riskiest first (lowest score, then falling fastest), searched and filtered,
    with the recurring revenue per band among those listed (the money at risk)."""
    filters = Filters(q or None, band, plan or None, csm or None, suspended, segment or None)
    if len(res.cache.summaries) <= INLINE_LIST_CUSTOMERS:
        answer = _customer_list(res, filters)
    else:
        answer = await run_in_threadpool(_customer_list, res, filters)
    answer["customers"] = answer["customers"][:limit]
    return Response(orjson.dumps(answer), media_type=_JSON)


def _customer_list(res: HealthResources, filters: Filters) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    return customer_list(res.cache.ranked(), res.directory.get(), res.plans, filters, today, res.list_rows)


@router.get(
    "/v1/health/stream",
    response_model=None,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-sent events: score, event, alert",
        }
    },
    summary="Live updates (SSE)",
    dependencies=[CS_VIEWER],
)
async def stream(
    request: Request, res: Resources, customer: str | None = Query(default=None, max_length=200)
) -> Response:
    """``score`` events for every customer (or only ``customer``), plus that customer's ``event``
    (recent enriched events) and ``alert`` events. A comment every 15 s keeps proxies from closing it."""
    slot = res.sse_limits.acquire(request)  # 503 beyond the per-credential and overall limits
    hub = res.hub
    sub_id, queue = hub.subscribe(customer)
    return event_stream(
        request,
        queue,
        slot=slot,
        close=lambda: hub.unsubscribe(sub_id),
        first=b": connected\n\n",
        render=lambda item: sse_event(item[0], orjson.dumps(item[1])),
        heartbeat=15,
    )


@router.get(
    "/v1/health/{customer_id}",
    response_model=None,
    responses={200: {"model": HealthOut}, **ERRORS, **auth.responses()},
    summary="One customer's health",
    dependencies=[Depends(auth.secret_key())],  # the customer's own backend, or an operator
)
async def get_health(customer_id: str, res: Resources) -> Response:
    """Score, band, components, trend, explanation and daily history, from the serving cache."""
    cache = res.cache
    record = cache.latest.get(customer_id)
    if record is None:
        raise HttpError(404, "customer_not_found", f"no health score for customer {customer_id!r}")
    return Response(orjson.dumps(detail(record, cache.history.get(customer_id, []))), media_type=_JSON)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def overview(
    caller: Page,
    res: Resources,
    q: str | None = Query(default=None, max_length=200),
    band: Literal["red", "yellow", "green", ""] | None = None,
    plan: str | None = Query(default=None, max_length=100),
    csm: str | None = Query(default=None, max_length=200),
    suspended: Literal["yes", "no", ""] | None = None,
) -> HTMLResponse:
    filters = Filters(
        q or None, band or None, plan or None, csm or None, {"yes": True, "no": False}.get(suspended or "")
    )
    # The abuse guard's suspended and suspected customers (PostgreSQL, a small indexed read per view).
    abuse = await run_in_threadpool(_abuse_rows, res.pool)
    listed = await run_in_threadpool(_customer_list, res, filters)
    return HTMLResponse(
        dashboard.overview(
            listed,
            who=caller.header(),
            abuse=abuse,
            filters=filters,
            plans=[p.slug for p in res.plans.plans],
        )
    )


@router.get("/customers/{customer_id}", response_class=HTMLResponse, include_in_schema=False)
async def customer_page(customer_id: str, caller: Page, res: Resources) -> HTMLResponse:
    cache = res.cache
    record = cache.latest.get(customer_id)
    return HTMLResponse(
        dashboard.customer_page(
            record,
            customer_id,
            cache.history.get(customer_id, []),
            list(cache.events.get(customer_id, [])),
            list(cache.alerts.get(customer_id, [])),
            list(cache.plan_usage.get(customer_id, {}).values()),
            who=caller.header(),
        )
    )


def _abuse_rows(pool: Any) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return suspension.abuse_overview(conn)
