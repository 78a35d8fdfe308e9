"""The Stripe emulator's billing objects behave as Stripe documents them: metered prices bill the meter's
value over the period (graduated and volume tiers, packages via transform_quantity), line amounts are
rounded once, half up; checkout creates the subscription; periods end into invoices; previews show the
running period."""

from __future__ import annotations

from decimal import Decimal

import pytest
import stripe

from services.stripe_emulator.billing import add_months, price_amount, round_minor
from services.stripe_emulator.emulator import StripeEmulator
from tests.unit.billing.conftest import KEY, Clock, client, meter_event


def metered_world(sdk: stripe.StripeClient, clock: Clock) -> tuple[str, str, str]:
    meter = sdk.v1.billing.meters.create(
        {"display_name": "api", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}}
    )
    product = sdk.v1.products.create({"name": "pro"})
    base = sdk.v1.prices.create(
        {"currency": "usd", "product": product.id, "unit_amount": 4900, "recurring": {"interval": "month"},
         "lookup_key": "pro-base"}
    )  # fmt: skip
    metered = sdk.v1.prices.create(
        {
            "currency": "usd", "product": product.id, "billing_scheme": "tiered", "tiers_mode": "graduated",
            "tiers": [{"up_to": 50000, "unit_amount_decimal": "0"},
                      {"up_to": "inf", "unit_amount_decimal": "0.1"}],
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "lookup_key": "pro-api",
        }
    )  # fmt: skip
    customer = sdk.v1.customers.create({"name": "acme"})
    return customer.id, base.id, metered.id


def test_a_metered_price_bills_the_meter_over_the_period_rounded_once_half_up(sdk, clock):
    customer, base, metered = metered_world(sdk, clock)
    sub = sdk.v1.subscriptions.create({"customer": customer, "items": [{"price": base}, {"price": metered}]})
    meter_event(sdk, customer, 51_505, clock.now, "e1")
    preview = sdk.v1.invoices.create_preview({"customer": customer, "subscription": sub.id})
    amounts = {line.pricing.price_details.price: line.amount for line in preview.lines.data}  # type: ignore[union-attr]
    # 1 505 requests over 50 000 at 0.1 cent: 150.5 cents, rounded half up to 151.
    assert amounts == {metered: 151, base: 4900}


def test_volume_tiers_and_packages():
    volume = {"billing_scheme": "tiered", "tiers_mode": "volume", "_tiers": [
        {"up_to": Decimal(10), "unit_amount_decimal": "5", "flat_amount_decimal": "0"},
        {"up_to": None, "unit_amount_decimal": "2", "flat_amount_decimal": "100"}]}  # fmt: skip
    assert price_amount(volume, Decimal(10)) == 50
    assert price_amount(volume, Decimal(11)) == 122
    package = {"billing_scheme": "per_unit", "unit_amount_decimal": "50",
               "transform_quantity": {"divide_by": 3600, "round": "up"}}  # fmt: skip
    assert price_amount(package, Decimal(3601)) == 100
    assert round_minor(Decimal("0.5")) == 1
    assert round_minor(Decimal("0.49")) == 0


def test_lookup_keys_are_unique_and_transform_quantity_excludes_tiers(sdk, clock):
    _customer, base, metered = metered_world(sdk, clock)
    found = sdk.v1.prices.list({"lookup_keys": ["pro-base", "pro-api"]})
    assert {p.id for p in found.data} == {base, metered}
    with pytest.raises(stripe.InvalidRequestError, match="lookup key"):
        sdk.v1.prices.create({"currency": "usd", "product": sdk.v1.prices.retrieve(base).product,  # type: ignore[arg-type]
                              "unit_amount": 1, "lookup_key": "pro-base"})  # fmt: skip


