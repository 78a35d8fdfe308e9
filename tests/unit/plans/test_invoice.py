"""Invoices from the default price book: the seeds' plans, tiers, packages, rounding, grandfathering,
anchors mid-month and short months. Amounts are checked to the cent, by hand arithmetic in comments."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from services.plans import load_config
from services.plans.invoice import calculate_invoice, round_money
from services.plans.model import Rounding
from services.plans.periods import billing_period, datetime_to_ms

CONFIG = load_config()
D = Decimal


def at(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


def invoice(plan: str, usage: dict[str, int | str], *, on: date = date(2025, 7, 1), pinned=None, region=None):
    price = CONFIG.price_for(plan, on, pinned)
    assert price is not None
    period = billing_period(datetime_to_ms(datetime(on.year, on.month, on.day, tzinfo=UTC)), on.day)
    return calculate_invoice(
        customer_id="acme",
        period=period,
        price=price,
        usage={k: D(v) for k, v in usage.items()},
        tax_region=region,
    )


def test_free_is_a_hard_cap_and_costs_nothing():
    inv = invoice("free", {"api_requests": 1000})
    assert inv.total == 0
    assert inv.line("api_requests").amount == 0  # type: ignore[union-attr]
    assert CONFIG.plan("free").meters["api_requests"].limit == 1000  # type: ignore[union-attr]
    assert CONFIG.plan("free").meters["api_requests"].hard_limit  # type: ignore[union-attr]


def test_pro_includes_50000_requests_then_charges_a_tenth_of_a_cent_each():
    assert invoice("pro", {"api_requests": 50000}).total == D("49.00")
    inv = invoice("pro", {"api_requests": 51234})
    line = inv.line("api_requests")
    assert line is not None
    assert (line.usage, line.included, line.billable, line.unit_price) == (51234, 50000, 1234, D("0.001"))
    # 1 234 x 0.001 = 1.234, ceil to the cent (the file's rounding) = 1.24
    assert (line.exact_amount, line.amount) == (D("1.234"), D("1.24"))
    assert inv.subtotal == D("50.24")
    assert inv.total == D("50.24")


def test_starter_and_growth_like_the_seeds_pricing_config_v2():
    # starter: 29 + 2 000 over 10 000 at 0.005 (10.00) + 2 GB over 5 at 2.00 (4.00)
    inv = invoice("starter", {"api_requests": 12000, "storage_gb": 7, "seats": 3})
    assert [(ln.meter, ln.amount) for ln in inv.lines] == [
        (None, D("29.00")),
        ("api_requests", D("10.00")),
        ("seats", D(0)),
        ("storage_gb", D("4.00")),
    ]
    assert inv.total == D("43.00")
    assert inv.line("seats").description == "seats (not billed)"  # type: ignore[union-attr]
    # growth: 99 + 1 over 100 000 at 0.003 (0.003 -> ceil 0.01)
    #  + compute: 3 601 s over 360 000 = 2 started packages of 3 600 s at 0.50 (1.00)
    inv = invoice("growth", {"api_requests": 100001, "compute_seconds": 363601})
    assert inv.line("api_requests").amount == D("0.01")  # type: ignore[union-attr]
    compute = inv.line("compute_seconds")
    assert compute is not None
    assert (compute.billable, compute.packages, compute.amount) == (3601, 2, D("1.00"))
    assert inv.total == D("100.01")


def test_enterprise_graduated_and_volume_tiers():
    # api graduated: 1M free, then 9M at 0.0005 (4 500), then 500 000 at 0.0002 (100) = 4 600
    # compute volume: 2M s falls in the 0.00005 tier, every second at that rate = 100
    inv = invoice("enterprise", {"api_requests": 10_500_000, "compute_seconds": 2_000_000})
    api = inv.line("api_requests")
    assert api is not None
    assert [t.quantity for t in api.tiers] == [1_000_000, 9_000_000, 500_000]
    assert api.amount == D("4600.00")
    compute = inv.line("compute_seconds")
    assert compute is not None
    assert compute.tiers_mode == "volume"
    assert [(t.quantity, t.unit_price) for t in compute.tiers] == [(2_000_000, D("0.00005"))]
    assert compute.amount == D("100.00")
    assert inv.total == D("5699.00")  # 999 + 4 600 + 100


@pytest.mark.parametrize(
    ("rule", "exact", "expected"),
    [
        (Rounding.CEIL, "1.231", "1.24"),
        (Rounding.FLOOR, "1.239", "1.23"),
        (Rounding.NEAREST, "1.235", "1.24"),  # half away from zero, not to even
        (Rounding.NEAREST, "1.245", "1.25"),
        (Rounding.NEAREST, "1.2349", "1.23"),
    ],
)
def test_rounding_rules_to_the_cent(rule, exact, expected):
    assert round_money(D(exact), 2, rule) == D(expected)


def test_rounding_is_once_per_line_not_per_unit():
    # 1 001 units at 0.0015: per unit ceil would be 1 001 x 0.01 = 10.01; once per line 1.5015 -> 1.51
    inv = invoice("pro", {"api_requests": 50000 + 1501})
    assert inv.line("api_requests").amount == D("1.51")  # type: ignore[union-attr]
    assert inv.subtotal == sum(ln.amount for ln in inv.lines)


def test_yen_rounds_to_whole_yen():
    assert round_money(D("100.5"), 0, Rounding.NEAREST) == D(101)
    assert round_money(D("100.5"), 0, Rounding.FLOOR) == D(100)


def test_a_grandfathered_customer_is_billed_on_the_old_price_version():
    # Subscribed in March 2025 under pro-2025-01 (39.00); pro-2025-06 (49.00) is what new customers get.
    old = invoice("pro", {"api_requests": 60000}, on=date(2025, 9, 1), pinned="pro-2025-01")
    new = invoice("pro", {"api_requests": 60000}, on=date(2025, 9, 1))
    assert (old.price_version, old.total) == ("pro-2025-01", D("49.00"))  # 39 + 10 000 x 0.001
    assert (new.price_version, new.total) == ("pro-2025-06", D("59.00"))
    # Before the new version took effect, an unpinned customer paid the old one too.
    assert invoice("pro", {}, on=date(2025, 5, 1)).price_version == "pro-2025-01"


def test_tax_exempt_regions_and_the_default_rate():
    inv = invoice("pro", {"api_requests": 0}, region="US-DE")
    assert inv.tax.exempt
    assert inv.tax.calculated_by == "stripe"
    assert inv.total == D("49.00")


def test_exclusive_and_inclusive_tax():
    price = CONFIG.price_for("pro", date(2025, 7, 1))
    assert price is not None
    period = billing_period(at(2025, 7, 1), 1)
    exclusive = price.model_copy(
        update={"tax": price.tax.model_copy(update={"stripe_tax": False, "default_rate": D("0.19")})}
    )
    inv = calculate_invoice(customer_id="c", period=period, price=exclusive, usage={}, tax_region="DE-BE")
    assert (inv.subtotal, inv.tax.amount, inv.total) == (D("49.00"), D("9.31"), D("58.31"))
    inclusive = exclusive.model_copy(
        update={"tax": exclusive.tax.model_copy(update={"behavior": "inclusive"})}
    )
    inv = calculate_invoice(customer_id="c", period=period, price=inclusive, usage={})
    # 49 - 49 / 1.19 = 7.8235... -> 7.82, already inside the 49.00
    assert (inv.tax.amount, inv.total) == (D("7.82"), D("49.00"))


def test_an_anchor_mid_month_splits_usage_at_the_anchor_day():
    # Anchored on the 15th: a request at Feb 14 23:59:59 is January's period, one at Feb 15 00:00 is not.
    anchor = 15
    events = [at(2025, 2, 14, 23, 59, 59), at(2025, 2, 15), at(2025, 3, 14, 12)]
    periods: dict[int, int] = {}
    for ts in events:
        p = billing_period(ts, anchor)
        periods[p.start_ms] = periods.get(p.start_ms, 0) + 1
    first, second = sorted(periods)
    assert (periods[first], periods[second]) == (1, 2)
    price = CONFIG.price_for("pro", date(2025, 2, 15))
    assert price is not None
    period = billing_period(at(2025, 2, 15), anchor)
    inv = calculate_invoice(customer_id="c", period=period, price=price, usage={"api_requests": D(2)})
    assert inv.to_dict()["period"] == {"start": "2025-02-15T00:00:00Z", "end": "2025-03-15T00:00:00Z"}


@pytest.mark.parametrize(
    ("at_ms", "anchor", "start", "end"),
    [
        (at(2025, 2, 20), 31, "2025-01-31", "2025-02-28"),  # Jan 31 -> Feb 28 (short month)
        (at(2025, 2, 28), 31, "2025-02-28", "2025-03-31"),  # back to the 31st in March
        (at(2024, 2, 29), 30, "2024-02-29", "2024-03-30"),  # leap February ends the period on the 29th
        (at(2025, 4, 30), 31, "2025-04-30", "2025-05-31"),
    ],
)
def test_short_months_move_the_period_start_to_the_last_day_and_charge_the_full_base(
    at_ms, anchor, start, end
):
    price = CONFIG.price_for("pro", date(2025, 7, 1))
    assert price is not None
    inv = calculate_invoice(
        customer_id="c", period=billing_period(at_ms, anchor), price=price, usage={"api_requests": D(50001)}
    )
    assert inv.to_dict()["period"] == {"start": f"{start}T00:00:00Z", "end": f"{end}T00:00:00Z"}
    # No proration by the period's length: 28 days cost what 31 do.
    assert inv.total == D("49.01")


def test_the_same_inputs_give_the_same_invoice():
    usage = {"storage_gb": D("101.5"), "api_requests": D(70000), "compute_seconds": D("360000.5")}
    one = invoice("pro", usage)  # type: ignore[arg-type]
    two = invoice("pro", dict(reversed(list(usage.items()))))  # type: ignore[arg-type]
    assert one == two
    assert one.to_dict() == two.to_dict()
    assert one.to_dict()["lines"][1] == {
        "kind": "usage",
        "description": "api_requests",
        "amount": "20.00",
        "exact_amount": "20.000",
        "meter": "api_requests",
        "usage": "70000",
        "included": "50000",
        "billable": "20000",
        "unit_price": "0.001",
    }
