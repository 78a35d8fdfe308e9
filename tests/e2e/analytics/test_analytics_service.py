"""The analytics service as a process on the real stack: enriched events reach the store exactly once
across a SIGKILL mid-stream, every route is for operators, and ``plg analytics funnel --format json``
prints its contract."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.devstack.config import free_port
from services.kernel import apikeys
from services.kernel.db import migrate
from services.kernel.kafka import Consumer, Producer
from services.kernel.serde import SchemaRegistry
from services.kernel.topics import USAGE_EVENTS, USAGE_EVENTS_ENRICHED, topic
from tests.http_support import fuzz_as
from tests.integration.health_score.harness import enriched
from tests.integration.metering.harness import wait_for
from tests.processes import REPO, Proc

pytestmark = pytest.mark.integration


class Analytics:
    """One analytics service process at a time on a store directory of its own, and a producer of
    enriched events."""

    def __init__(
        self, env: dict[str, str], prefix: str, registry: SchemaRegistry, producer: Producer, logs: Path
    ):
        self.env, self.prefix, self.logs = env, prefix, logs
        self.port = int(env["ANALYTICS_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        spec = topic(USAGE_EVENTS_ENRICHED, prefix)
        assert spec.schema_path is not None
        self.topic = spec.name
        self.encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        self.producer = producer
        self.proc: Proc | None = None

    def start(self) -> Proc:
        self.proc = Proc("services.analytics", self.env, self.logs).start()
        wait_for(self.ready, timeout=60, what="analytics /readyz")
        return self.proc

    def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.alive(), self.logs.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def send(self, events: list[dict[str, Any]]) -> None:
        futures = [
            self.producer.send(self.topic, self.encoder.encode(e), key=e["customer_id"]) for e in events
        ]
        for f in futures:
            f.result(timeout=30)

    def timeline(self, customer: str, token: str, **params: Any) -> list[dict[str, Any]]:
        """The customer's stored events, newest first (GET .../timeline as an operator)."""
        answer = httpx.get(
            f"{self.url}/v1/analytics/customers/{customer}/timeline",
            params={"limit": 10_000, "since": "1d", **params},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["events"]  # type: ignore[no-any-return]

    def inserted(self) -> float:
        """Rows this process inserted (its /metrics, public like every ops endpoint)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith('plg_analytics_rows_total{outcome="inserted"}'):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture
def analytics(
    provisioned, stack, registry_settings, kafka_settings, database_settings, tmp_path
) -> Iterator[Analytics]:
    migrate(database_settings.url.get_secret_value())
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": stack.registry_url,
        "DATABASE_URL": stack.database_url,
        "PLG_TOPIC_PREFIX": provisioned.prefix,
        "PLG_LOG_FORMAT": "text",
        "ANALYTICS_PORT": str(free_port()),
        "ANALYTICS_PATH": str(tmp_path / "store"),
        "ANALYTICS_BATCH_WAIT_SECONDS": "0.05",
        # small batches so that the SIGKILL lands between them, mid-stream
        "ANALYTICS_MAX_BATCH": "50",
    }
    registry = SchemaRegistry(registry_settings)
    producer = Producer(kafka_settings, client_id="analytics-test")
    service = Analytics(env, provisioned.prefix, registry, producer, tmp_path / "analytics.log")
    try:
        yield service
    finally:
        if service.proc is not None:
            service.proc.terminate()
        producer.close()
        registry.close()


def plg(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``plg ARGS`` (the CLI) as a process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def operator_token(database_url: str, role: str = "viewer") -> str:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        _, token = apikeys.create_operator(conn, f"analyst-{uuid.uuid4().hex[:6]}", role)
    return token


def customer_key(database_url: str, customer: str) -> str:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers (customer_id, plan) VALUES (%s, 'free') ON CONFLICT DO NOTHING",
            (customer,),
        )
        return apikeys.create_key(conn, customer)[1]


def test_every_event_is_stored_exactly_once_across_a_sigkill(analytics: Analytics, stack) -> None:
    customer = f"{analytics.prefix}acme"
    events = [
        enriched(customer, "api_call_made", person=f"p{i % 40}", ts=int(time.time() * 1000) - i)
        for i in range(2000)
    ]
    analytics.start()

    def trickle() -> None:  # the first 1,500 over about 3 s, so the kill lands while they flow
        for start in range(0, 1500, 50):
            analytics.send(events[start : start + 50])
            time.sleep(0.1)

    sender = threading.Thread(target=trickle)
    sender.start()
    wait_for(lambda: analytics.inserted() >= 300, timeout=60, what="a first part stored")
    assert analytics.proc is not None
    analytics.proc.kill()  # mid-stream: batches of 50 stored, more on their way
    assert sender.is_alive(), "the events had all been sent before the kill: not mid-stream"
    sender.join()
    analytics.send(events[1500:])
    analytics.start()
    token = operator_token(stack.database_url)

    def stored() -> list[str]:
        return [e["event_id"] for e in analytics.timeline(customer, token)]

    wait_for(lambda: len(stored()) >= len(events), timeout=90, what="every event stored")
    time.sleep(1)  # anything duplicated late would show now
    ids = stored()
    assert len(ids) == len(events)
    assert sorted(ids) == sorted(e["event_id"] for e in events)


def test_routes_are_for_operators_and_the_cli_prints_the_funnel_contract(analytics: Analytics, stack) -> None:
    customer = f"{analytics.prefix}beta"
    now = int(time.time() * 1000)
    steps = ["signed_up", "project_created", "team_invite_sent"]
    events = []
    # p1 does all three in order, p2 the first two, p3 only the first
    for n, person in ((3, "p1"), (2, "p2"), (1, "p3")):
        for i, name in enumerate(steps[:n]):
            events.append(enriched(customer, name, person=person, ts=now - 60_000 + i * 1000))
    analytics.start()
    analytics.send(events)
    token = operator_token(stack.database_url)
    route = f"{analytics.url}/v1/analytics/funnel"
    params = {"steps": ",".join(steps), "customer": customer, "since": "1d"}

    def funnel() -> list[int]:
        answer = httpx.get(route, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        return [s["count"] for s in answer.json()["steps"]]

    # Queryable within seconds of the write: `make bench-analytics` measures how fast at 5k events/s; a
    # wall-clock bound here would only measure how busy the test machine is.
    wait_for(lambda: funnel() == [3, 2, 1], timeout=60, what="the funnel")

    assert httpx.get(route, params=params, timeout=10).status_code == 401
    key = customer_key(stack.database_url, customer)
    refused = httpx.get(route, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert refused.status_code == 403, refused.text
    bad = httpx.get(
        route,
        params={**params, "steps": "only_one"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_query"

    cli = plg(
        "analytics",
        "--url",
        analytics.url,
        "funnel",
        "--steps",
        ",".join(steps),
        "--customer",
        customer,
        "--window",
        "7d",
        "--since",
        "1d",
        "--format",
        "json",
        env={**os.environ, "PLG_OPERATOR_TOKEN": token},
    )
    assert cli.returncode == 0, cli.stderr
    assert orjson.loads(cli.stdout) == {
        "steps": [
            {"name": "signed_up", "count": 3},
            {"name": "project_created", "count": 2},
            {"name": "team_invite_sent", "count": 1},
        ]
    }
    no_token = plg(
        "analytics",
        "--url",
        analytics.url,
        "funnel",
        "--steps",
        "a,b",
        env={k: v for k, v in os.environ.items() if k != "PLG_OPERATOR_TOKEN"},
    )
    assert no_token.returncode == 1
    assert "PLG_OPERATOR_TOKEN" in no_token.stderr


def test_the_console_pages_render_the_answers_in_chromium(
    analytics: Analytics, stack, browser: Any, tmp_path
) -> None:
    customer = f"{analytics.prefix}gamma"
    day = 86_400_000
    start = int(time.time() * 1000) - 20 * day
    events = []
    # four persons sign up 20 days ago; three create a project, two invite; p1 and p2 come back weeks later
    for n, person in ((3, "p1"), (3, "p2"), (2, "p3"), (1, "p4")):
        for i, name in enumerate(["signed_up", "project_created", "team_invite_sent"][:n]):
            events.append(enriched(customer, name, person=person, ts=start + i * 60_000))
    for person in ("p1", "p2"):
        for k in range(10):  # the north star: 10 core actions within 30 days
            events.append(
                enriched(customer, "core_action_completed", person=person, ts=start + day + k * 3_600_000)
            )
        events.append(enriched(customer, "api_call_made", person=person, ts=start + 15 * day))
    analytics.start()
    analytics.send(events)
    token = operator_token(stack.database_url)
    wait_for(lambda: analytics.inserted() >= len(events), timeout=30, what="events stored")
    shots = Path(os.environ.get("ANALYTICS_SCREENSHOTS", str(tmp_path)))
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {token}"})
    page = context.new_page()
    page.goto(
        f"{analytics.url}/analytics/funnel?steps=signed_up,project_created,team_invite_sent&customer={customer}&since=30d"
    )
    counts = page.eval_on_selector_all("#funnel g.step", "gs => gs.map(g => Number(g.dataset.count))")
    assert counts == [4, 3, 2]
    page.screenshot(path=str(shots / "analytics-funnel.png"), full_page=True)
    page.goto(f"{analytics.url}/analytics/retention?customer={customer}&since=30d&weeks=4")
    assert page.locator("#retention tr").count() >= 2
    assert "100 %" in page.locator("#retention").inner_text()
    page.screenshot(path=str(shots / "analytics-retention.png"), full_page=True)
    page.goto(f"{analytics.url}/analytics/north-star?customer={customer}&since=30d")
    assert page.locator("#north-star").get_attribute("data-reached") == "2"
    page.screenshot(path=str(shots / "analytics-north-star.png"), full_page=True)
    # a hostile step name is shown as text, never as markup
    page.goto(f"{analytics.url}/analytics/funnel?steps=%3Cscript%3Ex%3C/script%3E,b&customer={customer}")
    assert page.locator("#funnel script").count() == 0
    context.close()
    # Without a session a browser gets the sign-in page (services/kernel/login.py, as on the CS dashboard),
    # no answer; a pasted operator token signs it in and takes it back to the page it asked for.
    anonymous = browser.new_context()
    signing_in = anonymous.new_page()
    asked = f"/analytics/funnel?steps=signed_up,project_created&customer={customer}&since=30d"
    response = signing_in.goto(analytics.url + asked)
    assert response is not None
    assert response.status == 200
    assert signing_in.url.startswith(f"{analytics.url}/auth/login?next=")
    assert signing_in.locator("#funnel").count() == 0
    signing_in.fill("#token", token)
    signing_in.click("#token-login")
    signing_in.wait_for_url(analytics.url + asked)
    counts = signing_in.eval_on_selector_all("#funnel g.step", "gs => gs.map(g => Number(g.dataset.count))")
    assert counts == [4, 3]
    # The API keeps its JSON answer: without a credential a 401, not a redirect.
    assert httpx.get(f"{analytics.url}/v1/analytics/retention", timeout=30).status_code == 401
    anonymous.close()


def test_imported_history_is_stored_once_marked_historical_and_never_metered(
    analytics: Analytics, stack, kafka_settings, registry_settings, tmp_path
) -> None:
    customer = f"{analytics.prefix}delta"
    key = customer_key(stack.database_url, customer)
    ports = {"ingest": free_port(), "enrichment": free_port()}
    env = {**analytics.env, "INGEST_PORT": str(ports["ingest"]), "ENRICHMENT_PORT": str(ports["enrichment"])}
    ingest = Proc("services.ingest", env, tmp_path / "ingest.log").start()
    enrichment = Proc("services.enrichment", env, tmp_path / "enrichment.log").start()
    try:
        analytics.start()
        for port, proc in ((ports["ingest"], ingest), (ports["enrichment"], enrichment)):
            wait_for(lambda p=port: _ready(p), timeout=60, what=f"{proc.module} ready")
        year_ago = int(time.time() * 1000) - 365 * 86_400_000
        history = tmp_path / "export.jsonl"
        lines = [
            # PostHog's export shape, Segment's, and plg's own
            {
                "uuid": str(uuid.uuid4()),
                "event": "signed_up",
                "distinct_id": "p1",
                "timestamp": year_ago,
                "properties": {"$browser": "Firefox", "$set": {"email": "x@example.com"}},
            },
            {
                "messageId": str(uuid.uuid4()),
                "type": "track",
                "event": "project_created",
                "userId": "p1",
                "timestamp": "2025-12-06T10:00:00Z",
                "properties": {"template": "blank"},
            },
            {
                "messageId": str(uuid.uuid4()),
                "type": "screen",
                "anonymousId": "a9",
                "timestamp": year_ago + 1000,
            },
            {
                "event_id": str(uuid.uuid4()),
                "name": "team_invite_sent",
                "user_id": "p1",
                "timestamp": year_ago + 2000,
            },
        ]
        history.write_text("\n".join(orjson.dumps(line).decode() for line in lines))
        ingest_url = f"http://127.0.0.1:{ports['ingest']}"
        cli = ["import", str(history), "--url", ingest_url]
        for _ in range(2):  # the same file twice: stored once
            done = plg(*cli, env={**os.environ, "PLG_API_KEY": key})
            assert done.returncode == 0, done.stdout + done.stderr
            assert "imported 4 event(s)" in done.stdout
        publishable = _publishable_key(stack.database_url, customer)
        refused = httpx.post(
            f"{ingest_url}/v1/import", content=b"{}", headers={"Authorization": f"Bearer {publishable}"}
        )
        assert refused.status_code == 403
        token = operator_token(stack.database_url)

        def stored() -> list[dict[str, Any]]:
            return analytics.timeline(customer, token, since="800d")

        events = wait_for(lambda: len(stored()) >= 4 and stored(), timeout=60, what="the history stored")
        time.sleep(1.5)  # the second import's events, enriched too, would show by now
        events = stored()
        assert sorted(e["name"] for e in events) == [
            "project_created",
            "screen_viewed",
            "signed_up",
            "team_invite_sent",
        ]
        assert all(e["historical"] for e in events)
        signed_up = next(e for e in events if e["name"] == "signed_up")
        assert signed_up["person"] == "p1"
        assert signed_up["properties"] == {"posthog_browser": "Firefox", "$historical": "true"}
        # Never metered: none of them is on usage-events, the only topic metering reads.
        consumer = Consumer(kafka_settings, f"{analytics.prefix}check-{uuid.uuid4().hex[:6]}")
        consumer.subscribe([topic(USAGE_EVENTS, analytics.prefix).name])
        seen = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen += [r.key() for r in consumer.consume(500, 0.5)]
        consumer.close()
        assert customer.encode() not in seen
    finally:
        for proc in (enrichment, ingest):
            proc.terminate()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _publishable_key(database_url: str, customer: str) -> str:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return apikeys.create_key(conn, customer, kind="publishable")[1]


def test_plg_privacy_forget_erases_the_person_from_the_store_for_good(analytics: Analytics, stack) -> None:
    customer = f"{analytics.prefix}eps"
    now = int(time.time() * 1000)
    before = [enriched(customer, "project_created", person=p, ts=now - 60_000) for p in ("gone", "stays")]
    analytics.start()
    analytics.send(before)
    token = operator_token(stack.database_url, "admin")

    def persons() -> list[str | None]:
        return sorted(e["person"] for e in analytics.timeline(customer, token))

    wait_for(lambda: persons() == ["gone", "stays"], timeout=30, what="both persons stored")
    forget = plg(
        "privacy",
        "forget",
        "--customer",
        customer,
        "--person",
        "gone",
        env={**analytics.env, "PLG_OPERATOR_TOKEN": token},
    )
    assert forget.returncode == 0, forget.stdout + forget.stderr
    wait_for(lambda: persons() == ["stays"], timeout=30, what="the person erased from the store")
    # A replay of the enriched topic cannot bring the erased history back; the person's later events
    # start a new history.
    assert analytics.proc is not None
    analytics.proc.terminate()
    replayed = [{**e, "event_id": str(uuid.uuid4())} for e in before if e["person_id"] == "gone"]
    later = enriched(customer, "signed_up", person="gone", ts=int(time.time() * 1000) + 1000)
    analytics.send([*replayed, later])
    analytics.start()
    wait_for(lambda: persons() == ["gone", "stays"], timeout=30, what="the new history stored")
    assert [e["name"] for e in analytics.timeline(customer, token, person="gone")] == ["signed_up"]
    # Requests are applied again at every start: the new history survives another restart.
    analytics.proc.terminate()
    analytics.start()
    wait_for(lambda: persons() == ["gone", "stays"], timeout=30, what="the new history kept across a restart")


def test_health_backtest_scores_past_days_against_later_activity(analytics: Analytics, stack) -> None:
    import psycopg

    day_ms = 86_400_000
    today = int(time.time() * 1000) // day_ms
    scored = today - 40
    customers = {f"{analytics.prefix}bt{i}": i < 4 for i in range(10)}  # the first four churn
    events = []
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for i, (customer, churns) in enumerate(customers.items()):
            score, band = (15 + i, "red") if churns else (60 + i, "yellow" if i == 4 else "green")
            if i == 4:
                score, band = 20, "red"  # a red customer that stays: red precision 4/5
            conn.execute(
                "INSERT INTO health_scores_daily (customer_id, day, score, band, segment, components, record,"
                " computed_at, path, config_version) VALUES (%s, DATE '1970-01-01' + %s::int, %s, %s, 'smb',"
                " '{}', '{}', 0, 'batch', 1)",
                (customer, scored, score, band),
            )
            events.append(enriched(customer, "api_call_made", ts=(scored - 1) * day_ms))
            if not churns:
                events.append(enriched(customer, "api_call_made", ts=(scored + 10) * day_ms))
        events.append(enriched(f"{analytics.prefix}clock", "api_call_made", ts=(today - 1) * day_ms))
    analytics.start()
    analytics.send(events)
    token = operator_token(stack.database_url)
    wait_for(lambda: analytics.inserted() >= len(events), timeout=30, what="activity stored")
    done = plg(
        "health",
        "--url",
        analytics.url,
        "backtest",
        "--since",
        "45d",
        "--format",
        "json",
        env={**analytics.env, "PLG_OPERATOR_TOKEN": token},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = orjson.loads(done.stdout)
    # Other tests' customers may have scores in the table; only these ten have events in this store.
    assert (report["points"], report["churned"]) == (10, 4)
    assert report["roc_auc"] == 1.0  # every churned customer scored below every one that stayed
    assert report["red_precision"] == 0.8  # five red, four of them churned


def test_product_qualified_leads_are_listed_published_once_and_signed_to_the_webhook(
    analytics: Analytics, stack, registry_settings, kafka_settings, browser: Any, tmp_path
) -> None:
    import psycopg

    from services.kernel.topics import ENTITLEMENT_EVENTS, PQL
    from services.kernel.webhooks import SIGNATURE_HEADER, verify
    from tests.integration.health_score.harness import WebhookSink

    secret = "pql-signing-secret"
    p = analytics.prefix
    grower, limited, paid, quiet = (f"{p}grower", f"{p}limited", f"{p}paid", f"{p}quiet")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for customer, plan, status in (
            (grower, "free", "active"),
            (limited, "growth", "trialing"),  # a trial of a paid plan is eligible too
            (paid, "pro", "active"),
            (quiet, "free", "active"),
        ):
            conn.execute(
                "INSERT INTO customers (customer_id, plan, billing_status) VALUES (%s, %s, %s)",
                (customer, plan, status),
            )
    day = 86_400_000
    now = int(time.time() * 1000)
    events = []
    for customer in (grower, limited, paid, quiet):  # every one activated: 3 projects
        events += [enriched(customer, "project_created", ts=now - 30 * day + i) for i in range(3)]
    for customer in (grower, paid):  # usage x5 against the two weeks before
        events += [enriched(customer, "api_call_made", ts=now - 20 * day + i) for i in range(10)]
        events += [enriched(customer, "api_call_made", ts=now - 2 * day + i) for i in range(50)]
    events += [enriched(quiet, "api_call_made", ts=now - 2 * day + i) for i in range(5)]
    spec = topic(ENTITLEMENT_EVENTS, p)
    assert spec.schema_path is not None
    registry = SchemaRegistry(registry_settings)
    hit = {
        "event_id": f"{limited}|api_requests|100",
        "customer_id": limited,
        "meter": "api_requests",
        "plan": "growth",
        "threshold_percent": 100,
        "usage": Decimal("10000"),
        "limit": Decimal("10000"),
        "hard_limit": True,
        "period_start": now - 10 * day,
        "period_end": now + 20 * day,
        "occurred_at": now - day,
        "upgrade": None,
    }
    webhook = WebhookSink()
    url = webhook.start()
    try:
        analytics.env.update(
            {
                "ANALYTICS_PQL_INTERVAL_SECONDS": "0.5",
                "ANALYTICS_PQL_WEBHOOK_URLS": orjson.dumps([url]).decode(),
                "ANALYTICS_PQL_WEBHOOK_SIGNING_SECRET": secret,
            }
        )
        analytics.start()
        analytics.send(events)
        encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        analytics.producer.send(spec.name, encoder.encode(hit), key=limited).result(timeout=30)
        wait_for(lambda: len(webhook.received) >= 2, timeout=120, what="two leads on the webhook")
        time.sleep(2)  # several more rounds: a lead is sent once, not once a round
        assert sorted(w["customer_id"] for w in webhook.received) == [grower, limited]
        by_customer = {w["customer_id"]: w for w in webhook.received}
        assert by_customer[grower]["reasons"] == ["activated", "usage_growth"]
        assert by_customer[grower]["evidence"]["usage"]["growth"] == 5.0
        assert by_customer[limited]["reasons"] == ["activated", "limit_hit"]
        assert by_customer[limited]["evidence"]["limit_hits"][0]["percent"] == 100
        for headers, body in webhook.raw:
            assert verify(secret, headers[SIGNATURE_HEADER], body) > 0
        # the pql topic: one record per lead, its evidence as JSON
        decoder = registry.decoder()
        consumer = Consumer(kafka_settings, f"{p}pql-{uuid.uuid4().hex[:6]}")
        consumer.subscribe([topic(PQL, p).name])
        records: list[dict[str, Any]] = []

        def both_read() -> bool:  # joining the group can take a while on a loaded machine
            records.extend(decoder.decode(r.value()) for r in consumer.consume(100, 0.5))
            return len(records) >= 2

        wait_for(both_read, timeout=60, what="two pql records")
        records.extend(decoder.decode(r.value()) for r in consumer.consume(100, 1.0))
        consumer.close()
        assert sorted(r["pql_id"] for r in records) == [f"pql:{grower}", f"pql:{limited}"]
        assert {r["customer_id"]: r["billing_status"] for r in records}[limited] == "trialing"
        # the CLI lists the same leads, best first (a 100 % limit hit outscores x5 growth), with evidence
        token = operator_token(stack.database_url)
        done = plg(
            "analytics", "--url", analytics.url, "pql", "--format", "json",
            env={**analytics.env, "PLG_OPERATOR_TOKEN": token},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        listed = [lead for lead in orjson.loads(done.stdout)["leads"] if lead["customer_id"].startswith(p)]
        assert [lead["customer_id"] for lead in listed] == [limited, grower]
        assert all(lead["qualified_at"] for lead in listed)
        # and the console page shows them
        context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {token}"})
        page = context.new_page()
        page.goto(f"{analytics.url}/analytics/pql")
        shown = page.eval_on_selector_all("#pql tr.lead", "rows => rows.map(r => r.dataset.customer)")
        assert [c for c in shown if c.startswith(p)] == [limited, grower]
        shots = Path(os.environ.get("ANALYTICS_SCREENSHOTS", str(tmp_path)))
        page.screenshot(path=str(shots / "analytics-pql.png"), full_page=True)
        context.close()
    finally:
        webhook.close()
        registry.close()


def test_analytics_answers_every_generated_request_as_its_openapi_document_says(
    analytics: Analytics, stack
) -> None:
    """schemathesis, authenticated: as a viewer (every route is for operators) on a store with events, and
    with a customer's secret key (403 on every route, as the document says) — never a 5xx."""
    customer = f"{analytics.prefix}fuzz"
    now = int(time.time() * 1000)
    analytics.start()
    analytics.send(
        [
            enriched(customer, name, person=f"p{i % 5}", ts=now - i * 1000)
            for i, name in enumerate(["signed_up", "project_created"] * 20)
        ]
    )
    viewer = operator_token(stack.database_url)
    wait_for(
        lambda: (
            httpx.get(
                f"{analytics.url}/v1/analytics/activity",
                params={"customer": customer},
                headers={"Authorization": f"Bearer {viewer}"},
                timeout=30,
            ).status_code
            == 200
        ),
        timeout=60,
        what="analytics answering",
    )
    fuzz_as(
        "analytics",
        analytics.url,
        [({}, viewer), ({}, customer_key(stack.database_url, customer))],
        max_examples=5,
        min_requests=45,  # 9 operations
        # A schema-valid string can still be no time or window ("since=0000", "window=000"), no event
        # list ("steps="): a precise 400, which JSON Schema cannot say. Every other check (no 5xx,
        # answers as documented) stays on.
        checks={"positive_data_acceptance": {"enabled": False}},
    )