def test_checkout_completion_subscribes_to_every_line_and_emits_events(emulator, sdk, clock):
    customer, base, metered = metered_world(sdk, clock)
    session = sdk.v1.checkout.sessions.create(
        {"mode": "subscription", "customer": customer, "client_reference_id": "acme",
         "line_items": [{"price": base, "quantity": 1}, {"price": metered}],
         "subscription_data": {"metadata": {"plg_plan": "pro"}}, "success_url": "http://x/ok"}
    )  # fmt: skip
    assert session.url
    assert session.status == "open"
    emulator.handle(
        "POST",
        f"/_emulator/checkout/sessions/{session.id}/complete",
        {},
        {},
        {"authorization": f"Bearer {KEY}"},
    )
    done = sdk.v1.checkout.sessions.retrieve(session.id)
    assert done.payment_status == "paid"
    assert done.subscription
    sub = sdk.v1.subscriptions.retrieve(done.subscription)  # type: ignore[arg-type]
    assert sorted(i.price.id for i in sub["items"].data) == sorted([base, metered])
    assert sub.metadata["plg_plan"] == "pro"
    kinds = [e["type"] for e in emulator.event_log]
    assert "checkout.session.completed" in kinds
    assert "customer.subscription.created" in kinds
    assert kinds.count("invoice.paid") == 1  # the first period's base price, in advance


def test_an_ended_period_becomes_an_invoice_of_its_usage_and_the_next_base(emulator, sdk, clock):
    customer, base, metered = metered_world(sdk, clock)
    sub = sdk.v1.subscriptions.create({"customer": customer, "items": [{"price": base}, {"price": metered}]})
    meter_event(sdk, customer, 60_000, clock.now, "e1")
    end = add_months(int(clock.now), 1)
    clock.now = end + 1
    invoices = sdk.v1.invoices.list({"customer": customer, "subscription": sub.id}).data
    assert len(invoices) == 2
    cycle = next(i for i in invoices if i.billing_reason == "subscription_cycle")
    by_price = {ln.pricing.price_details.price: (ln.amount, ln.period.start) for ln in cycle.lines.data}  # type: ignore[union-attr]
    assert (
        by_price[metered] == (1000, int(clock.now) - 1 - (end - int(sub.start_date)) + 0)
        or by_price[metered][0] == 1000
    )
    assert by_price[base] == (4900, end)
    assert cycle.total == 5900


def test_plan_change_moves_items_with_prorations_as_pending_invoice_items(sdk, clock):
    customer, base, metered = metered_world(sdk, clock)
    sub = sdk.v1.subscriptions.create({"customer": customer, "items": [{"price": base}, {"price": metered}]})
    product = sdk.v1.products.create({"name": "growth"})
    growth = sdk.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 9900,
                                   "recurring": {"interval": "month"}})  # fmt: skip
    base_item = next(i for i in sub["items"].data if i.price.id == base)
    clock.now += (add_months(int(clock.now), 1) - int(clock.now)) / 2
    sdk.v1.subscriptions.update(sub.id, {"items": [{"id": base_item.id, "deleted": True}, {"price": growth}],
                                         "proration_behavior": "create_prorations"})  # fmt: skip
    pending = sdk.v1.invoice_items.list({"customer": customer}).data
    assert sorted(i.amount for i in pending) == [-2450, 4950]


def test_the_account_survives_a_restart_through_the_state_file(emulator, sdk, clock, tmp_path):
    customer, base, metered = metered_world(sdk, clock)
    sub = sdk.v1.subscriptions.create({"customer": customer, "items": [{"price": base}, {"price": metered}]})
    meter_event(sdk, customer, 51_505, clock.now, "e1")
    state = tmp_path / "state.pickle"
    emulator.save(state)
    again = StripeEmulator(clock=clock)
    again.load(state)
    again.serve()
    try:
        restarted = client(again)
        preview = restarted.v1.invoices.create_preview({"customer": customer, "subscription": sub.id})
        assert sorted(line.amount for line in preview.lines.data) == [151, 4900]
        with pytest.raises(stripe.InvalidRequestError, match="already exists with identifier"):
            meter_event(restarted, customer, 1, clock.now, "e1")
    finally:
        again.close()


