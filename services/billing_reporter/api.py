"""The billing reporter's invoice routes: ``GET /v1/invoices/{customer}/upcoming`` (the running invoice) and
``GET /v1/invoices/{customer}/preview`` (the invoice on another plan), each with its policy; the running
service (:class:`BillingResources`, opened by the app's lifespan) comes in as a dependency. Checkout and
subscriptions (``subscriptions.py``), top-ups (``topups.py``), Stripe webhooks and the public price list
(``pricelist.py``) have their own modules.
"""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.billing_reporter import accounts, openapi, previews
from services.billing_reporter.resources import Resources, error
from services.kernel import auth
from services.plans.invoice import Invoice

_JSON = "application/json"


router = APIRouter()


@router.get(
    "/v1/invoices/{customer_id}/upcoming",
    responses={**openapi.UPCOMING_INVOICE, **auth.responses()},
    dependencies=[Depends(auth.secret_key())],  # the customer's backend, or an operator
)
async def upcoming_invoice(customer_id: str, res: Resources) -> Response:
    """The running invoice of the customer's current period, from the usage consumed so far."""
    found = await run_in_threadpool(
        accounts.upcoming_invoice,
        res.pool,
        res.ledger.ledger,
        res.config,
        customer_id,
        int(time.time() * 1000),
    )
    if found is None:
        return error(404, "customer_not_found", f"customer {customer_id!r} does not exist")
    if isinstance(found, str):
        return error(409, "plan_not_configured", found)
    return Response(orjson.dumps(found.to_dict()), media_type=_JSON)


@router.get(
    "/v1/invoices/{customer_id}/preview",
    responses=openapi.PREVIEW_INVOICE,
    # The customer's own backend (secret key) or an operator; never a browser's publishable key.
    dependencies=[Depends(auth.secret_key())],
)
async def preview_invoice(
    customer_id: str, plan: str, res: Resources, version: str | None = None, period: str | None = None
) -> Response:
    """The customer's invoice for the current period (or the one starting in ``period``, YYYY-MM) if
    they were on ``plan`` (price ``version``): their real usage, the same calculator, exact decimals."""

    def run() -> Invoice | None:
        with res.pool.connection() as conn:
            who = previews.account(conn, customer_id)
            if who is None:
                return None
            return previews.preview(
                conn, res.ledger.ledger, res.config, who, plan, version, period, int(time.time() * 1000)
            )

    try:
        found = await run_in_threadpool(run)
    except previews.PreviewError as exc:
        return error(400, exc.code, str(exc))
    if found is None:
        return error(404, "customer_not_found", f"customer {customer_id!r} does not exist")
    return Response(orjson.dumps(found.to_dict()), media_type=_JSON)
