"""The CS dashboard in a real browser: events sent through ingest (→ enrichment → health score) show up on
the customer's page — its new score and the new event — without a reload. Headless Debian Chromium driven
by Playwright (``make install`` installs the browser; ``playwright install`` cannot download one here)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.devstack.config import free_port
from services.enrichment.app import build_app as build_enrichment
from services.enrichment.config import EnrichmentSettings
from services.ingest import store as ingest_store
from services.ingest.app import build_app as build_ingest
from services.ingest.config import IngestSettings
from services.kernel.settings import PlatformSettings
from tests.integration.health_score.harness import Health, wait_for
from tests.integration.metering.harness import Running, run_in_thread, serve

pytestmark = pytest.mark.integration

#: Where the screenshot goes (the test's own tmp dir unless HEALTH_SCREENSHOT names a file, e.g. the docs').
SCREENSHOT_ENV = "HEALTH_SCREENSHOT"


def _event(name: str, user: str, **props: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "name": name,
        "timestamp": int(time.time() * 1000),
        "user_id": user,
        "properties": props,
    }


def test_events_through_ingest_update_the_customer_page_live(
    health: Health, browser: Any, tmp_path: Path
) -> None:
    url = health.database.url.get_secret_value()
    customer = f"{health.prefix}dash-co"
    with psycopg.connect(url, autocommit=True) as conn:
        ingest_store.create_customer(conn, customer, "starter", name="Dashboard Co")
        _, token = ingest_store.create_key(conn, customer, "browser test")
    platform = PlatformSettings(topic_prefix=health.prefix, log_format="text")
    common: dict[str, Any] = {
        "kafka": health.kafka,
        "registry": health.registry_settings,
        "database": health.database,
        "platform": platform,
    }
    ingest_port = free_port()
    ingest_app = build_ingest(IngestSettings(host="127.0.0.1", port=ingest_port, **common))
    ingest = serve(ingest_app, ingest_port, "ingest")
    enrichment: Running = run_in_thread(
        build_enrichment(
            EnrichmentSettings(port=0, instance_id=f"enr-{uuid.uuid4().hex[:6]}", batch_wait_ms=20, **common)
        ),
        "enrichment",
    )
    try:
        wait_for(lambda: all(c() for c in enrichment.app.readiness.values()), timeout=60, what="enrichment")
        api = health.start()
        headers = {"Authorization": f"Bearer {token}"}
        with ingest.client() as http:
            first = [_event("core_action_completed", f"user-{i % 2}", action="report") for i in range(6)]
            assert http.post("/v1/batch", json={"batch": first}, headers=headers).status_code < 300
            with api.client() as client:
                before = wait_for(
                    lambda: (r := client.get(f"/v1/health/{customer}")).status_code == 200 and r.json(),
                    what="the first score",
                )

            # The dashboard is for operators: the page, its fetches and its SSE stream carry the token.
            assert api.token is not None
            operator = {"Authorization": f"Bearer {api.token}"}
            page = browser.new_page(viewport={"width": 1280, "height": 900}, extra_http_headers=operator)
            page.goto(f"{api.url}/customers/{customer}")
            page.evaluate("window.__loadedOnce = true")  # gone if the page reloads
            assert page.locator("#score").inner_text() == str(before["score"])

            more = [
                _event("team_invite_sent", "user-1", role="member", invitee_domain="example.com"),
                *[_event("project_created", f"user-{i}", project_type="app") for i in range(3)],
            ]
            assert http.post("/v1/batch", json={"batch": more}, headers=headers).status_code < 300
            page.locator("#events", has_text="team_invite_sent").wait_for(timeout=30_000)
            page.wait_for_function(
                f"document.getElementById('score').textContent !== '{before['score']}'", timeout=30_000
            )
        # The explanation follows too: user-2's projects make a third active user.
        page.locator("#meta", has_text="3 active of 3 seats").wait_for(timeout=30_000)
        assert page.evaluate("window.__loadedOnce") is True, "the page was reloaded"
        with api.client() as client:
            after = client.get(f"/v1/health/{customer}").json()
        assert page.locator("#score").inner_text() == str(after["score"])

        shot = tmp_path / "customer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        overview = browser.new_page(viewport={"width": 1280, "height": 720}, extra_http_headers=operator)
        overview.goto(api.url + "/")
        overview.locator(f"#c-{customer}").wait_for(timeout=10_000)
        target = os.environ.get(SCREENSHOT_ENV)
        if target:
            overview.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target)
            shutil.copy(tmp_path / "overview.png", Path(target).with_name("dashboard-overview.png"))
    finally:
        enrichment.close()
        ingest.close()


def test_the_customer_list_is_searched_filtered_and_shows_revenue_at_risk_per_band(
    health: Health, browser: Any, tmp_path: Path
) -> None:
    from decimal import Decimal

    from tests.integration.health_score.harness import enriched

    url = health.database.url.get_secret_value()
    sinking, steady, frozen = (
        health.customer("list-sinking"),
        health.customer("list-steady"),
        health.customer("list-frozen"),
    )
    with psycopg.connect(url, autocommit=True) as conn:
        for cid, plan, csm, version in (
            (sinking, "starter", "dana", None),  # 29.00
            (steady, "growth", "lee", None),  # 99.00
            (frozen, "pro", None, "pro-2025-01"),  # grandfathered: 39.00
        ):
            conn.execute(
                "INSERT INTO customers (customer_id, name, plan, csm_owner, price_version)"
                " VALUES (%s, %s, %s, %s, %s)",
                (cid, f"{cid} Inc", plan, csm, version),
            )
        conn.execute("UPDATE customers SET suspended_at = now() WHERE customer_id = %s", (frozen,))
    price = {sinking: Decimal("29.00"), steady: Decimal("99.00"), frozen: Decimal("39.00")}
    api = health.start()
    bad_tenant = {
        "plan": "starter",
        "support_tier": "standard",
        "open_tickets": 9,
        "csm_owner": "dana",
        "billing_status": "past_due",
    }
    health.send(
        *[enriched(sinking, "payment_failed", tenant=bad_tenant) for _ in range(4)],
        *[enriched(steady, "core_action_completed", person=f"p{i % 3}", plan="growth") for i in range(30)],
        *[enriched(frozen, "core_action_completed", person="p1", plan="pro") for _ in range(3)],
    )
    mine = {"q": health.customer("list-")}  # this test's customers only (the database is shared)
    with api.client() as client:
        listed = wait_for(
            lambda: (
                (r := client.get("/v1/health", params=mine)).status_code == 200
                and (body := r.json())["total"] == 3
                and {c["customer_id"]: c["band"] for c in body["customers"]}[sinking] == "red"
                and body
            ),
            timeout=60,
            what="three scored customers, the sinking one red",
        )
        bands = {c["customer_id"]: c["band"] for c in listed["customers"]}
        assert bands[sinking] == "red"
        expected = {
            b: sum((price[c] for c, band in bands.items() if band == b), Decimal(0)) for b in bands.values()
        }
        for band, total in expected.items():
            assert Decimal(listed["revenue_at_risk"][band]["mrr"]) == total
        assert {c["customer_id"]: c["mrr"] for c in listed["customers"]} == {
            c: str(p) for c, p in price.items()
        }
        by_csm = client.get("/v1/health", params={**mine, "csm": "lee"}).json()
        assert [c["customer_id"] for c in by_csm["customers"]] == [steady]
        suspended = client.get("/v1/health", params={**mine, "suspended": "true"}).json()
        assert [c["customer_id"] for c in suspended["customers"]] == [frozen]
        assert client.get("/v1/health", params={"suspended": "maybe"}).status_code == 422

    assert api.token is not None
    page = browser.new_page(
        viewport={"width": 1280, "height": 900}, extra_http_headers={"Authorization": f"Bearer {api.token}"}
    )
    page.goto(api.url + "/")
    page.fill("#f-q", health.customer("list-"))
    page.select_option("#f-plan", "starter")
    page.click("#filters button")
    page.wait_for_url("**plan=starter**")
    shown = page.eval_on_selector_all("tr[id^='c-']", "rows => rows.map(r => r.id.slice(2))")
    assert shown == [sinking]
    assert page.locator("#rev-red").get_attribute("data-mrr") == "29.00"
    assert page.locator("#rev-green").get_attribute("data-mrr") == "0.00"
    page.goto(f"{api.url}/?q={health.customer('list-')}&suspended=yes")
    row = page.locator(f"#c-{frozen}")
    assert row.locator(".tag").inner_text() == "suspended"
    assert row.locator(".mrr").inner_text() == "39.00"
    target = os.environ.get(SCREENSHOT_ENV)
    page.goto(f"{api.url}/?q={health.customer('list-')}")
    page.screenshot(
        path=str(Path(target).with_name("dashboard-customer-list.png") if target else tmp_path / "l.png")
    )
