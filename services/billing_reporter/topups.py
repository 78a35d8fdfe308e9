"""Top-ups: a customer buys packs of a meter's units (``top_ups`` in the price book) through a Checkout
Session in payment mode; when Stripe says it is paid, a credit grant is written (``billing_credit_grants``,
the session id as its key, so a redelivered event grants once) and the customer's row is touched, whose
change notification makes the entitlement API re-read the customer's grants at once.

``POST /v1/checkout/{customer}/top-up`` with ``{"meter": "api_requests", "quantity": 2}`` (packs;
``"pack"`` names one when a meter has several).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
import psycopg
import stripe
from fastapi import APIRouter, Depends
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.billing_reporter.accounts import get_account
from services.billing_reporter.catalog import package_meter, version_prices
from services.billing_reporter.config import BillingSettings
from services.billing_reporter.resources import Resources, error
from services.billing_reporter.stripe_gateway import StripeGateway
from services.billing_reporter.subscriptions import WebhookResult, minor_units, record_session
from services.customers import store as customers
from services.kernel import auth
from services.plans.grants import credit_value
from services.plans.model import CURRENCY_MINOR_UNITS, PlansConfig, TopUp
from services.plans.periods import billing_period

log = logging.getLogger(__name__)

MAX_PACKS = 1000
TOP_UP_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "`{url, session_id, pack, meter, units}`: send the customer to `url`."},
    400: {"description": "`invalid_json`, `invalid_body`, `unknown_top_up` (no pack for that meter)."},
    401: {"description": "No credential: the customer's secret key (or an operator) is needed."},
    403: {"description": "Another customer's key, or a publishable key."},
    404: {"description": "`customer_not_found`."},
    502: {"description": "`stripe_unavailable`: Stripe did not create the session; retry."},
}


def top_up_params(
    config: PlansConfig, pack: TopUp, quantity: int, customer_id: str, stripe_customer_id: str | None,
    settings: BillingSettings,
) -> dict[str, Any]:  # fmt: skip
    currency = pack.currency or config.currency
    metadata = {
        "plg_kind": "top_up", "plg_customer_id": customer_id, "plg_pack": pack.slug, "plg_meter": pack.meter,
        "plg_units": str(pack.units * quantity),
    }  # fmt: skip
    params: dict[str, Any] = {
        "mode": "payment",
        "client_reference_id": customer_id,
        "metadata": metadata,
        "line_items": [
            {
                "quantity": quantity,
                "price_data": {
                    "currency": currency.lower(),
                    "unit_amount": minor_units(pack.price, CURRENCY_MINOR_UNITS.get(currency, 2)),
                    "product_data": {"name": f"{pack.units} {pack.meter} ({pack.slug})"},
                },
            }
        ],
        "success_url": settings.checkout_success_url,
        "cancel_url": settings.checkout_cancel_url,
    }
    if stripe_customer_id:
        params["customer"] = stripe_customer_id
    return params


def apply_top_up(
    conn: psycopg.Connection[Any], obj: dict[str, Any], config: PlansConfig, now: datetime
) -> WebhookResult:
    """A paid top-up session becomes a grant, once; only sessions plg created grant anything."""
    session_id = str(obj.get("id") or "")
    meta = obj.get("metadata") or {}
    row = conn.execute(
        "SELECT customer_id, plan FROM billing_stripe_sessions WHERE session_id = %s AND kind = 'top_up'",
        (session_id,),
    ).fetchone()
    if row is None or row[0] != obj.get("client_reference_id") or row[1] != meta.get("plg_pack"):
        log.warning("refused a top-up session plg did not create: %s", session_id)
        return WebhookResult("ignored", "not a top-up session plg created")
    customer_id, slug = row
    pack = next((t for t in config.top_ups if t.slug == slug), None)
    if pack is None:
        return WebhookResult("ignored", f"the price book no longer has top-up {slug!r}")
    currency = pack.currency or config.currency
    amount = Decimal(int(obj.get("amount_total") or 0)).scaleb(-CURRENCY_MINOR_UNITS.get(currency, 2))
    expires = None if pack.expires_after_days is None else now + timedelta(days=pack.expires_after_days)
    inserted = conn.execute(
        "INSERT INTO billing_credit_grants (grant_id, customer_id, meter, units, amount, currency, pack,"
        " granted_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (grant_id) DO NOTHING RETURNING 1",
        (session_id, customer_id, pack.meter, Decimal(str(meta.get("plg_units"))), amount, currency,
         slug, now, expires),
    ).fetchone()  # fmt: skip
    if inserted is None:
        return WebhookResult("duplicate", f"{session_id} granted already")
    # The customers trigger notifies plg_customer_changed: the entitlement API re-reads the grants now.
    customers.notify_changed(conn, customer_id)
    return WebhookResult("applied", f"{customer_id}: +{meta.get('plg_units')} {pack.meter}")


router = APIRouter()


@router.post(
    "/v1/checkout/{customer_id}/top-up",
    responses=TOP_UP_RESPONSES,
    # The customer's backend buys for the customer (secret key), or an operator on their behalf.
    dependencies=[Depends(auth.secret_key())],
)
async def top_up(customer_id: str, request: Request, res: Resources) -> Response:
    """A Checkout Session (payment) for ``quantity`` packs of ``meter``'s units."""
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, RecursionError):
        return error(
            400, "invalid_json", 'the body must be JSON, e.g. {"meter": "api_requests", "quantity": 1}'
        )
    if not isinstance(body, dict) or not isinstance(body.get("meter"), str):
        return error(400, "invalid_body", "the body needs meter (a string) and quantity (packs)")
    quantity = body.get("quantity", 1)
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= MAX_PACKS:
        return error(400, "invalid_body", f"quantity is a whole number of packs, 1 to {MAX_PACKS}")
    slug = body.get("pack")
    if slug is not None and not isinstance(slug, str):
        return error(400, "invalid_body", "pack is a string")
    pack = res.config.top_up(body["meter"], slug)
    if pack is None:
        known = ", ".join(f"{t.slug} ({t.meter})" for t in res.config.top_ups) or "none"
        return error(400, "unknown_top_up", f"no top-up pack for {body['meter']!r}; known: {known}")
    account = await run_in_threadpool(get_account, res.pool, customer_id)
    if account is None:
        return error(404, "customer_not_found", f"customer {customer_id!r} does not exist")
    params = top_up_params(res.config, pack, quantity, customer_id, account.stripe_customer_id, res.settings)
    # The same purchase twice within ten minutes gets the same session.
    bucket = int(time.time() // 600)
    raw = f"{customer_id}\x1f{pack.slug}\x1f{quantity}\x1f{bucket}"
    key = "topup_" + hashlib.sha256(raw.encode()).hexdigest()[:40]
    try:
        session = await run_in_threadpool(res.gateway.create_checkout_session, params, key)
    except stripe.StripeError as exc:
        log.warning("top-up session failed: %s", exc.user_message or type(exc).__name__)
        return error(
            502,
            "stripe_unavailable",
            "Stripe did not create the session; try again",
            {"Retry-After": "5"},
        )
    await run_in_threadpool(
        record_session, res.pool, str(session.get("id")), customer_id, pack.slug, None, "top_up"
    )
    return Response(
        orjson.dumps(
            {"url": session.get("url"), "session_id": session.get("id"), "pack": pack.slug,
             "meter": pack.meter, "units": str(pack.units * quantity), "customer_id": customer_id}
        ),
        media_type="application/json",
    )  # fmt: skip


class GrantMirror:
    """Mirrors each paid top-up at Stripe once: a billing credit grant scoped to the meter's metered price
    in the customer's price version, worth what the units cost there (``credit_value``), in effect from the
    purchase until a day after the period it counts in (plg's invoice counts a grant for the whole period
    it was bought in; the day lets Stripe's invoice of that period, written as it ends, use it). Stripe then
    takes the credit off that meter's line before charging, as plg's invoice uses the units first."""

    def __init__(self, pool: ConnectionPool, config: PlansConfig, gateway: StripeGateway) -> None:
        self.pool = pool
        self.config = config
        self.gateway = gateway

    def send_pending(self) -> int:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT g.grant_id, g.customer_id, g.meter, g.units, g.pack,"
                " (extract(epoch FROM g.granted_at) * 1000)::bigint, c.stripe_customer_id, c.plan,"
                " c.price_version, c.billing_anchor_day FROM billing_credit_grants g"
                " JOIN customers c ON c.customer_id = g.customer_id"
                " WHERE g.stripe_status = 'pending' ORDER BY g.granted_at LIMIT 200"
            ).fetchall()
        sent = 0
        for (
            grant_id,
            customer_id,
            meter,
            units,
            pack,
            granted_ms,
            stripe_customer,
            plan,
            pinned,
            anchor,
        ) in rows:
            try:
                outcome = self._send(
                    str(grant_id), str(customer_id), str(meter), Decimal(units), str(pack), int(granted_ms),
                    stripe_customer, str(plan), pinned, int(anchor),
                )  # fmt: skip
            except stripe.StripeError as exc:
                log.warning("top-up %s not at Stripe yet: %s", grant_id, exc.user_message or exc)
                self._record(str(grant_id), "pending", None, None, str(exc.user_message or exc)[:1000])
                continue
            sent += outcome == "sent"
        return sent

    def _send(
        self, grant_id: str, customer_id: str, meter: str, units: Decimal, pack: str, granted_ms: int,
        stripe_customer: str | None, plan: str, pinned: str | None, anchor: int,
    ) -> str:  # fmt: skip
        if not stripe_customer:
            return self._record(grant_id, "not_at_stripe", None, None, "no Stripe customer")
        period = billing_period(granted_ms, anchor)
        price = self.config.price_for(plan, period.start.date(), pinned)
        mp = None if price is None else price.meters.get(meter)
        if price is None or mp is None or not mp.priced:
            return self._record(grant_id, "not_at_stripe", None, None, f"{plan} does not price {meter}")
        derived = package_meter(meter, mp)
        account = self.gateway.account()
        with self.pool.connection() as conn:
            price_id = version_prices(conn, price.version, account).get(derived[0] if derived else meter)
        if price_id is None:
            return self._record(grant_id, "not_at_stripe", None, None, f"no Stripe price for {meter}")
        value, exact = credit_value(mp, units)
        minor = value.scaleb(price.minor_unit)
        if minor != minor.to_integral_value():
            exact = False
        amount = int(minor.to_integral_value(rounding=ROUND_HALF_UP))
        if amount <= 0:
            return self._record(grant_id, "not_at_stripe", None, None, "worth nothing at Stripe")
        grant = self.gateway.create_credit_grant(
            {
                "customer": stripe_customer,
                "name": f"plg top-up {pack}: {units.normalize():f} {meter}",
                "category": "paid",
                "amount": {
                    "type": "monetary", "monetary": {"currency": price.currency.lower(), "value": amount}
                },
                "applicability_config": {"scope": {"prices": [{"id": price_id}]}},
                "effective_at": granted_ms // 1000,
                "expires_at": period.end_ms // 1000 + 86_400,
                "metadata": {"plg_grant_id": grant_id, "plg_customer_id": customer_id, "plg_meter": meter,
                             "plg_units": f"{units.normalize():f}", "plg_exact": str(exact).lower()},
            },
            idempotency_key="plg_grant_" + hashlib.sha256(grant_id.encode()).hexdigest()[:40],
        )  # fmt: skip
        if not exact:
            log.warning(
                "top-up %s: %s's price is not linear, Stripe's credit approximates it", grant_id, meter
            )
        return self._record(
            grant_id, "sent", str(grant["id"]), Decimal(amount).scaleb(-price.minor_unit), None
        )

    def _record(
        self, grant_id: str, status: str, stripe_id: str | None, value: Decimal | None, error: str | None
    ) -> str:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE billing_credit_grants SET stripe_status = %s, stripe_credit_grant_id = %s,"
                " stripe_value = %s, stripe_error = %s WHERE grant_id = %s",
                (status, stripe_id, value, error, grant_id),
            )
        return status
