"""The onboarding engine (services/growth/onboarding.py): config validation, conditions over counts,
flags and intent, done-in-product skipping, priorities."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.growth.onboarding import (
    COMPLETED,
    DONE_IN_PRODUCT,
    HIDDEN,
    NEXT,
    PENDING,
    OnboardingConfigError,
    load_onboarding,
    parse_onboarding,
    recommend,
)

CONFIG = parse_onboarding(
    {
        "flow_flag": "onboarding_flow",
        "default_flow": "main",
        "flows": {
            "main": {
                "steps": [
                    {
                        "id": "invite",
                        "intent": "invite_team",
                        "priority": 50,
                        "when": {"attribute": "counts.project_created", "op": "gte", "value": 1},
                        "done_when": {
                            "attribute": "customer_counts.team_invite_sent",
                            "op": "gte",
                            "value": 1,
                        },
                    },
                    {
                        "id": "project",
                        "intent": "import_data",
                        "priority": 100,
                        "done_when": {"attribute": "counts.project_created", "op": "gte", "value": 1},
                    },
                    {
                        "id": "export",
                        "priority": 10,
                        "when": {
                            "all": [
                                {"attribute": "flags.advanced_export", "op": "eq", "value": True},
                                {"not": {"attribute": "plan", "op": "eq", "value": "enterprise"}},
                            ]
                        },
                        "done_when": {"attribute": "counts.export_generated", "op": "gte", "value": 1},
                    },
                ]
            }
        },
    }
)


def ctx(**kw):
    base = {"counts": {}, "customer_counts": {}, "flags": {"advanced_export": True}, "plan": "free"}
    base.update(kw)
    return base


def statuses(rec):
    return {s.step.id: s.status for s in rec.steps}


def test_the_shipped_flows_load_and_name_the_counted_events() -> None:
    config = load_onboarding(Path("deploy/config/onboarding.yaml"))
    assert set(config.flows) == {"classic", "team_first"}
    assert {"project_created", "data_imported"} <= config.person_events
    assert "team_invite_sent" in config.customer_events


def test_the_highest_priority_step_not_done_is_next() -> None:
    rec = recommend(CONFIG, "main", ctx(), [])
    assert rec.next is not None
    assert rec.next.step.id == "project"
    assert statuses(rec) == {"project": NEXT, "invite": HIDDEN, "export": PENDING}
    assert "priority" in rec.why


def test_a_step_done_in_the_product_is_skipped_and_unlocks_the_next() -> None:
    rec = recommend(CONFIG, "main", ctx(counts={"project_created": 2}), [])
    assert statuses(rec) == {"project": DONE_IN_PRODUCT, "invite": NEXT, "export": PENDING}
    rec = recommend(
        CONFIG, "main", ctx(counts={"project_created": 2}, customer_counts={"team_invite_sent": 1}), []
    )
    assert rec.next is not None
    assert rec.next.step.id == "export"


def test_completed_steps_intent_and_flags_hide_or_skip() -> None:
    rec = recommend(CONFIG, "main", ctx(intent="import_data", counts={"project_created": 1}), ["export"])
    assert statuses(rec) == {"project": DONE_IN_PRODUCT, "invite": HIDDEN, "export": COMPLETED}
    assert rec.next is None
    assert "no step" in rec.why
    rec = recommend(
        CONFIG,
        "main",
        ctx(
            flags={"advanced_export": False},
            counts={"project_created": 1},
            customer_counts={"team_invite_sent": 3},
        ),
        [],
    )
    assert rec.next is None


def test_an_unknown_flow_falls_back_to_the_default() -> None:
    assert recommend(CONFIG, "gone", ctx(), []).flow == "main"


def test_an_invalid_config_reports_every_error_at_once() -> None:
    with pytest.raises(OnboardingConfigError) as caught:
        parse_onboarding(
            {
                "default_flow": "missing",
                "flows": {
                    "a": {
                        "steps": [
                            {
                                "id": "x",
                                "priority": "high",
                                "done_when": {"attribute": "counts.x", "op": "gte", "value": 1},
                            },
                            {"id": "x", "when": {"attribute": "plan", "op": "matches", "value": ".*"}},
                            {"title": "no id"},
                        ]
                    },
                    "b": {"steps": []},
                },
            }
        )
    text = "\n".join(caught.value.errors)
    for needle in (
        "priority",
        "twice",
        "'matches' is not one of",
        "done_when",
        ".id",
        "flows.b.steps",
        "default_flow",
    ):
        assert needle in text, (needle, text)


def test_conditions_are_data_never_code() -> None:
    hostile = {"attribute": "__import__('os').system('true')", "op": "eq", "value": 1}
    config = parse_onboarding(
        {"default_flow": "f", "flows": {"f": {"steps": [{"id": "s", "when": hostile, "done_when": hostile}]}}}
    )
    rec = recommend(config, "f", ctx(), [])
    assert rec.next is None  # an attribute nobody has: the condition is simply false
