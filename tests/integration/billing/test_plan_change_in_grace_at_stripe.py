"""A plan change between a period's end and its close is not the ended period's plan.

Stripe writes a subscription's invoice of a period at the period's end: its metered usage in arrears on
the prices the subscription has then. plg's period closer writes its final invoice of the period
``BILLING_CLOSE_GRACE_SECONDS`` (2 h) later, for late events. A customer who upgrades, downgrades or
cancels inside those 2 h must have the ended period billed on the plan in force at its end, as Stripe
billed it — not on the plan it has when the closer runs.

The Stripe emulator runs on a clock the test moves (the period ends, the changes come 20-30 minutes after
it); the changes go through plg's own route and Stripe's signed webhooks, dated by Stripe."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.plans.periods import billing_period
from tests.integration.billing.conftest import Clock
from tests.integration.billing.harness import HOUR, MINUTE, Billing, signed, stripe_event
from tests.integration.metering.harness import now_ms, wait_for

KEY = {"authorization": "Bearer sk_test_billing"}


def test_a_change_of_plan_during_the_close_grace_leaves_the_ended_period_on_the_plan_stripe_billed(
    clocked: Billing, clock: Clock
) -> None:
    billing, double = clocked, clocked.double
    # Syncs the catalog; periods are closed by the test.
    reporter = billing.start_reporter_with_webhooks(close_check_seconds=3600.0)
    anchor = (datetime.now(UTC).day + 13) % 28 + 1  # today mid-period: the test never straddles a start
    period = billing_period(now_ms(), anchor)
    # Three pro customers (49.00; 50 000 requests included, 0.001 each beyond), 60 000 requests each.
    changes = {"growth": "upgrade", "starter": "downgrade", "free": "cancel"}
    customers: dict[str, tuple[str, str, str]] = {}
    for target in changes:
        c = billing.customer("pro", stripe=False, anchor_day=anchor)
        clock.move_to(period.start_ms + MINUTE)
        stripe_customer, sub = billing.subscribe(c, "pro", "pro-2025-06", period)
        clock.offset = 0.0
        customers[target] = (c, stripe_customer, sub)
        billing.period_usage(c, 60_000, period)

    # The period ends: Stripe invoices it (usage in arrears on pro's prices) right away.
    clock.move_to(period.end_ms + 10 * MINUTE)
    for _, stripe_customer, _ in customers.values():
        wait_for(
            lambda s=stripe_customer: bool(_metered_lines(double, s, period.end_ms)),
            60,
            what="Stripe's invoice of the ended period",
        )

    # Inside the close grace: an upgrade and a downgrade through plg's plan change (Stripe's subscription
    # moves its items; its customer.subscription.updated is dated now, after the end), and a cancel at
    # Stripe at once (customer.subscription.deleted, ended_at now).
    clock.move_to(period.end_ms + 20 * MINUTE)
    with reporter.client() as rep:
        for target in ("growth", "starter"):
            answer = rep.post(f"/v1/checkout/{customers[target][0]}", json={"plan": target})
            assert answer.status_code == 200, answer.text
            assert answer.json()["subscription_id"] == customers[target][2]
    status, canceled, _, _ = double.handle("DELETE", f"/v1/subscriptions/{customers['free'][2]}", {}, {}, KEY)
    assert status == 200, canceled
    clock.offset = 0.0
    for target, (c, _, _) in customers.items():
        wait_for(
            lambda c=c, t=target: (
                billing.rows("SELECT plan FROM customers WHERE customer_id = %s", c) == [(t,)]
            ),
            60,
            what=f"the {changes[target]}'s webhook applied",
        )
    # Recorded with Stripe's time of the change, after the period's end (not the webhook's arrival).
    effective = billing.rows(
        "SELECT (extract(epoch FROM effective_at) * 1000)::bigint, from_plan, plan FROM customer_changes"
        " WHERE customer_id = ANY(%s)",
        [c for c, _, _ in customers.values()],
    )
    assert sorted((was, plan) for _, was, plan in effective) == [
        ("pro", "free"), ("pro", "growth"), ("pro", "starter")
    ]  # fmt: skip
    assert all(at >= period.end_ms for at, _, _ in effective), (effective, period.end_ms)

    # plg closes the period after the grace: every invoice is pro's, equal to Stripe's to the cent.
    closed = billing.close_periods(period.end_ms + 2 * HOUR + 1, {c for c, _, _ in customers.values()})
    for target, (c, stripe_customer, _) in customers.items():
        invoice = closed[c]
        assert (invoice.plan, invoice.price_version) == ("pro", "pro-2025-06"), (changes[target], invoice)
        plg_usage = {ln.meter: ln.amount for ln in invoice.lines if ln.kind == "usage" and ln.amount}
        assert plg_usage == {"api_requests": Decimal("10.00")}, (changes[target], invoice)
        metered = _metered_lines(double, stripe_customer, period.end_ms)
        assert [(ln["quantity"], ln["amount"]) for ln in metered if ln["amount"]] == [(60_000, 1000)], metered
        licensed = _licensed_lines(double, stripe_customer, period)
        assert [ln["amount"] for ln in licensed] == [4900], licensed
        assert sum(ln["amount"] for ln in metered + licensed) == 5900 == int(invoice.total * 100)


def test_a_change_of_plan_inside_a_period_bills_its_base_on_the_plan_at_its_start_as_stripe_does(
    clocked: Billing, clock: Clock
) -> None:
    """Stripe charges a period's base in advance, at its start, on the subscription's plan then; a change
    inside the period with ``proration_behavior`` none (plg's default) neither credits it nor charges the
    new plan's base for the period, and the usage is billed at the end on the new plan's prices (a cancel
    at once: discarded). plg's final invoice: the base of the plan at the start, usage on the plan at the
    end — the same money as Stripe's lines for the period."""
    billing, double = clocked, clocked.double
    reporter = billing.start_reporter_with_webhooks(close_check_seconds=3600.0)
    anchor = (datetime.now(UTC).day + 13) % 28 + 1
    period = billing_period(now_ms(), anchor)
    # (customer, Stripe customer, subscription) per case; pro, 60 000 requests each.
    cases: dict[str, tuple[str, str, str]] = {}
    for case in ("upgrade", "downgrade", "cancel", "cancel, then a checkout in the grace"):
        c = billing.customer("pro", stripe=False, anchor_day=anchor)
        clock.move_to(period.start_ms + MINUTE)
        cases[case] = (c, *billing.subscribe(c, "pro", "pro-2025-06", period))
        clock.offset = 0.0
        billing.period_usage(c, 60_000, period)

    # Half an hour before the period's end: growth (upgrade), starter (downgrade), two cancels at once.
    clock.move_to(period.end_ms - 30 * MINUTE)
    with reporter.client() as rep:
        for case, target in (("upgrade", "growth"), ("downgrade", "starter")):
            answer = rep.post(f"/v1/checkout/{cases[case][0]}", json={"plan": target})
            assert answer.status_code == 200, answer.text
    for case in ("cancel", "cancel, then a checkout in the grace"):
        status, body, _, _ = double.handle("DELETE", f"/v1/subscriptions/{cases[case][2]}", {}, {}, KEY)
        assert status == 200, body
    clock.offset = 0.0
    expected_plan = {"upgrade": "growth", "downgrade": "starter", "cancel": "free"}
    expected_plan["cancel, then a checkout in the grace"] = "free"
    for case, (c, _, _) in cases.items():
        wait_for(
            lambda c=c, p=expected_plan[case]: (
                billing.rows("SELECT plan FROM customers WHERE customer_id = %s", c) == [(p,)]
            ),
            60,
            what=f"the {case} applied",
        )
    # The running invoice already says so: pro's base (paid at the start), growth's usage (none over).
    with reporter.client() as rep:
        upcoming = rep.get(f"/v1/invoices/{cases['upgrade'][0]}/upcoming").json()
    assert (upcoming["plan"], upcoming["total"]) == ("growth", "49.00"), upcoming

    # The period ends; Stripe invoices the subscriptions still running. Then, in the grace, the canceled
    # customer checks out pro again (a signed checkout.session.completed dated then: this test's own clock
    # is inside the period, so plg's checkout route would anchor the new subscription at its end).
    clock.move_to(period.end_ms + 10 * MINUTE)
    for case in ("upgrade", "downgrade"):
        wait_for(
            lambda s=cases[case][1]: bool(_metered_lines(double, s, period.end_ms)),
            60,
            what="Stripe's invoice of the ended period",
        )
    clock.offset = 0.0
    c, stripe_customer, _ = cases["cancel, then a checkout in the grace"]
    event = stripe_event(
        "checkout.session.completed",
        {"id": f"cs_{c}", "payment_status": "paid", "client_reference_id": c, "customer": stripe_customer,
         "subscription": f"sub_new_{c}", "metadata": {"plg_plan": "pro"}},
    ) | {"created": (period.end_ms + 25 * MINUTE) // 1000}  # fmt: skip
    body, headers = signed(event)
    with reporter.client() as rep:
        answer = rep.post("/v1/stripe/webhooks", content=body, headers=headers)
    assert answer.json()["result"] == "applied", answer.text

    closed = billing.close_periods(period.end_ms + 2 * HOUR + 1, {c for c, _, _ in cases.values()})
    expected = {  # plg's plan at the end, its base and usage lines, the total = Stripe's lines for the period
        "upgrade": ("growth", Decimal("49.00"), {}, 4900),
        "downgrade": ("starter", Decimal("49.00"), {"api_requests": Decimal("250.00")}, 29900),
        "cancel": ("free", Decimal("49.00"), {}, 4900),
        "cancel, then a checkout in the grace": ("free", Decimal("49.00"), {}, 4900),
    }
    for case, (c, stripe_customer, _) in cases.items():
        invoice = closed[c]
        base = [ln.amount for ln in invoice.lines if ln.kind == "base"]
        plg_usage = {ln.meter: ln.amount for ln in invoice.lines if ln.kind == "usage" and ln.amount}
        plan, want_base, want_usage, stripe_total = expected[case]
        assert (invoice.plan, base, plg_usage) == (plan, [want_base], want_usage), (case, invoice)
        lines = _metered_lines(double, stripe_customer, period.end_ms)
        lines += _licensed_lines(double, stripe_customer, period)
        assert sum(ln["amount"] for ln in lines) == stripe_total == int(invoice.total * 100), (case, lines)


def _lines(double: Any, stripe_customer: str) -> list[dict[str, Any]]:
    return [
        ln
        for i in list(double.billing.invoices.values())
        if i["customer"] == stripe_customer
        for ln in i["lines"]["data"]
    ]


def _metered_lines(double: Any, stripe_customer: str, end_ms: int) -> list[dict[str, Any]]:
    """Stripe's metered lines of the period ending at ``end_ms`` (billed in arrears, at its end)."""
    return [
        ln
        for ln in _lines(double, stripe_customer)
        if _metered(double, ln) and ln["period"]["end"] == end_ms // 1000
    ]


def _licensed_lines(double: Any, stripe_customer: str, period: Any) -> list[dict[str, Any]]:
    """Stripe's base (licensed, in advance) lines for the period."""
    start_s, end_s = period.start_ms // 1000, period.end_ms // 1000
    return [
        ln
        for ln in _lines(double, stripe_customer)
        if not _metered(double, ln) and start_s <= ln["period"]["start"] < end_s
    ]


def _metered(double: Any, line: dict[str, Any]) -> bool:
    price = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
    found = double.billing.prices.get(price) if price else None
    return bool(found) and (found.get("recurring") or {}).get("usage_type") == "metered"
