"""The browser SDK in a real browser against the real ingest: dist/plg.iife.js on a page served on loopback
(another origin than ingest's, so CORS and the preflight are real), headless Debian Chromium driven by
Playwright, every event checked on ``usage-events`` by event_id."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.integration.ingest.conftest import RunningIngest, read_topic
from tests.integration.sdk.conftest import BrowserTenant, Site, ingest_takes_consent

pytestmark = pytest.mark.integration


def _url(site: Site, ingest: RunningIngest, tenant: BrowserTenant, **query: str) -> str:
    consent_field = "1" if ingest_takes_consent() else "0"
    params = {"key": tenant.key, "host": ingest.url, "sendConsent": consent_field, **query}
    return f"{site.url}/index.html?{urlencode(params)}"


def _open(browser: Any, site: Site, ingest: RunningIngest, tenant: BrowserTenant, **query: str) -> Any:
    page = browser.new_page()
    page.goto(_url(site, ingest, tenant, **query))
    page.wait_for_function("window.plg && plg.stats !== null")
    return page


def _track(page: Any, n: int, name: str = "core_action_completed") -> list[str]:
    ids: list[str] = page.evaluate(
        "([n, name]) => Array.from({length: n}, (_, i) => plg.track(name, {action: 'a' + i}))", [n, name]
    )
    assert all(ids), "every track() returned an event id"
    return ids


def _delivered(stack: Any, provisioned: Any, expected: int) -> list[dict[str, Any]]:
    records = read_topic(
        stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), expected, settle=2.0
    )
    return [m.value() for m in records]


def test_events_survive_an_outage_and_reloads_and_arrive_exactly_once(
    browser: Any,
    site: Site,
    ingest: RunningIngest,
    browser_tenant: BrowserTenant,
    stack: Any,
    provisioned: Any,
) -> None:
    page = _open(browser, site, ingest, browser_tenant)
    online = _track(page, 5)
    page.wait_for_function("plg.stats.sent === 5", timeout=15_000)
    assert page.evaluate("plg.stats.storage") == "indexeddb"

    # The network goes: every request to ingest fails as a lost connection would.
    page.route(f"{ingest.url}/**", lambda route: route.abort("internetdisconnected"))
    offline = _track(page, 10)
    page.evaluate("plg.flush()")
    page.wait_for_function("plg.stats.retries >= 1 && plg.pending() === 10", timeout=15_000)
    page.evaluate("plg.persisted()")

    page.reload()  # still offline: the queue comes back from IndexedDB, nothing was handed off
    page.wait_for_function("window.plg && plg.stats !== null && plg.pending() === 10", timeout=15_000)
    after_reload = _track(page, 3)
    page.wait_for_function("plg.stats.retries >= 1", timeout=15_000)

    page.unroute(f"{ingest.url}/**")  # the network is back
    page.evaluate("plg.flush()")
    page.wait_for_function("plg.pending() === 0", timeout=30_000)

    # A reload right after tracking, online: what is queued or in flight is handed to keepalive requests
    # and written down, so the next page sends none of it again.
    on_hide = _track(page, 4)
    page.reload()
    page.wait_for_function("window.plg && plg.stats !== null", timeout=15_000)
    page.evaluate("plg.flush()")
    page.wait_for_function("plg.pending() === 0", timeout=15_000)

    tracked = online + offline + after_reload + on_hide
    delivered = _delivered(stack, provisioned, len(tracked))
    counts = Counter(e["event_id"] for e in delivered)
    assert set(counts) == set(tracked), (
        f"missing {set(tracked) - set(counts)}, extra {set(counts) - set(tracked)}"
    )
    assert [i for i, n in counts.items() if n > 1] == [], "an event arrived twice"
    assert {e["customer_id"] for e in delivered} == {browser_tenant.customer_id}
    sessions = {e["session_id"] for e in delivered}
    assert len(sessions) == 1, "one session across the reloads"
    assert {e["anonymous_id"] for e in delivered} == {page.evaluate("plg.anonymousId")}
    page.close()


def test_with_consent_pending_nothing_leaves_the_page_before_grant(
    browser: Any,
    site: Site,
    ingest: RunningIngest,
    browser_tenant: BrowserTenant,
    stack: Any,
    provisioned: Any,
) -> None:
    requests: list[str] = []
    page = browser.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.goto(_url(site, ingest, browser_tenant, consent="pending"))
    page.wait_for_function("window.plg && plg.stats !== null")
    before = int(time.time() * 1000)
    ids = _track(page, 3)
    page.evaluate("plg.identify('user-77')")
    page.evaluate("plg.flush()")
    page.wait_for_timeout(1500)  # several flush intervals: nothing may go out meanwhile

    assert [u for u in requests if u.startswith(ingest.url)] == [], "nothing was sent before grant()"
    assert page.evaluate("localStorage.length") == 0, "nothing written to localStorage"
    assert page.evaluate("indexedDB.databases().then(d => d.length)") == 0, "no IndexedDB database"
    assert page.evaluate("plg.pending()") == 4

    granted_at = int(time.time() * 1000)
    page.evaluate("plg.consent.grant()")
    page.wait_for_function("plg.pending() === 0 && plg.stats.sent === 4", timeout=15_000)
    assert any(u.startswith(ingest.url) for u in requests)
    delivered = _delivered(stack, provisioned, 4)
    by_id = {e["event_id"]: e for e in delivered}
    for event_id in ids:
        tracked_at = int(by_id[event_id]["timestamp"].timestamp() * 1000)  # timestamp-millis, decoded
        assert before <= tracked_at < granted_at, "the original timestamp is kept"
        assert by_id[event_id]["user_id"] is None, "tracked before identify: no user id"
    assert len(delivered) == 4
    if ingest_takes_consent():
        assert {str(e.get("consent")) for e in delivered} == {str({"analytics": True})}, "the purpose arrives"
    page.close()
