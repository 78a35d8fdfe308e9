"""Limits follow the customer's billing window on the real stack (issue 20): a hard limit of a price that
bills usage ``per_period`` over an annual window is enforced over the whole year — last month's usage
(its period total on ``usage-periods``, as the aggregator left it) plus this month's events counted by a
real aggregator — and a restarted entitlement API, reading the topic from the start, still sees the
year. The answer's period is the year, starting on the customer's cycle month (migration 0136)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import psycopg

from services.customers.windows import start_cycle
from services.kernel.topics import USAGE_PERIODS, topic
from services.plans.periods import billing_period, month_index
from tests.integration.metering.harness import Metering, now_ms, usage_event, wait_for
from tests.price_books import annual_plan, write_book


def test_a_per_period_annual_limit_counts_the_whole_year_across_months_and_restarts(
    metering: Metering, tmp_path: Path
):
    book = write_book(tmp_path, annual_plan("team_yearly", "per_period", limit=1000, hard_limit=True))
    customer = metering.customer("team_yearly")
    this_month = billing_period(now_ms(), 1)
    last_month = billing_period(this_month.start_ms - 1, 1)
    with psycopg.connect(metering.database.url.get_secret_value(), autocommit=True) as conn:
        start_cycle(conn, customer, 1, last_month.start_ms)  # the year started last month
    # Last month's total, as the aggregator wrote it then (its events are past the aggregator's grace).
    spec = topic(USAGE_PERIODS, metering.prefix)
    assert spec.schema_path is not None
    encoder = metering.sr.encoder(spec.value_subject, spec.schema_path, auto_register=False)
    record = {
        "customer_id": customer, "meter": "api_requests", "aggregation": "COUNT", "group": {},
        "granularity": "BILLING_PERIOD", "window_start": last_month.start_ms, "window_end": last_month.end_ms,
        "value": Decimal(700), "event_count": 700, "updated_at": now_ms(),
    }  # fmt: skip
    key = f"{customer}|api_requests|BILLING_PERIOD|{last_month.start_ms}|"
    metering.producer.produce(spec.name, encoder.encode(record), key)
    assert metering.producer.flush(30) == 0

    metering.start(config_path=book)
    api = metering.start_entitlements(config_path=book)
    year = billing_period(now_ms(), 1, 12, month_index(last_month.start.date()))
    assert year.start == last_month.start

    def check(client) -> dict:
        response = client.get(f"/v1/entitlements/{customer}/api_requests")
        assert response.status_code == 200, response.text
        return response.json()

    with api.client() as client:
        body = wait_for(lambda: (b := check(client))["usage"] == 700 and b, timeout=90, what="last month")
        assert (body["allowed"], body["limit"], body["remaining"]) == (True, 1000, 300)
        assert datetime.fromisoformat(body["period_start"]) == last_month.start
        assert datetime.fromisoformat(body["period_end"]) == year.end
        metering.send(usage_event(customer) for _ in range(300))  # this month: the year reaches 1000
        body = wait_for(lambda: (b := check(client))["usage"] == 1000 and b, timeout=90, what="the year")
        assert (body["allowed"], body["remaining"]) == (False, 0)
        assert body["upgrade"]["code"] == "usage_limit_exceeded"
    # A monthly limit would have allowed it: this month alone is 300.
    assert metering.period_total(customer) == (Decimal(300), 300)

    restarted = metering.start_entitlements(config_path=book)
    with restarted.client() as client:
        body = wait_for(lambda: (b := check(client))["usage"] == 1000 and b, timeout=90, what="after restart")
        assert body["allowed"] is False
