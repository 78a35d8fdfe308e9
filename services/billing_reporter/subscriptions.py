"""Subscriptions and upgrades: Checkout sessions, Stripe webhooks and the grace-period state machine.

State per customer (``subscriptions``): the plan paid for and its status —
``active`` (the plan applies), ``past_due`` (a payment failed: the plan still applies until
``grace_until``, then the customer drops to the free plan until paid), ``canceled`` (free). The plan a
customer *has* is ``customers.plan``, what metering and entitlements read; every change of it is also a
``customer_changes`` row and, through the customers trigger, a ``plg_customer_changed`` notification the
entitlement view follows within a second (not at a cache's TTL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson
import psycopg
import stripe
from fastapi import APIRouter, Depends
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.billing_reporter import openapi, taxes
from services.billing_reporter.accounts import get_account
from services.billing_reporter.catalog import CatalogError, mixed_intervals, recurring, version_prices
from services.billing_reporter.config import BillingSettings
from services.billing_reporter.resources import Resources, error
from services.customers import store as customers
from services.customers import windows
from services.kernel import auth, metrics
from services.plans.model import PlansConfig
from services.plans.periods import billing_period

log = logging.getLogger(__name__)

WEBHOOKS = metrics.counter(
    "plg_billing_webhooks", "Stripe webhooks received, by type and result.", ("type", "result")
)
Status = Literal["active", "past_due", "canceled"]
HANDLED = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)


# -- the state machine (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    customer_id: str
    plan: str
    status: Status
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    past_due_since: datetime | None = None
    grace_until: datetime | None = None


def effective_plan(sub: Subscription | None, now: datetime, free_plan: str) -> str | None:
    """The plan the customer has now (None: no subscription, leave ``customers.plan`` alone)."""
    if sub is None:
        return None
    if sub.status == "active":
        return sub.plan
    if sub.status == "past_due" and sub.grace_until is not None and now < sub.grace_until:
        return sub.plan  # grace: access stays while the customer fixes their payment
    return free_plan


_STRIPE_STATUS: dict[str, Status] = {
    "active": "active",
    "trialing": "active",
    "past_due": "past_due",
    "unpaid": "past_due",
    "incomplete": "past_due",
    "canceled": "canceled",
    "incomplete_expired": "canceled",
}


def transition(
    sub: Subscription, status: Status, now: datetime, grace: timedelta, **changes: Any
) -> Subscription:
    """``sub`` moved to ``status``: a first move to past_due starts the grace, leaving it clears it."""
    fields: dict[str, Any] = {
        "customer_id": sub.customer_id,
        "plan": sub.plan,
        "status": status,
        "stripe_customer_id": sub.stripe_customer_id,
        "stripe_subscription_id": sub.stripe_subscription_id,
        "past_due_since": sub.past_due_since,
        "grace_until": sub.grace_until,
    }
    fields.update({k: v for k, v in changes.items() if v is not None})
    if status == "past_due":
        if sub.status != "past_due" or sub.past_due_since is None:
            fields["past_due_since"], fields["grace_until"] = now, now + grace
    else:
        fields["past_due_since"] = fields["grace_until"] = None
    return Subscription(**fields)


# -- Postgres ------------------------------------------------------------------------------------------------


def _period_start(conn: psycopg.Connection[Any], customer_id: str, now: datetime) -> int:
    """The start (epoch ms) of the customer's monthly plg period containing ``now``."""
    row = conn.execute(
        "SELECT billing_anchor_day FROM customers WHERE customer_id = %s", (customer_id,)
    ).fetchone()
    return billing_period(int(now.timestamp() * 1000), int(row[0]) if row else 1).start_ms


_SUB_COLUMNS = (
    "customer_id, plan, status, stripe_customer_id, stripe_subscription_id, past_due_since, grace_until"
)


def _load(conn: psycopg.Connection[Any], where: str, value: str) -> Subscription | None:
    row = conn.execute(
        f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE {where} = %s FOR UPDATE", (value,)
    ).fetchone()
    return None if row is None else Subscription(*row)