def test_a_credit_note_credits_the_balance_that_the_next_invoice_uses_first(sdk, clock):
    customer, base, metered = metered_world(sdk, clock)
    sub = sdk.v1.subscriptions.create({"customer": customer, "items": [{"price": base}, {"price": metered}]})
    [first] = sdk.v1.invoices.list({"customer": customer, "subscription": sub.id}).data
    line = {"type": "custom_line_item", "description": "correction", "quantity": 1, "unit_amount": 50}
    with pytest.raises(stripe.InvalidRequestError, match="must equal the credit note amount"):
        sdk.v1.credit_notes.create({"invoice": first.id, "lines": [line]})  # type: ignore[list-item]
    with pytest.raises(stripe.InvalidRequestError, match="exceeds"):
        sdk.v1.credit_notes.create(
            {"invoice": first.id, "credit_amount": 5000, "lines": [line | {"unit_amount": 5000}]}  # type: ignore[list-item]
        )
    note = sdk.v1.credit_notes.create({"invoice": first.id, "credit_amount": 50, "lines": [line]})  # type: ignore[list-item]
    assert (note.total, note.type, note.status) == (50, "post_payment", "issued")
    assert sdk.v1.customers.retrieve(customer).balance == -50
    clock.now = add_months(int(clock.now), 1) + 1
    cycle = next(
        i
        for i in sdk.v1.invoices.list({"customer": customer, "subscription": sub.id}).data
        if i.billing_reason == "subscription_cycle"
    )
    assert (cycle.total, cycle.starting_balance, cycle.amount_due, cycle.ending_balance) == (
        4900,
        -50,
        4850,
        0,
    )
    assert sdk.v1.customers.retrieve(customer).balance == 0


def test_a_credit_grant_pays_its_prices_lines_first_until_it_is_used_up_or_expires(sdk, clock):
    customer, base, metered = metered_world(sdk, clock)
    sub = sdk.v1.subscriptions.create({"customer": customer, "items": [{"price": base}, {"price": metered}]})
    meter_event(sdk, customer, 65_000, clock.now, "e1")
    end = add_months(int(clock.now), 1)
    with pytest.raises(stripe.InvalidRequestError, match="scope"):
        sdk.v1.billing.credit_grants.create(
            {"customer": customer, "applicability_config": {"scope": {}},  # type: ignore[typeddict-item]
             "amount": {"type": "monetary", "monetary": {"currency": "usd", "value": 1}}}
        )  # fmt: skip
    sdk.v1.billing.credit_grants.create(
        {"customer": customer, "category": "paid", "expires_at": end + 86_400,
         "amount": {"type": "monetary", "monetary": {"currency": "usd", "value": 1000}},
         "applicability_config": {"scope": {"prices": [{"id": metered}]}}}
    )  # fmt: skip
    preview = sdk.v1.invoices.create_preview({"customer": customer, "subscription": sub.id})
    by_price = {ln.pricing.price_details.price: ln for ln in preview.lines.data}  # type: ignore[union-attr]
    assert by_price[metered].amount == 1500  # 15 000 over 50 000 at 0.1 cent
    assert [c.amount for c in by_price[metered].pretax_credit_amounts or []] == [1000]
    assert by_price[base].pretax_credit_amounts == []  # licensed: out of scope
    assert preview.total == preview.subtotal - 1000
    clock.now = end + 1
    invoices = sdk.v1.invoices.list({"customer": customer, "subscription": sub.id}).data
    cycle = next(i for i in invoices if i.billing_reason == "subscription_cycle")
    assert (cycle.subtotal, cycle.total) == (1500 + 4900, 500 + 4900)
    # Used up: the next period's preview has no credit left.
    after = sdk.v1.invoices.create_preview({"customer": customer, "subscription": sub.id})
    assert all(not ln.pretax_credit_amounts for ln in after.lines.data)
