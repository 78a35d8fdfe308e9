"""The abuse guard end to end on the real stack: a burst past the plan's cap -> an abuse signal with its
evidence -> the customer suspended in the entitlement API within seconds (every feature, code suspended,
the reason and how to appeal) -> `plg customers unsuspend` lifts it; `plg customers suspend` by hand."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from services.cli.__main__ import main as plg
from services.customers import suspension
from services.health_score.dashboard import overview
from services.kernel.topics import ABUSE_SIGNALS
from services.plans.loader import config_path
from tests.integration.metering.harness import Metering, usage_event, wait_for

pytestmark = pytest.mark.integration


def test_a_burst_past_the_cap_suspends_at_once_and_unsuspend_lifts_it(metering: Metering, tmp_path: Path):
    text = config_path().read_text()
    assert "max_events_per_minute: 20000" in text
    config = tmp_path / "metering.yaml"
    config.write_text(text.replace("max_events_per_minute: 20000", "max_events_per_minute: 50"))
    abuser, neighbour = metering.customer("free"), metering.customer("free")
    # No periodic reload of the customers: a suspension (or its lifting) reaches the API only through the
    # customers trigger's notification, i.e. at once — whatever a loaded machine makes of "at once".
    api = metering.start_entitlements(customers_refresh_seconds=3600.0)
    metering.start(config_path=config)

    with api.client() as client:

        def check(customer: str, feature: str = "api_requests") -> dict:
            response = client.get(f"/v1/entitlements/{customer}/{feature}")
            assert response.status_code == 200, response.text
            return response.json()

        assert check(abuser)["allowed"] is True
        metering.send(usage_event(abuser) for _ in range(30))
        metering.send(usage_event(neighbour) for _ in range(30))
        wait_for(lambda: check(abuser)["usage"] == 30, what="30 counted")
        assert check(abuser)["allowed"] is True  # under the cap: nothing happens

        burst_sent = time.monotonic()
        # 60 at once: over the cap of 50 per minute whichever minute the first 30 fell in
        metering.send(usage_event(abuser) for _ in range(60))
        body = wait_for(lambda: (b := check(abuser)).get("code") == "suspended" and b, timeout=60)
        print(f"suspended {time.monotonic() - burst_sent:.1f} s after the burst was sent")
        assert body["allowed"] is False
        assert "over the plan's cap of 50" in body["reason"]
        assert "support" in body["appeal"]
        assert body["suspended_until"] is not None  # the plan's 24 h cool-down
        assert check(abuser, "api_access")["code"] == "suspended"  # every feature, booleans too
        assert check(neighbour).get("code") is None  # nobody else

        signals = [metering.decoder.decode(v) for _, v in metering.read_all(ABUSE_SIGNALS) if v is not None]
        caps = [s for s in signals if s["kind"] == "rate_cap"]
        assert len(caps) == 1
        assert caps[0]["customer_id"] == abuser
        assert caps[0]["action"] == "suspend"
        assert caps[0]["events_in_minute"] > 50
        with psycopg.connect(metering.database.url.get_secret_value()) as conn:
            kinds = conn.execute(
                "SELECT kind, action FROM abuse_signals WHERE customer_id = %s", (abuser,)
            ).fetchall()
        assert ("rate_cap", "suspend") in kinds

        def dashboard_state(customer: str) -> str | None:
            with psycopg.connect(metering.database.url.get_secret_value()) as conn:
                rows = {r["customer_id"]: r for r in suspension.abuse_overview(conn)}
            page = overview([], abuse=list(rows.values()))
            assert (customer in page) == (customer in rows)
            return rows[customer]["state"] if customer in rows else None

        assert dashboard_state(abuser) == "suspended"
        assert dashboard_state(neighbour) is None

        url = metering.database.url.get_secret_value()
        assert plg(["--database-url", url, "customers", "unsuspend", abuser]) == 0
        wait_for(lambda: check(abuser)["allowed"] is True, timeout=60, what="unsuspended")
        # Its events were metered all along (the evidence counts).
        assert check(abuser)["usage"] == 90
        assert dashboard_state(abuser) == "suspected"  # lifted, its signals still on the CS dashboard

        assert plg(["--database-url", url, "customers", "suspend", neighbour, "--reason", "chargeback"]) == 0
        body = wait_for(lambda: (b := check(neighbour)).get("code") == "suspended" and b, timeout=60)
        assert body["reason"] == "chargeback"
        assert body["suspended_until"] is None  # by hand: until lifted
        assert plg(["--database-url", url, "customers", "unsuspend", "no-such-customer"]) == 1


def test_cost_lists_each_customers_events_stored_bytes_and_cpu_share(metering: Metering):
    from decimal import Decimal

    from services.cli.metering import cost_report

    free_a, free_b, pro = metering.customer("free"), metering.customer("free"), metering.customer("pro")
    metering.start()
    for customer, n in ((free_a, 30), (free_b, 10), (pro, 5)):
        metering.send(usage_event(customer) for _ in range(n))
    for customer, n in ((free_a, 30), (free_b, 10), (pro, 5)):
        wait_for(lambda c=customer, n=n: metering.period_total(c) == (Decimal(n), n), what=f"{n} counted")

    def report(plan: str | None) -> dict:
        with psycopg.connect(metering.database.url.get_secret_value()) as conn:
            rows = wait_for(
                lambda: (
                    (
                        r := cost_report(
                            conn,
                            plan=plan,
                            cpu_us_per_event=13.0,
                            kafka=metering.kafka,
                            registry=metering.registry,
                            prefix=metering.prefix,
                        )
                    )
                    and sum(x.events for x in r) == (40 if plan else 45)
                    and r
                ),
                what="usage-periods read",
            )
        return {r.customer_id: r for r in rows}

    free = report("free")
    assert pro not in free
    assert free[free_a].events == 30
    assert free[free_b].events == 10
    assert free[free_a].cpu_seconds == round(30 * 13e-6, 3)
    assert free[free_a].cpu_share_percent == round(100 * 30 / 45, 2)  # of every customer's events
    assert free[free_a].stored_bytes > free[free_b].stored_bytes > 0
    assert report(None)[pro].events == 5