def _save(
    conn: psycopg.Connection[Any], sub: Subscription, free_plan: str, reason: str, now: datetime,
    price_version: str | None = None, at: datetime | None = None,
) -> None:  # fmt: skip
    conn.execute(
        f"INSERT INTO subscriptions ({_SUB_COLUMNS}, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
        " ON CONFLICT (customer_id) DO UPDATE SET plan = EXCLUDED.plan, status = EXCLUDED.status,"
        " stripe_customer_id = EXCLUDED.stripe_customer_id, stripe_subscription_id ="
        " EXCLUDED.stripe_subscription_id,"
        " past_due_since = EXCLUDED.past_due_since, grace_until = EXCLUDED.grace_until, updated_at = now()",
        (sub.customer_id, sub.plan, sub.status, sub.stripe_customer_id, sub.stripe_subscription_id,
         sub.past_due_since, sub.grace_until),
    )  # fmt: skip
    plan = effective_plan(sub, now, free_plan)
    apply_plan(conn, sub.customer_id, plan, reason, sub.status, sub.stripe_customer_id, price_version, at=at)


def apply_plan(
    conn: psycopg.Connection[Any], customer_id: str, plan: str | None, reason: str, status: Status,
    stripe_customer_id: str | None = None, price_version: str | None = None, at: datetime | None = None,
) -> bool:  # fmt: skip
    """Set the customer's plan and billing status; record the change if the plan changed, with the terms
    it ends (plan, pinned price version, cycle month) and ``at``: when it took effect at Stripe (None: now,
    the database's clock). The period closer prices an ended period on the terms in force at its end from
    that record (:func:`services.billing_reporter.accounts.terms_at`), not on the plan at closing time."""
    if plan is None:
        return False
    row = conn.execute(
        f"SELECT plan, billing_anchor_day, price_version, {windows.CYCLE_MONTH_SQL} FROM customers"
        " WHERE customer_id = %s FOR UPDATE",
        (customer_id,),
    ).fetchone()
    if row is None:
        return False
    old_plan, anchor_day, old_version, old_cycle = row
    # Grandfathering: a pin holds only while the customer stays on its plan; a new plan pins anew.
    customers.set_plan(
        conn, customer_id, plan=plan, billing_status=status, stripe_customer_id=stripe_customer_id,
        price_version=price_version, keep_price_version=old_plan == plan,
    )  # fmt: skip
    if old_plan == plan:
        return False
    conn.execute(
        "INSERT INTO customer_changes (customer_id, plan, reason, effective_at, from_plan,"
        " from_price_version, from_cycle_month) VALUES (%s, %s, %s, COALESCE(%s, now()), %s, %s, %s)",
        (customer_id, plan, reason, at, old_plan, old_version, old_cycle),
    )
    # A new plan starts a new billing cycle at the current month (billed on the plan at its end): an
    # upgrade from monthly to annual makes this month the first of the year (docs/billing.md "Billing
    # windows"); for a monthly price the cycle month changes nothing.
    windows.start_cycle(conn, customer_id, anchor_day, int(time.time() * 1000))
    log.info(
        "plan changed", extra={"customer_id": customer_id, "plan": plan, "from": old_plan, "reason": reason}
    )
    return True


@dataclass(frozen=True, slots=True)
class WebhookResult:
    # retry: not recorded; answered with a non-2xx so that Stripe delivers the event again later (its
    # customer or subscription is not known yet: the event that introduces it is still on its way).
    status: Literal["applied", "duplicate", "ignored", "stale", "retry"]
    detail: str = ""
    # A customer whose new Stripe subscription this event began (its usage so far must reach Stripe).
    subscribed: str | None = None


