"""Onboarding completion actions (issue 20, seed 002 markComplete): their config — every problem at once,
with its place, flags, variants and features checked against the flags and plans files, as
``--check-config`` prints it — and the pure application of flag overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from plg_sdk.flags import DISABLED, TARGETING_MATCH, compile_document

from services.growth.__main__ import main as growth_main
from services.growth.flagstore import load_flags_file
from services.growth.onboarding import (
    ActionRefs,
    Emit,
    GrantTrial,
    SetFlag,
    load_onboarding_checked,
    parse_onboarding,
)
from services.growth.overrides import apply
from services.kernel.config import ConfigFileError
from services.plans.loader import load_config

REFS = ActionRefs({"sso_enforcement": ["on", "off"], "new_dashboard": ["on", "off"]}, frozenset({"sso"}))


def doc(*actions: Any) -> dict[str, Any]:
    return {
        "default_flow": "a",
        "flows": {
            "a": {
                "steps": [
                    {
                        "id": "s1",
                        "done_when": {"attribute": "counts.x", "op": "gte", "value": 1},
                        "on_complete": list(actions),
                    }
                ]
            }
        },
    }


def test_the_three_kinds_of_action_parse():
    config = parse_onboarding(
        doc(
            {"set_flag": {"flag": "sso_enforcement", "variant": "on"}},
            {"set_flag": {"flag": "new_dashboard", "variant": "off", "for": "customer"}},
            {"grant_trial": {"feature": "sso", "days": 14}},
            {"emit": {"event": "reward_granted", "properties": {"reward": "sso", "days": 14}}},
        ),
        "test",
        REFS,
    )
    actions = config.flows["a"].steps[0].actions
    assert actions == (
        SetFlag("sso_enforcement", "on", "person"),
        SetFlag("new_dashboard", "off", "customer"),
        GrantTrial("sso", 14),
        Emit("reward_granted", {"reward": "sso", "days": 14}),
    )
    assert [a.kind for a in actions] == ["set_flag", "set_flag", "grant_trial", "emit"]
    assert actions[0].detail() == {"flag": "sso_enforcement", "variant": "on", "for": "person"}


def test_every_bad_action_is_reported_at_once_with_its_place():
    with pytest.raises(ConfigFileError) as info:
        parse_onboarding(
            doc(
                {"set_flag": {"flag": "nope", "variant": "on"}},
                {"set_flag": {"flag": "sso_enforcement", "variant": "maybe", "for": "team"}},
                {"grant_trial": {"feature": "teleport", "days": 0}},
                {"emit": {"event": "$mine", "properties": {"a": [1]}}},
                {"unlock": {"feature": "sso"}},
                {"emit": {"event": "x"}, "grant_trial": {"feature": "sso", "days": 1}},
                {"grant_trial": {"feature": "sso", "days": 3, "hours": 2}},
            ),
            "test",
            REFS,
        )
    text = str(info.value)
    at = "flows.a.steps[0].on_complete"
    for expected in (
        f"{at}[0].set_flag.flag: no flag 'nope' in the flags file",
        f"{at}[1].set_flag.for: person or customer, got 'team'",
        f"{at}[2].grant_trial.feature: 'teleport' is not a boolean feature of any plan (known: sso)",
        f"{at}[2].grant_trial.days: a whole number of days, 1-366, got 0",
        f"{at}[3].emit.event: an event name",
        f"{at}[3].emit.properties.a: a string, number or boolean",
        f"{at}[4]: unknown action 'unlock'",
        f"{at}[5]: one of",
        f"{at}[6].grant_trial: unknown keys ['hours']",
    ):
        assert expected in text, (expected, text)
    # The variant of a known flag is checked once the action's shape is right.
    with pytest.raises(
        ConfigFileError, match=r"flag 'sso_enforcement' has no variant 'maybe' \(its variants: on, off\)"
    ):
        parse_onboarding(doc({"set_flag": {"flag": "sso_enforcement", "variant": "maybe"}}), "test", REFS)


def test_the_repository_config_checks_against_its_flags_and_plans():
    config = load_onboarding_checked(None, load_flags_file(None), load_config().feature_names)
    rewarded = config.flows["classic"].step("create-project")
    assert rewarded is not None
    assert {a.kind for a in rewarded.actions} == {"set_flag", "grant_trial", "emit"}


def test_check_config_exits_2_listing_the_bad_actions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    bad = tmp_path / "onboarding.yaml"
    bad.write_text(yaml.safe_dump(doc({"grant_trial": {"feature": "teleport", "days": 3}})))
    monkeypatch.setenv("GROWTH_ONBOARDING_PATH", str(bad))
    assert growth_main(["--check-config"]) == 2
    out = capsys.readouterr()
    assert "on_complete[0].grant_trial.feature: 'teleport' is not a boolean feature of any plan" in (
        out.out + out.err
    )


FLAGS = compile_document(
    {
        "flags": [
            {"key": "beta", "enabled": True, "default": {"variant": "off"}},
            {"key": "killed", "enabled": False},
            {
                "key": "color",
                "enabled": True,
                "variants": {"red": "r", "blue": "b"},
                "off_variant": "red",
                "default": {"variant": "red"},
            },
        ]
    }
)


def test_overrides_serve_their_variant_but_never_past_the_kill_switch():
    results = [FLAGS.evaluate(k, {"user_id": "u1"}) for k in ("beta", "killed", "color")]
    assert [r.value for r in results] == [False, False, "r"]
    out = apply(results, {"beta": "on", "killed": "on", "color": "green"}, FLAGS)
    beta, killed, color = out
    assert (beta.value, beta.variant, beta.reason) == (True, "on", TARGETING_MATCH)
    assert killed.reason == DISABLED
    assert killed.value is False
    assert color.value == "r", "a variant the flag no longer has is ignored"
    assert apply(results, {}, FLAGS) is results
