"""The health score's streaming path on the real stack: enriched events → served score, the batch path
agreeing with it, alerts once (topic and webhook), identity merges re-attributing history."""

from __future__ import annotations

import time

import pytest

from services.health_score.batch import recompute
from services.health_score.processor import FactsBuilder
from services.health_score.registry import load_config
from services.health_score.store import HealthStore
from services.kernel import db
from services.kernel.topics import CUSTOMER_ALERTS, CUSTOMER_HEALTH
from tests.integration.health_score.harness import Health, WebhookSink, enriched, wait_for

pytestmark = pytest.mark.integration
DAY = 86_400_000


def test_events_change_the_served_score_and_the_batch_path_agrees(health: Health) -> None:
    api = health.start()
    acme = health.customer("acme")
    now = int(time.time() * 1000)
    history = [
        enriched(acme, "core_action_completed", person=f"p{i % 3}", ts=now - (i % 20) * DAY)
        for i in range(60)
    ]
    health.send(*history, enriched(acme, "seats_changed", properties={"seats": 3}))
    with api.client() as client:
        first = wait_for(
            lambda: (r := client.get(f"/v1/health/{acme}")).status_code == 200 and r.json(),
            what="a served score",
        )
        assert set(first) >= {"score", "band", "components", "trend", "explanation", "history"}
        assert first["band"] in ("red", "yellow", "green")
        assert first["explanation"]["factors"]
        assert first["history"]
        assert first["active_users"] == 3
        health.send(
            *[enriched(acme, "project_created", person="p0") for _ in range(5)],
            enriched(acme, "team_invite_sent", person="p1"),
        )
        changed = wait_for(
            lambda: (
                (b := client.get(f"/v1/health/{acme}").json())["computed_at"] > first["computed_at"]
                and b["score"] != first["score"]
                and b
            ),
            what="the changed score",
        )

        # Settled: every event is in PostgreSQL's facts and in the score served (two reads 0.5 s apart agree).
        def settled() -> dict | None:
            a = client.get(f"/v1/health/{acme}").json()
            time.sleep(0.5)
            b = client.get(f"/v1/health/{acme}").json()
            return b if a == b else None

        changed = wait_for(settled, what="a settled score")
        listed = client.get("/v1/health", params={"segment": "self_serve"}).json()["customers"]
        assert acme in [c["customer_id"] for c in listed]
        assert client.get("/v1/health", params={"band": "purple"}).status_code == 422
        assert client.get(f"/v1/health/{health.customer('nobody')}").status_code == 404

    config = load_config()
    with db.open_pool(health.database) as pool:
        store = HealthStore(pool, "unused")
        [(score, record, _)] = recompute(
            store, config, FactsBuilder(config, {}), changed["computed_at"], [acme]
        )
    assert score.score == changed["score"]
    assert record["factors"] == changed["explanation"]["factors"]
    assert record["components"] == changed["components"]


def test_a_failing_customer_alerts_once_on_the_topic_and_the_webhook(health: Health) -> None:
    webhook = WebhookSink()
    url = webhook.start()
    try:
        health.start(webhook_urls=[url])
        bad = health.customer("sinking")
        tenant = {
            "plan": "starter",
            "support_tier": "standard",
            "open_tickets": 9,
            "csm_owner": None,
            "billing_status": "past_due",
        }
        for _ in range(4):  # four batches around the threshold: one alert
            health.send(*[enriched(bad, "payment_failed", tenant=tenant) for _ in range(2)])
            time.sleep(0.3)
        wait_for(lambda: webhook.received, what="the webhook")
        alerts = health.consume_all(CUSTOMER_ALERTS, "alerts-reader", seconds=2.0)
        churn = [a for a in alerts if a["customer_id"] == bad and a["rule"] == "churn_risk"]
        assert len(churn) == 1
        assert [a["alert_id"] for a in webhook.received if a["rule"] == "churn_risk"] == [
            churn[0]["alert_id"]
        ]
        scores = [
            h for h in health.consume_all(CUSTOMER_HEALTH, "health-reader", 1.0) if h["customer_id"] == bad
        ]
        assert scores
        assert scores[-1]["band"] == "red"
    finally:
        webhook.close()


def test_an_identity_merge_re_attributes_history(health: Health) -> None:
    api = health.start()
    c = health.customer("merging")
    now = int(time.time() * 1000)
    health.send(
        *[enriched(c, "core_action_completed", person="anon-1", ts=now - 3 * DAY) for _ in range(3)],
        *[enriched(c, "core_action_completed", person="user-1", ts=now - DAY) for _ in range(3)],
    )
    with api.client() as client:
        wait_for(
            lambda: (r := client.get(f"/v1/health/{c}")).status_code == 200 and r.json()["active_users"] == 2,
            what="two people",
        )
        merge = enriched(
            c,
            "$person_merged",
            person="user-1",
            merge={"merged_id": "anon-1", "survivor_id": "user-1", "replaced_person_ids": ["anon-1"]},
        )
        health.send(merge)
        wait_for(
            lambda: client.get(f"/v1/health/{c}").json()["active_users"] == 1,
            what="one person after the merge",
        )
    with db.open_pool(health.database) as pool, pool.connection() as conn:
        rows = conn.execute("SELECT facts FROM health_daily_facts WHERE customer_id = %s", (c,)).fetchall()
        history = conn.execute(
            "SELECT day, path, record FROM health_scores_daily WHERE customer_id = %s AND day < current_date",
            (c,),
        ).fetchall()
    people = {p for (facts,) in rows for p in facts["people"]}
    assert people == {"user-1"}, "the merged person's past days now belong to the survivor"
    assert len(history) == 56, "the daily score history was rebuilt from the re-attributed facts"
    assert {path for _, path, _ in history} == {"batch"}
    yesterday = max(history, key=lambda h: h[0])[2]
    assert yesterday["active_users"] == 1


def test_a_replay_older_than_the_window_lands_in_its_days_and_leaves_the_score(health: Health) -> None:
    api = health.start()
    c = health.customer("replay")
    now = int(time.time() * 1000)
    health.send(enriched(c, "core_action_completed", person="p1"))
    with api.client() as client:
        before = wait_for(
            lambda: (r := client.get(f"/v1/health/{c}")).status_code == 200 and r.json(), what="score"
        )
        health.send(
            *[enriched(c, "core_action_completed", person="p2", ts=now - 120 * DAY) for _ in range(50)],
            enriched(c, "nps_submitted", properties={"score": 42}),
        )  # out of range: a dead letter
        after = wait_for(
            lambda: (b := client.get(f"/v1/health/{c}").json())["computed_at"] > before["computed_at"] and b,
            what="recomputed",
        )
    assert after["score"] == before["score"]
    with db.open_pool(health.database) as pool, pool.connection() as conn:
        days = conn.execute("SELECT count(*) FROM health_daily_facts WHERE customer_id = %s", (c,)).fetchone()
    assert days is not None
    assert days[0] == 2