class _RetryLater(Exception):
    """Raised inside the event's transaction so that nothing of it (not even its id) is recorded."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _ordering_key(event_type: str, obj: dict[str, Any]) -> str | None:
    """The Stripe object whose state an event changes: the subscription for subscription and invoice
    events (an invoice's payment moves its subscription's state), the session for checkout events."""
    if event_type.startswith("customer.subscription."):
        return str(obj["id"]) if obj.get("id") else None
    if event_type.startswith("invoice."):
        return _invoice_subscription(obj)
    if event_type.startswith("checkout.session."):
        return str(obj["id"]) if obj.get("id") else None
    return None


class SubscriptionStore:
    """Applies Stripe's events to the subscription state, **in Stripe's order, not arrival order**: the
    newest ``created`` applied per Stripe object is kept (``stripe_object_versions``) and an older event
    is acknowledged as ``stale`` without effect; a canceled subscription is never revived; an event
    whose customer or subscription plg does not know yet is not recorded and answered so that Stripe
    retries it; a checkout completes an upgrade only when paid, and a plan sold by contract only from a
    session (or plan change) plg created itself."""

    def __init__(
        self, pool: ConnectionPool, config: PlansConfig, grace: timedelta, free_plan: str,
        on_subscribed: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.config = config
        self.grace = grace
        self.free_plan = free_plan
        # Called once a new subscription's event has committed: the ledger looks at the customer's windows
        # again (those planned while it had no Stripe customer were left out), so its usage reaches Stripe.
        self.on_subscribed = on_subscribed

    def handle(self, event: dict[str, Any], now: datetime | None = None) -> WebhookResult:
        """Apply one verified Stripe event, at most once by its id (the id and the effect commit together)."""
        now = now or datetime.now(UTC)
        try:
            with self.pool.connection() as conn, conn.transaction():
                result = self._handle(conn, event, now)
        except _RetryLater as retry:
            return WebhookResult("retry", retry.detail)
        if result.subscribed and self.on_subscribed is not None:
            self.on_subscribed(result.subscribed)
        return result

    def _handle(self, conn: psycopg.Connection[Any], event: dict[str, Any], now: datetime) -> WebhookResult:
        first = conn.execute(
            "INSERT INTO stripe_webhook_events (event_id, type) VALUES (%s, %s) ON CONFLICT DO NOTHING"
            " RETURNING 1",
            (event["id"], event["type"]),
        ).fetchone()
        if first is None:
            return WebhookResult("duplicate")
        if event["type"] not in HANDLED:
            return WebhookResult("ignored", f"{event['type']} is not an event plg acts on")
        obj = event["data"]["object"]
        key = _ordering_key(event["type"], obj)
        created = event.get("created")
        if key is not None and isinstance(created, int) and not isinstance(created, bool):
            newer = conn.execute(
                "SELECT created, event_id FROM stripe_object_versions WHERE object_id = %s FOR UPDATE", (key,)
            ).fetchone()
            if newer is not None and newer[0] > created:
                return WebhookResult("stale", f"{key}: {newer[1]} (created {newer[0]}) was applied already")
        # When the change happened at Stripe (the event's creation), not when its delivery arrived: a plan
        # change made before a period's end but delivered after it still bills that period on the new plan.
        at = _timestamp(created, now)
        apply: Callable[[psycopg.Connection[Any], dict[str, Any], datetime, datetime], WebhookResult]
        apply = getattr(self, "_" + event["type"].replace(".", "_"))
        result = apply(conn, obj, now, at)
        if result.status == "applied" and key is not None and isinstance(created, int):
            conn.execute(
                "INSERT INTO stripe_object_versions (object_id, created, event_id) VALUES (%s, %s, %s)"
                " ON CONFLICT (object_id) DO UPDATE SET created = EXCLUDED.created,"
                " event_id = EXCLUDED.event_id, applied_at = now()",
                (key, created, event["id"]),
            )
        return result

    def _started_by_plg(
        self, conn: psycopg.Connection[Any], customer_id: str, plan: str, ref: str | None
    ) -> bool:
        """Did plg create this session (``ref``), or a session or plan change to ``plan`` for the customer?"""
        if ref is not None:
            row = conn.execute(
                "SELECT 1 FROM billing_stripe_sessions WHERE session_id = %s AND customer_id = %s"
                " AND plan = %s",
                (ref, customer_id, plan),
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT 1 FROM billing_stripe_sessions WHERE customer_id = %s AND plan = %s",
                (customer_id, plan),
            ).fetchone()
        return row is not None

    def _checkout_session_completed(
        self, conn: psycopg.Connection[Any], obj: dict[str, Any], now: datetime, at: datetime
    ) -> WebhookResult:
        if obj.get("payment_status") not in ("paid", "no_payment_required"):
            # An asynchronous payment method (bank debit): the money is not there yet; the upgrade waits
            # for checkout.session.async_payment_succeeded.
            return WebhookResult(
                "ignored", f"payment_status {obj.get('payment_status')!r}: waiting for payment"
            )
        return self._complete_checkout(conn, obj, now, at)

    def _checkout_session_async_payment_succeeded(
        self, conn: psycopg.Connection[Any], obj: dict[str, Any], now: datetime, at: datetime
    ) -> WebhookResult:
        return self._complete_checkout(conn, obj, now, at)

    def _complete_checkout(
        self, conn: psycopg.Connection[Any], obj: dict[str, Any], now: datetime, at: datetime
    ) -> WebhookResult:
        if (obj.get("metadata") or {}).get("plg_kind") == "top_up":
            from services.billing_reporter.topups import apply_top_up  # topups builds on this module

            return apply_top_up(conn, obj, self.config, now)
        customer_id = obj.get("client_reference_id")
        plan = (obj.get("metadata") or {}).get("plg_plan")
        if not customer_id or not plan:
            return WebhookResult("ignored", "session without client_reference_id or metadata[plg_plan]")
        target = self.config.plan(plan)
        if target is None:
            return WebhookResult("ignored", f"unknown plan {plan!r}")
        exists = conn.execute(
            "SELECT 1 FROM customers WHERE customer_id = %s FOR UPDATE", (customer_id,)
        ).fetchone()
        if exists is None:
            raise _RetryLater(f"unknown customer {customer_id!r} (not created yet?)")
        if target.custom_contract and not self._started_by_plg(conn, customer_id, plan, obj.get("id")):
            log.warning("refused a checkout session plg did not create for contract plan %s", plan)
            return WebhookResult(
                "ignored", f"plan {plan!r} is sold by contract: not from a session plg created"
            )
        sub = Subscription(customer_id, plan, "active", obj.get("customer"), obj.get("subscription"))
        before = _load(conn, "customer_id", customer_id)
        # Grandfathering starts here: the customer is pinned to the price version in effect today.
        price = self.config.price_for(plan, now.date())
        version = None if price is None else price.version
        _save(conn, sub, self.free_plan, "checkout completed", now, version, at)
        if before is None or before.stripe_subscription_id != sub.stripe_subscription_id:
            # A new subscription: Stripe bills usage from now on, plg the whole period it began in. The
            # ledger dates that period's earlier windows here (planning.event_time). The database's clock,
            # like the reports' created_at it is compared with (ledger._SUPERSEDED_LEVEL: a level planned
            # before the start was dated before it), so a clock skew between the reporter and the database
            # cannot count a level dated before the start as the new subscription's.
            conn.execute(
                "UPDATE subscriptions SET started_at = now(), usage_from = %s WHERE customer_id = %s",
                (_period_start(conn, customer_id, now), customer_id),
            )
            return WebhookResult("applied", f"{customer_id} -> {plan}", subscribed=customer_id)
        return WebhookResult("applied", f"{customer_id} -> {plan}")

    def _find(
        self, conn: psycopg.Connection[Any], obj: dict[str, Any], subscription_id: str | None
    ) -> Subscription:
        """The plg subscription an event is about; not known yet → Stripe is asked to retry."""
        if subscription_id:
            found = _load(conn, "stripe_subscription_id", subscription_id)
            if found is not None:
                return found
        customer_id = (obj.get("metadata") or {}).get("plg_customer_id")
        sub = None
        if customer_id:
            sub = _load(conn, "customer_id", customer_id)
        elif obj.get("customer"):
            sub = _load(conn, "stripe_customer_id", obj["customer"])
        if sub is None:
            raise _RetryLater(f"no plg subscription for {subscription_id or obj.get('customer')!r} yet")
        return sub

    def _customer_subscription_updated(
        self, conn: psycopg.Connection[Any], obj: dict[str, Any], now: datetime, at: datetime
    ) -> WebhookResult:
        sub = self._find(conn, obj, obj.get("id"))
        if sub.status == "canceled" and sub.stripe_subscription_id == obj.get("id"):
            return WebhookResult(
                "stale", f"{obj.get('id')} was canceled: a canceled subscription stays canceled"
            )
        status = _STRIPE_STATUS.get(str(obj.get("status")), sub.status)
        plan = (obj.get("metadata") or {}).get("plg_plan")
        target = None if plan is None else self.config.plan(plan)
        if target is None:
            plan = None
        elif (
            target.custom_contract
            and plan != sub.plan
            and not self._started_by_plg(conn, sub.customer_id, str(plan), None)
        ):
            log.warning("refused a subscription update to contract plan %s plg did not start", plan)
            plan = None
        new = transition(sub, status, now, self.grace, plan=plan, stripe_subscription_id=obj.get("id"))
        _save(conn, new, self.free_plan, f"subscription {status}", now, at=at)
        return WebhookResult("applied", f"{sub.customer_id}: {status}")

    def _customer_subscription_deleted(
        self, conn: psycopg.Connection[Any], obj: dict[str, Any], now: datetime, at: datetime
    ) -> WebhookResult:
        sub = self._find(conn, obj, obj.get("id"))
        if sub.stripe_subscription_id not in (None, obj.get("id")):
            return WebhookResult("ignored", f"{obj.get('id')} is not the customer's current subscription")
        # From when no subscription covers the customer's usage: Stripe's own end (a cancel at the period's
        # end ends then; one at once, now), not when this event arrived (Stripe retries for days). Windows
        # from then on are held by the ledger until a subscription covers them (ledger._covered); the plan
        # change to free takes effect then too (a cancel at the period's end: that period stays paid).
        ended = _ended_at(obj, now)
        canceled = transition(sub, "canceled", now, self.grace)
        _save(conn, canceled, self.free_plan, "subscription canceled", now, at=ended)
        conn.execute(
            "UPDATE subscriptions SET canceled_at = %s WHERE customer_id = %s", (ended, sub.customer_id)
        )
        return WebhookResult("applied", f"{sub.customer_id}: canceled")

    def _invoice_paid(
        self, conn: psycopg.Connection[Any], obj: dict[str, Any], now: datetime, at: datetime
    ) -> WebhookResult:
        return self._invoice(conn, obj, now, at, "active", "invoice paid")

    def _invoice_payment_failed(
        self, conn: psycopg.Connection[Any], obj: dict[str, Any], now: datetime, at: datetime
    ) -> WebhookResult:
        return self._invoice(conn, obj, now, at, "past_due", "payment failed")

    def _invoice(
        self,
        conn: psycopg.Connection[Any],
        obj: dict[str, Any],
        now: datetime,
        at: datetime,
        status: Status,
        reason: str,
    ) -> WebhookResult:
        sub = self._find(conn, obj, _invoice_subscription(obj))
        if sub.status == "canceled":
            return WebhookResult("ignored", "subscription already canceled")
        _save(conn, transition(sub, status, now, self.grace), self.free_plan, reason, now, at=at)
        return WebhookResult("applied", f"{sub.customer_id}: {status}")

    def expire_grace(self, now: datetime | None = None) -> int:
        """Past-due customers whose grace ran out lose their plan (to free). Returns how many."""
        now = now or datetime.now(UTC)
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                f"SELECT {_SUB_COLUMNS} FROM subscriptions s WHERE status = 'past_due' AND grace_until <= %s"
                " AND EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id AND c.plan <> %s)"
                " FOR UPDATE SKIP LOCKED",
                (now, self.free_plan),
            ).fetchall()
            for row in rows:
                sub = Subscription(*row)
                apply_plan(
                    conn, sub.customer_id, self.free_plan, "grace period over", "past_due",
                    at=sub.grace_until,
                )  # fmt: skip
        return len(rows)


def _timestamp(value: Any, default: datetime) -> datetime:
    """A Stripe timestamp (epoch s) as a datetime; ``default`` when absent."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return default


