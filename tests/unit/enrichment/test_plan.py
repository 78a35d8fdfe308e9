"""The tracking plan loads, and every error of a bad plan is reported at once with its location."""

from __future__ import annotations

import pytest
import yaml

from services.enrichment.plan import DEFAULT_PLAN_PATH, Mode, PlanError, Unplanned, load_plan, parse_plan
from services.plans import load_config

SEED_EVENTS = (
    "signup_completed",
    "api_call_made",
    "project_created",
    "team_invite_sent",
    "core_action_completed",
)


def _minimal(**events):
    return {"version": 1, "effective_date": "2025-01-01", "events": events or {"a": {}}}


def test_default_plan_loads_with_the_seed_events_and_checks_against_metering():
    plan = load_plan(DEFAULT_PLAN_PATH, load_config())
    for name in SEED_EVENTS:
        assert name in plan.events
    assert plan.mode is Mode.FLAG
    assert plan.unplanned_events is Unplanned.FLAG
    # Every metered event is planned, so its meters' properties are declared.
    metered = {m.event for m in load_config().meters}
    assert metered <= set(plan.events)


def test_defaults_are_flag_for_mode_and_unplanned_events():
    plan = parse_plan(_minimal())
    assert plan.mode is Mode.FLAG
    assert plan.unplanned_events is Unplanned.FLAG


def test_every_error_is_reported_at_once_with_its_location():
    doc = {
        "version": 0,
        "effective_date": "2025-01-01",
        "mode": "strict",
        "unplanned_events": "maybe",
        "events": {
            "a": {"properties": {"n": {"type": "string", "min": 1}}},
            "b": {"properties": {"s": {"type": "string", "requried": True}}},
            "c": {"schema_version": 2, "accepted_versions": [1], "properties": {}},
            "d": {
                "schema_version": 2,
                "accepted_versions": [1, 2],
                "renames": {1: {"old": "missing"}},
                "properties": {"x": {"type": "integer", "enum": ["a"]}},
            },
        },
    }
    with pytest.raises(PlanError) as info:
        parse_plan(doc)
    text = "\n".join(info.value.errors)
    assert "events.a.properties.n: min/max apply to integer and number properties" in text
    assert "events.b.properties.s.requried: Extra inputs are not permitted" in text
    assert "events.c: accepted_versions must include the current schema_version 2" in text
    assert "events.d.properties.x: enum values ['a'] are not of type integer" in text
    assert "version:" in text
    assert "mode:" in text
    assert "unplanned_events:" in text
    assert len(info.value.errors) >= 7


def test_renames_must_target_current_properties_of_older_versions():
    doc = _minimal(
        e={
            "schema_version": 2,
            "accepted_versions": [1, 2],
            "renames": {1: {"old": "nope"}, 2: {"x": "y"}},
            "properties": {"y": {"type": "string"}},
        }
    )
    with pytest.raises(PlanError) as info:
        parse_plan(doc)
    assert any("renamed to 'nope'" in e or "only older accepted versions" in e for e in info.value.errors)


def test_metered_events_cannot_be_sampled_and_must_declare_meter_properties():
    metering = load_config()
    doc = _minimal(job_completed={"properties": {"region": {"type": "string"}}})
    doc["sampling"] = [{"event": "api_call_made", "rate": 0.5}]
    with pytest.raises(PlanError) as info:
        parse_plan(doc, metering)
    text = "\n".join(info.value.errors)
    assert "sampling[0] (api_call_made): a metered event is never sampled" in text
    assert "meter compute_seconds reads 'duration_seconds'" in text


def test_version_property_is_reserved():
    doc = _minimal(e={"properties": {"schema_version": {"type": "integer"}}})
    with pytest.raises(PlanError, match="reserved for the schema version"):
        parse_plan(doc)


def test_unreadable_and_invalid_yaml_files_are_plan_errors(tmp_path):
    with pytest.raises(PlanError, match="cannot read the file"):
        load_plan(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("events: [unclosed")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_minimal()))
    assert load_plan(good).version == 1
