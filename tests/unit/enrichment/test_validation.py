"""Validation against the tracking plan: each violation code with its path, modes, versions."""

from __future__ import annotations

import pytest

from services.enrichment.validation import (
    ADDITIONAL_PROPERTY,
    DATATYPE_MISMATCH,
    ENUM_MISMATCH,
    OUT_OF_RANGE,
    REQUIRED_MISSING,
    UNPLANNED_EVENT,
    UNSUPPORTED_SCHEMA_VERSION,
    CompiledPlan,
)
from tests.unit.enrichment.conftest import plan_of

EVENTS = {
    "signup_completed": {
        "properties": {
            "plan": {"type": "string", "required": True, "enum": ["free", "pro"]},
            "seats": {"type": "integer", "min": 1, "max": 100},
            "ratio": {"type": "number"},
            "trial": {"type": "boolean"},
        }
    },
    "api_call_made": {
        "mode": "enforce",
        "schema_version": 2,
        "accepted_versions": [1, 2],
        "default_version": 1,
        "renames": {1: {"path": "endpoint", "status_code": "status"}},
        "properties": {"endpoint": {"type": "string"}, "status": {"type": "integer"}},
    },
    "strict_one": {"mode": "enforce", "properties": {"a": {"type": "string", "required": True}}},
}


@pytest.fixture
def compiled():
    return CompiledPlan(plan_of(EVENTS), frozenset({"api_call_made"}))


def codes(result):
    return [(v.code, v.path) for v in result.violations]


def test_a_valid_event_has_no_violations(compiled):
    result = compiled.check("signup_completed", {"plan": "pro", "seats": 3, "ratio": 1, "trial": False})
    assert result.violations == []
    assert result.properties == {"plan": "pro", "seats": 3, "ratio": 1, "trial": False}


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({}, [(REQUIRED_MISSING, "properties.plan")]),
        ({"plan": None}, [(REQUIRED_MISSING, "properties.plan")]),
        ({"plan": 3}, [(DATATYPE_MISMATCH, "properties.plan")]),
        ({"plan": "gold"}, [(ENUM_MISMATCH, "properties.plan")]),
        ({"plan": "pro", "seats": 0}, [(OUT_OF_RANGE, "properties.seats")]),
        ({"plan": "pro", "seats": 101}, [(OUT_OF_RANGE, "properties.seats")]),
        ({"plan": "pro", "seats": 2.5}, [(DATATYPE_MISMATCH, "properties.seats")]),
        ({"plan": "pro", "seats": True}, [(DATATYPE_MISMATCH, "properties.seats")]),
        ({"plan": "pro", "trial": 1}, [(DATATYPE_MISMATCH, "properties.trial")]),
        ({"plan": "pro", "colour": "red"}, [(ADDITIONAL_PROPERTY, "properties.colour")]),
    ],
)
def test_each_violation_has_its_code_and_property_path(compiled, props, expected):
    assert codes(compiled.check("signup_completed", props)) == expected


def test_unplanned_event_is_flagged_by_default(compiled):
    result = compiled.check("never_heard_of", {"x": 1})
    assert codes(result) == [(UNPLANNED_EVENT, "name")]
    assert not result.enforce


def test_unplanned_allow_and_reject():
    allow = CompiledPlan(plan_of(EVENTS, unplanned_events="allow"))
    assert allow.check("other", {}).violations == []
    reject = CompiledPlan(plan_of(EVENTS, unplanned_events="reject"), frozenset({"metered_unplanned"}))
    assert reject.check("other", {}).enforce
    # A metered event is never dropped by the plan, planned or not: flagged only.
    metered = reject.check("metered_unplanned", {})
    assert codes(metered) == [(UNPLANNED_EVENT, "name")]
    assert not metered.enforce


def test_enforce_mode_rejects_and_flag_mode_passes(compiled):
    assert compiled.check("strict_one", {}).enforce
    assert not compiled.check("strict_one", {"a": "x"}).enforce
    assert not compiled.check("signup_completed", {}).enforce
    globally = CompiledPlan(plan_of(EVENTS, mode="enforce"))
    assert globally.check("signup_completed", {}).enforce


def test_metered_event_in_enforce_mode_is_only_flagged(compiled):
    result = compiled.check("api_call_made", {"schema_version": 2, "status": "200"})
    assert codes(result) == [(DATATYPE_MISMATCH, "properties.status")]
    assert not result.enforce


def test_old_schema_version_is_mapped_to_current_names(compiled):
    result = compiled.check("api_call_made", {"schema_version": 1, "path": "/v1/x", "status_code": 200})
    assert result.properties == {"endpoint": "/v1/x", "status": 200}
    assert result.schema_version == 1
    assert result.violations == []


def test_missing_version_means_the_default_version_and_semver_strings_count_by_major(compiled):
    assert compiled.check("api_call_made", {"path": "/a"}).properties == {"endpoint": "/a"}
    result = compiled.check("api_call_made", {"schema_version": "2.3.0", "endpoint": "/b"})
    assert result.schema_version == 2
    assert result.properties == {"endpoint": "/b"}


def test_current_name_wins_when_both_are_sent(compiled):
    result = compiled.check("api_call_made", {"schema_version": 1, "path": "/old", "endpoint": "/new"})
    assert result.properties["endpoint"] == "/new"
    assert codes(result) == [(ADDITIONAL_PROPERTY, "properties.path")]


def test_unaccepted_schema_version_is_a_violation(compiled):
    result = compiled.check("api_call_made", {"schema_version": 7, "endpoint": "/b"})
    assert codes(result) == [(UNSUPPORTED_SCHEMA_VERSION, "properties.schema_version")]
    assert compiled.check("api_call_made", {"schema_version": "v2"}).violations[0].code == (
        UNSUPPORTED_SCHEMA_VERSION
    )


def test_input_properties_are_not_mutated(compiled):
    props = {"schema_version": 1, "path": "/x"}
    compiled.check("api_call_made", props)
    assert props == {"schema_version": 1, "path": "/x"}


def test_a_missing_version_is_reported_as_missing_and_the_default_is_assumed(compiled):
    result = compiled.check("api_call_made", {"path": "/v1/x", "status_code": 200})
    assert result.version_missing is True
    assert result.schema_version == 1  # default_version
    assert result.properties == {"endpoint": "/v1/x", "status": 200}
    stated = compiled.check("api_call_made", {"schema_version": 2, "endpoint": "/b"})
    assert stated.version_missing is False
    unplanned = compiled.check("not_planned", {})
    assert unplanned.version_missing is True
    assert unplanned.schema_version is None
    assert compiled.check("not_planned", {"schema_version": 3}).version_missing is False