def _ended_at(obj: dict[str, Any], now: datetime) -> datetime:
    """When a deleted subscription stopped: ``ended_at``, else ``canceled_at`` (which, for a cancel at the
    period's end, is when it was asked for, not the end), else now."""
    for field in ("ended_at", "canceled_at"):
        value = obj.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return datetime.fromtimestamp(value, UTC)
    return now


def _invoice_subscription(obj: dict[str, Any]) -> str | None:
    # API 2025+: invoice.parent.subscription_details.subscription; older: invoice.subscription.
    parent = (obj.get("parent") or {}).get("subscription_details") or {}
    value = parent.get("subscription") or obj.get("subscription")
    return str(value) if value else None


def keep_grace(store: SubscriptionStore, interval: float, stop: threading.Event) -> None:
    """Every ``interval`` seconds, past-due customers whose grace ended lose their plan."""
    while not stop.wait(interval):
        try:
            store.expire_grace()
        except psycopg.Error:
            log.exception("grace check failed; retrying")


# -- checkout ------------------------------------------------------------------------------------------------


def minor_units(amount: Decimal, minor_unit: int) -> int:
    return int((amount * (10**minor_unit)).to_integral_value())


def checkout_params(
    config: PlansConfig,
    customer_id: str,
    stripe_customer_id: str | None,
    target: str,
    settings: BillingSettings,
    today: Any,
    prices: dict[str | None, str] | None = None,
    anchor: int | None = None,
) -> dict[str, Any]:
    """A subscription-mode Checkout Session for ``target`` carrying what ``checkout.session.completed``
    needs to apply the upgrade alone. ``prices`` (meter → Stripe price id, None: the base; from
    ``plg billing sync-catalog``) subscribe the customer to the base **and** one metered price per priced
    meter, so Stripe charges the usage plg reports; ``anchor`` (epoch s) starts Stripe's billing cycle at
    the customer's next plg period so both bill the same periods. Without ``prices`` (a catalog never
    synced) the base price is sent inline (``price_data``), as before."""
    plan = config.plan(target)
    price = config.price_for(target, today)
    assert plan is not None
    assert price is not None
    line_items: list[dict[str, Any]]
    if prices and None in prices:
        line_items = [{"price": prices[None], "quantity": 1}]
        line_items += [{"price": pid} for meter, pid in sorted(prices.items(), key=str) if meter is not None]
    else:
        line_items = [
            {
                "quantity": 1,
                "price_data": {
                    "currency": price.currency.lower(),
                    "unit_amount": minor_units(price.base_price, price.minor_unit),
                    "recurring": recurring(price, usage=False),
                    "product_data": {
                        "name": f"plg {plan.name}",
                        "metadata": {"plg_price_version": price.version},
                    },
                },
            }
        ]
    metadata = {"plg_plan": target, "plg_customer_id": customer_id, "plg_price_version": price.version}
    subscription_data: dict[str, Any] = {"metadata": metadata}
    if mixed_intervals(price):
        # An annual (or custom) base with monthly usage: one subscription, items on two intervals.
        subscription_data["billing_mode"] = {"type": "flexible"}
    if anchor is not None:
        subscription_data["billing_cycle_anchor"] = anchor
        subscription_data["proration_behavior"] = settings.checkout_proration
    params: dict[str, Any] = {
        "mode": "subscription",
        "client_reference_id": customer_id,
        "metadata": metadata,
        "subscription_data": subscription_data,
        "line_items": line_items,
        "success_url": settings.checkout_success_url,
        "cancel_url": settings.checkout_cancel_url,
    }
    if stripe_customer_id:
        params["customer"] = stripe_customer_id
    if price.tax.stripe_tax:
        params["automatic_tax"] = {"enabled": True}
    return params


