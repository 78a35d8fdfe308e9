"""Onboarding completion actions on the real stack (issue 20, seed 002 markComplete: "trigger
post-completion hook, e.g. unlock feature"): completing a step sets a flag for the person and one for the
whole customer (seen by POST /v1/flags/evaluate and by the next onboarding step's condition), grants a trial
feature the entitlement API then allows, and emits a named event — each exactly once however often, and
however concurrently, the completion is retried — and every action is in the audit ledger with who did it."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml

from services.kernel.topics import USAGE_EVENTS, topic
from tests.auth_support import new_customer
from tests.integration.growth.conftest import GrowthFactory, wait_for
from tests.integration.ingest.conftest import read_topic
from tests.integration.metering.conftest import metering  # noqa: F401 - the entitlement API's fixture
from tests.integration.metering.harness import Metering

ONBOARDING = {
    "version": 1,
    "default_flow": "main",
    "flows": {
        "main": {
            "steps": [
                {
                    "id": "connect-source",
                    "title": "Connect a data source",
                    "priority": 100,
                    "done_when": {"attribute": "counts.source_connected", "op": "gte", "value": 1},
                    "on_complete": [
                        {"set_flag": {"flag": "sso_enforcement", "variant": "on", "for": "person"}},
                        {"set_flag": {"flag": "growth_upgrade_prompt", "variant": "off", "for": "customer"}},
                        {"grant_trial": {"feature": "audit_log", "days": 7}},
                        {
                            "emit": {
                                "event": "onboarding_reward_granted",
                                "properties": {"reward": "audit_log_trial", "days": 7},
                            }
                        },
                    ],
                },
                {
                    # Shown only once the completion above set the person's flag.
                    "id": "enforce-sso",
                    "title": "Turn on SSO for your team",
                    "priority": 50,
                    "when": {"attribute": "flags.sso_enforcement", "op": "eq", "value": True},
                    "done_when": {"attribute": "counts.sso_enforced", "op": "gte", "value": 1},
                },
            ]
        }
    },
}


def _evaluate(client: Any, flag: str, customer: str, person: str) -> dict[str, Any]:
    r = client.post(
        "/v1/flags/evaluate", json={"flag_key": flag, "context": {"customer_id": customer, "user_id": person}}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_completion_actions_apply_exactly_once_are_audited_and_seen_everywhere(
    start_growth: GrowthFactory,
    metering: Metering,  # noqa: F811 - the fixture imported above
    provisioned: Any,
    tmp_path: Path,
) -> None:
    config = tmp_path / "onboarding.yaml"
    config.write_text(yaml.safe_dump(ONBOARDING))
    growth = start_growth(onboarding_path=config)
    entitlements = metering.start_entitlements()
    db = growth.settings.database.url.get_secret_value()
    customer = new_customer(growth.settings.database, plan="pro")  # pro lacks audit_log
    person, other = f"user-{uuid.uuid4().hex[:6]}", f"user-{uuid.uuid4().hex[:6]}"
    base = f"/v1/onboarding/{customer}/{person}"

    with growth.client() as client, entitlements.client() as ents:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60, what="growth ready")
        assert ents.get(f"/v1/entitlements/{customer}/audit_log").json()["allowed"] is False
        assert _evaluate(client, "sso_enforcement", customer, person)["value"] is False
        assert client.get(f"{base}/next").json()["step"]["id"] == "connect-source"

        # Retried at once from four clients (a double click, a retrying SDK, a replay): one records it.
        answers: list[Any] = []

        def complete() -> None:
            with growth.client() as c:
                answers.append(c.post(f"{base}/steps/connect-source/complete"))

        threads = [threading.Thread(target=complete) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        answers.append(client.post(f"{base}/steps/connect-source/complete"))
        assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 201], [a.text for a in answers]
        bodies = [a.json() for a in answers]
        assert len({b["completed_at"] for b in bodies}) == 1
        actions = bodies[0]["actions"]
        assert [a["kind"] for a in actions] == ["set_flag", "set_flag", "grant_trial", "emit"]
        assert all(b["actions"] == actions for b in bodies), "every answer lists the one application"
        assert actions[0]["actor"].startswith("operator:")

        # set_flag for the person: the flag evaluates on for them, not for a colleague; for the customer:
        # everyone of the customer gets the value; the onboarding condition sees the person's flag.
        mine = _evaluate(client, "sso_enforcement", customer, person)
        assert (mine["value"], mine["variant"], mine["reason"]) == (True, "on", "TARGETING_MATCH")
        assert _evaluate(client, "sso_enforcement", customer, other)["value"] is False
        for who in (person, other):
            prompt = _evaluate(client, "growth_upgrade_prompt", customer, who)
            assert (prompt["variant"], prompt["reason"]) == ("off", "TARGETING_MATCH")
        assert client.get(f"{base}/next").json()["step"]["id"] == "enforce-sso"
        assert client.get(f"/v1/onboarding/{customer}/{other}/next").json()["step"]["id"] == "connect-source"

        # grant_trial: the entitlement API allows the feature the plan lacks, until the trial's end.
        answer = wait_for(
            lambda: (b := ents.get(f"/v1/entitlements/{customer}/audit_log").json())["allowed"] and b,
            timeout=60,
            what="audit_log allowed by the trial",
        )
        until = datetime.fromisoformat(answer["trial_until"].replace("Z", "+00:00"))
        assert timedelta(days=6, hours=23) < until - datetime.now(UTC) <= timedelta(days=7)
        assert answer["upgrade"] is None

    with psycopg.connect(db) as conn:
        ledger = conn.execute(
            "SELECT action_index, kind, actor FROM growth_onboarding_actions WHERE customer_id = %s"
            " ORDER BY action_index",
            (customer,),
        ).fetchall()
        trials = conn.execute(
            "SELECT feature, source FROM feature_trials WHERE customer_id = %s", (customer,)
        ).fetchall()
        overrides = conn.execute(
            "SELECT flag_key, scope, subject_id FROM growth_flag_overrides WHERE customer_id = %s ORDER BY 1",
            (customer,),
        ).fetchall()
    assert [(i, k) for i, k, _ in ledger] == [
        (0, "set_flag"),
        (1, "set_flag"),
        (2, "grant_trial"),
        (3, "emit"),
    ]
    assert trials == [("audit_log", "onboarding:main/connect-source")]
    assert overrides == [("growth_upgrade_prompt", "customer", ""), ("sso_enforcement", "person", person)]

    # emit: the named event exactly once, for the person, beside the one onboarding_step_completed.
    s = growth.settings
    usage = read_topic(
        s.kafka.bootstrap_servers, s.registry.url, topic(USAGE_EVENTS, provisioned.prefix).name, 2, settle=2.0
    )
    # (the evaluations above also wrote $flag_exposure events: not what this test is about)
    events = [
        r.value()
        for r in usage
        if r.value()["customer_id"] == customer and not r.value()["name"].startswith("$")
    ]
    assert sorted(e["name"] for e in events) == ["onboarding_reward_granted", "onboarding_step_completed"]
    reward = next(e for e in events if e["name"] == "onboarding_reward_granted")
    assert reward["user_id"] == person
    assert reward["properties"] == {
        "reward": "audit_log_trial",
        "days": 7,
        "step_id": "connect-source",
        "flow": "main",
    }
