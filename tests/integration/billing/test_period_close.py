"""Period close: the final invoice is written once the ledger is complete, exactly once, and published."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from services.billing_reporter.closing import PeriodCloser
from services.billing_reporter.publish import InvoicePublisher
from services.kernel.topics import BILLING_INVOICES
from services.plans.loader import load_config
from services.plans.periods import billing_period
from tests.integration.billing.harness import MINUTE, Billing
from tests.integration.metering.harness import now_ms, wait_for

HOUR = 3_600_000


@pytest.fixture
def pool(billing: Billing) -> Iterator[ConnectionPool]:
    p = ConnectionPool(billing.db_url, min_size=1, max_size=2, open=True)
    yield p
    p.close()


def test_a_period_closes_once_its_ledger_is_complete_and_its_invoice_is_published(billing: Billing, pool):
    acme, late = billing.customer("pro", subscribed=True), billing.customer("pro", subscribed=True)
    period = billing_period(now_ms(), 1)
    window = now_ms() - now_ms() % MINUTE - 2 * MINUTE
    for c, n in ((acme, 51234), (late, 10)):
        billing.aggregate(c, n, window_start=window)
        billing.aggregate(
            c,
            n,
            window_start=period.start_ms,
            granularity="BILLING_PERIOD",
            width=period.end_ms - period.start_ms,
        )
    billing.double.faults(1.0, kinds=("500",))  # Stripe is down: nothing can be delivered yet
    billing.start_reporter()
    wait_for(lambda: billing.ledger(acme) and billing.ledger(late), what="reports planned")
    closer = PeriodCloser(
        pool,
        load_config(),
        ledger=f"{billing.metering.prefix}billing-reporter",
        report_granularity="MINUTE",
        grace_ms=HOUR,
        publish=InvoicePublisher(
            billing.metering.producer, billing.metering.sr, billing.metering.prefix
        ).publish,
    )
    after_close = period.end_ms + HOUR + 1
    # Reports still pending: the ledger is not complete, no invoice (other tests' customers may close).
    assert not [i for i in closer.close_due(after_close) if i.customer_id in (acme, late)]
    billing.double.faults(0.0)
    wait_for(
        lambda: all(r[5] == "delivered" for r in billing.ledger(acme) + billing.ledger(late)),
        what="delivered",
    )
    closed = closer.close_due(after_close)
    assert {i.customer_id for i in closed} >= {acme, late}
    invoice = next(i for i in closed if i.customer_id == acme)
    assert (invoice.status, invoice.total) == ("final", Decimal("50.24"))
    assert [i for i in closer.close_due(after_close) if i.customer_id in (acme, late)] == []  # never twice
    within_grace = closer.close_due(period.end_ms + HOUR - 1)  # the period before: acme did not exist
    assert not [i for i in within_grace if i.customer_id in (acme, late)]
    with psycopg.connect(billing.db_url) as conn:
        rows = conn.execute(
            "SELECT customer_id, total, published_at IS NOT NULL FROM billing_invoices"
            " WHERE customer_id = ANY(%s)",
            ([acme, late],),
        ).fetchall()
    assert sorted(rows) == sorted(
        [(acme, Decimal("50.240000000"), True), (late, Decimal("49.000000000"), True)]
    )
    published = [
        billing.metering.decoder.decode(v) for _, v in billing.metering.read_all(BILLING_INVOICES) if v
    ]
    mine = [p for p in published if p["customer_id"] in (acme, late)]
    assert len(mine) == 2
    assert {p["invoice_id"] for p in mine} == {f"{acme}:{period.start_ms}", f"{late}:{period.start_ms}"}
    # Stripe got each report once, whatever closing did.
    assert len(billing.double.accepted_identifiers) == len(set(billing.double.accepted_identifiers))