def plan_change_params(
    current_items: list[dict[str, Any]], prices: dict[str | None, str], target: str, version: str,
    customer_id: str, proration: str,
) -> dict[str, Any]:  # fmt: skip
    """A subscription update moving every item to the target version's prices: the old items deleted,
    the new base and metered prices added, ``proration_behavior`` the setting."""
    items: list[dict[str, Any]] = [{"id": item["id"], "deleted": True} for item in current_items]
    items.append({"price": prices[None], "quantity": 1})
    items += [{"price": pid} for meter, pid in sorted(prices.items(), key=str) if meter is not None]
    return {
        "items": items,
        "proration_behavior": proration,
        "metadata": {"plg_plan": target, "plg_customer_id": customer_id, "plg_price_version": version},
    }


def record_session(
    pool: ConnectionPool, session_id: str, customer_id: str, plan: str, version: str | None, kind: str
) -> None:
    """What plg asked Stripe for: only these complete an upgrade (a contract plan never otherwise)."""
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO billing_stripe_sessions (session_id, customer_id, plan, price_version, kind)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (session_id) DO NOTHING",
            (session_id, customer_id, plan, version, kind),
        )


def catalog_prices(
    pool: ConnectionPool, gateway: Any, config: PlansConfig, version: str, sync: Callable[[], Any]
) -> dict[str | None, str]:
    """The version's Stripe prices, syncing the catalog first when they are missing."""
    account = gateway.account()
    with pool.connection() as conn:
        prices = version_prices(conn, version, account)
    if None not in prices:
        sync()
        with pool.connection() as conn:
            prices = version_prices(conn, version, account)
    return prices


def active_subscription(pool: ConnectionPool, customer_id: str) -> str | None:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT stripe_subscription_id FROM subscriptions WHERE customer_id = %s"
            " AND status IN ('active', 'past_due') AND stripe_subscription_id IS NOT NULL",
            (customer_id,),
        ).fetchone()
    return None if row is None else str(row[0])


router = APIRouter()


@router.post(
    "/v1/checkout/{customer_id}",
    responses={**openapi.CHECKOUT, **auth.responses()},
    openapi_extra=openapi.CHECKOUT_BODY,
    # The customer's backend starts its own upgrade; an operator may do it on the customer's behalf.
    dependencies=[Depends(auth.secret_key(operator_role=auth.Role.editor))],
)
async def checkout(customer_id: str, request: Request, res: Resources) -> Response:
    """A Stripe Checkout Session for the customer's upgrade (``{"plan": ...}`` to choose another)."""
    body: dict[str, Any] = {}
    raw = await request.body()
    if raw:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            return error(400, "invalid_json", 'the body must be JSON, e.g. {"plan": "pro"}')
        if not isinstance(body, dict) or not isinstance(body.get("plan", ""), str):
            return error(400, "invalid_body", "the body must be an object with an optional string plan")
    account = await run_in_threadpool(get_account, res.pool, customer_id)
    if account is None:
        return error(404, "customer_not_found", f"customer {customer_id!r} does not exist")
    current = res.config.plan(account.plan)
    target = body.get("plan") or (current.upgrade_to if current is not None else None)
    if target is None:
        return error(409, "no_upgrade", f"plan {account.plan!r} has no upgrade path")
    target_plan = res.config.plan(target)
    if target_plan is None:
        return error(
            400, "unknown_plan", f"no plan {target!r}; known: {', '.join(p.slug for p in res.config.plans)}"
        )
    if target == account.plan:
        return error(409, "already_on_plan", f"customer {customer_id!r} is already on {target!r}")
    if target_plan.custom_contract:
        return error(409, "contact_sales", f"plan {target!r} is sold by contract, not by checkout")
    now = datetime.now(UTC)
    version = res.config.price_for(target, now.date())
    assert version is not None
    # The same click twice within ten minutes gets the same session.
    bucket = int(time.time() // 600)
    key = "checkout_" + hashlib.sha256(f"{customer_id}\x1f{target}\x1f{bucket}".encode()).hexdigest()[:40]
    gateway = res.gateway
    try:
        prices = await run_in_threadpool(
            catalog_prices, res.pool, gateway, res.config, version.version, res.sync_catalog
        )
        subscription_id = await run_in_threadpool(active_subscription, res.pool, customer_id)
        if subscription_id is not None and None in prices:
            # A paying customer changes plan: the subscription's items move, no second subscription.
            live = await run_in_threadpool(gateway.retrieve_subscription, subscription_id)
            change = plan_change_params(
                live["items"]["data"], prices, target, version.version, customer_id,
                res.settings.plan_change_proration,
            )  # fmt: skip
            change_key = key.replace("checkout_", "change_", 1)
            if mixed_intervals(version) and (live.get("billing_mode") or {}).get("type") != "flexible":
                # An annual base with monthly usage: a classic subscription (every monthly plan's) cannot
                # hold items on two intervals; Stripe moves it to flexible billing mode first.
                await run_in_threadpool(
                    gateway.migrate_subscription, subscription_id, idempotency_key=change_key + "_migrate"
                )
            await run_in_threadpool(
                record_session,
                res.pool,
                change_key,
                customer_id,
                target,
                version.version,
                "plan_change",
            )
            await run_in_threadpool(
                gateway.update_subscription, subscription_id, change, idempotency_key=change_key
            )
            return Response(
                orjson.dumps(
                    {"url": None, "session_id": None, "plan": target, "customer_id": customer_id,
                     "subscription_id": subscription_id,
                     "proration_behavior": res.settings.plan_change_proration}
                ),
                media_type="application/json",
            )  # fmt: skip
        anchor = billing_period(int(now.timestamp() * 1000), account.anchor_day).end_ms // 1000
        # A customer with tax settings but no Stripe customer yet gets one carrying them first.
        stripe_customer = account.stripe_customer_id or await run_in_threadpool(
            taxes.customer_for_checkout, res.pool, gateway, customer_id, account.name
        )
        params = checkout_params(
            res.config,
            customer_id,
            stripe_customer,
            target,
            res.settings,
            now.date(),
            prices,
            anchor,
        )
        session = await run_in_threadpool(gateway.create_checkout_session, params, key)
        await run_in_threadpool(
            record_session,
            res.pool,
            str(session.get("id")),
            customer_id,
            target,
            version.version,
            "checkout",
        )
    except (stripe.StripeError, CatalogError) as exc:
        detail = exc.user_message if isinstance(exc, stripe.StripeError) else str(exc)
        log.warning("checkout session failed: %s", detail or type(exc).__name__)
        return error(
            502,
            "stripe_unavailable",
            "Stripe did not create the session; try again",
            {"Retry-After": "5"},
        )
    return Response(
        orjson.dumps(
            {
                "url": session.get("url"),
                "session_id": session.get("id"),
                "plan": target,
                "customer_id": customer_id,
            }
        ),
        media_type="application/json",
    )


@router.post(
    "/v1/stripe/webhooks",
    responses=openapi.WEBHOOK,
    openapi_extra=openapi.WEBHOOK_BODY,
    dependencies=[Depends(auth.stripe_signature())],  # verified below, over the raw body
)
async def webhook(request: Request, res: Resources) -> Response:
    """Stripe's events, verified with ``STRIPE_WEBHOOK_SECRET``; idempotent by event id."""
    payload = await request.body()
    signature = request.headers.get("stripe-signature")
    if not signature:
        WEBHOOKS.labels("unknown", "unsigned").inc()
        return error(400, "missing_signature", "the Stripe-Signature header is required")
    try:
        secret = res.settings.stripe.webhook_secret.get_secret_value()
        # Only the signature is Stripe's to check; the body is parsed and validated here (construct_event
        # would also build a StripeObject, and fail with a TypeError on a validly signed "[]").
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8", "replace"),
            signature,
            secret,
            tolerance=res.settings.stripe.webhook_tolerance_seconds,
        )
        event = json.loads(payload)
    except stripe.SignatureVerificationError:
        WEBHOOKS.labels("unknown", "bad_signature").inc()
        return error(400, "invalid_signature", "the signature does not match or its timestamp is too old")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        WEBHOOKS.labels("unknown", "invalid_json").inc()
        return error(400, "invalid_json", "the body is not a Stripe event")
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(event.get("type"), str)
    ):
        return error(400, "invalid_event", "an event needs id, type and data.object")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        return error(400, "invalid_event", "an event needs id, type and data.object")
    try:
        result = await run_in_threadpool(res.subscriptions.handle, event)
    except psycopg.Error:
        log.exception("webhook %s not applied", event["id"])
        # Stripe retries a non-2xx: nothing was recorded, so the retry applies it.
        return error(503, "database_unavailable", "try again", {"Retry-After": "5"})
    WEBHOOKS.labels(event["type"], result.status).inc()
    if result.status == "retry":
        # Any non-2xx makes Stripe deliver the event again (with backoff, for up to three days).
        return error(409, "not_known_yet", result.detail, {"Retry-After": "5"})
    return Response(
        orjson.dumps({"received": True, "result": result.status, "detail": result.detail}),
        media_type="application/json",
    )
