"""The flag engine (sdk/plg_sdk/flags.py): bucketing spec and vectors, distribution, stickiness, rules,
prerequisites and validation."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plg_sdk.flags import (
    BUCKETS,
    DEFAULT,
    DISABLED,
    ERROR,
    FLAG_NOT_FOUND,
    PREREQUISITE_FAILED,
    SPLIT,
    STATIC,
    TARGETING_MATCH,
    TYPE_MISMATCH,
    FlagConfigError,
    bucket,
    compile_document,
)
from plg_sdk.murmur3 import murmur3_32

TESTDATA = Path(__file__).resolve().parents[3] / "sdk" / "testdata"


def flags(*specs: dict, segments: dict | None = None):
    return compile_document({"segments": segments, "flags": list(specs)})


# -- the hash and the vectors ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(min_value=0, max_value=2**32 - 1))
def test_pure_python_murmur3_matches_the_mmh3_extension(data: bytes, seed: int) -> None:
    assert murmur3_32(data, seed) == mmh3.hash(data, seed, signed=False)


def test_the_cross_language_hash_vectors_hold() -> None:
    doc = json.loads((TESTDATA / "flag_buckets.json").read_text())
    assert doc["buckets"] == BUCKETS
    for case in doc["murmur3_x86_32"]:
        assert murmur3_32(bytes.fromhex(case["hex"]), case["seed"]) == case["hash"], case
    for case in doc["buckets_of_keys"]:
        assert case["key"] == f"{case['salt']}:{case['value']}"
        assert murmur3_32(case["key"].encode(), doc["rollout_seed"]) == case["rollout_hash"]
        assert bucket(case["salt"], case["value"], doc["rollout_seed"]) == case["rollout_bucket"]
        assert bucket(case["salt"], case["value"], doc["variant_seed"]) == case["variant_bucket"]


def test_the_cross_language_evaluation_vectors_hold() -> None:
    doc = json.loads((TESTDATA / "flag_evaluations.json").read_text())
    engine = compile_document(doc["document"])
    assert len(doc["cases"]) > 100
    for case in doc["cases"]:
        got = engine.evaluate(case["flag"], case["context"])
        assert (got.variant, got.value, got.reason) == (case["variant"], case["value"], case["reason"]), case


# -- distribution ------------------------------------------------------------------------------------------


def test_a_weighted_split_is_within_one_percent_of_its_weights_over_100k_ids() -> None:
    engine = flags(
        {
            "key": "exp",
            "variants": {"a": 1, "b": 2, "c": 3},
            "off_variant": "a",
            "default": {
                "split": [
                    {"variant": "a", "weight": 20},
                    {"variant": "b", "weight": 30},
                    {"variant": "c", "weight": 50},
                ]
            },
        }
    )
    n = 100_000
    counts = Counter(engine.evaluate("exp", {"user_id": f"user-{i}"}).variant for i in range(n))
    for variant, share in (("a", 0.20), ("b", 0.30), ("c", 0.50)):
        assert abs(counts[variant] / n - share) < 0.01, counts


def test_a_rollout_is_within_one_percent_and_independent_of_the_split() -> None:
    engine = flags(
        {
            "key": "exp",
            "variants": {"control": 0, "treatment": 1},
            "off_variant": "control",
            "rollout": 10,
            "default": {
                "split": [{"variant": "control", "weight": 1}, {"variant": "treatment", "weight": 1}]
            },
        }
    )
    rng = random.Random(7)
    n = 100_000
    results = [engine.evaluate("exp", {"user_id": f"{rng.getrandbits(64):x}"}) for _ in range(n)]
    inside = [r for r in results if r.reason == SPLIT]
    assert abs(len(inside) / n - 0.10) < 0.01
    # The variant draw is independent of the rollout draw: inside a 10 % rollout the split is still 50/50.
    treated = sum(r.variant == "treatment" for r in inside)
    assert abs(treated / len(inside) - 0.5) < 0.02


def test_widening_a_rollout_keeps_everyone_already_in() -> None:
    ids = [f"u{i}" for i in range(5000)]
    small = flags({"key": "f", "rollout": 10})
    large = flags({"key": "f", "rollout": 40})
    before = {i for i in ids if small.evaluate("f", {"user_id": i}).variant == "on"}
    after = {i for i in ids if large.evaluate("f", {"user_id": i}).variant == "on"}
    assert before
    assert before <= after


def test_bucketing_is_deterministic_and_salted_per_flag() -> None:
    a = flags({"key": "a", "rollout": 50}, {"key": "b", "rollout": 50})
    again = flags({"key": "a", "rollout": 50})
    ids = [f"user-{i}" for i in range(2000)]
    va = [a.evaluate("a", {"user_id": i}).variant for i in ids]
    assert va == [again.evaluate("a", {"user_id": i}).variant for i in ids]
    assert va != [a.evaluate("b", {"user_id": i}).variant for i in ids]


# -- stickiness --------------------------------------------------------------------------------------------


def test_stickiness_falls_back_from_user_id_to_anonymous_id() -> None:
    engine = flags({"key": "f", "rollout": 50})
    for i in range(200):
        anon = f"anon-{i}"
        assert engine.evaluate("f", {"anonymous_id": anon}) == engine.evaluate(
            "f", {"anonymous_id": anon, "user_id": None}
        )
    assert engine.evaluate("f", {}).reason == DEFAULT  # nothing to bucket on: not in the rollout


def test_a_sticky_assignment_follows_an_anonymous_visitor_who_signs_up() -> None:
    spec = {
        "key": "exp",
        "sticky": True,
        "variants": {"a": "A", "b": "B"},
        "off_variant": "a",
        "rollout": 50,
        "default": {"split": [{"variant": "a", "weight": 1}, {"variant": "b", "weight": 1}]},
    }
    engine = flags(spec)
    store: dict[str, str] = {}
    changed_without_store = 0
    for i in range(500):
        anon, user = f"anon-{i}", f"user-{i}"
        before = engine.evaluate("exp", {"anonymous_id": anon}, sticky=store)
        after = engine.evaluate("exp", {"anonymous_id": anon, "user_id": user}, sticky=store)
        later = engine.evaluate("exp", {"user_id": user}, sticky=store)  # another device, identified
        if before.reason == SPLIT:  # was in the experiment: keeps the arm on sign-up and everywhere
            assert after.variant == later.variant == before.variant
            assert after.sticky
        plain = engine.evaluate("exp", {"user_id": user})
        changed_without_store += plain.variant != before.variant
    assert changed_without_store > 100  # without the store the identity change would reshuffle


def test_stickiness_on_a_custom_attribute_buckets_whole_customers() -> None:
    engine = flags({"key": "f", "stickiness": ["customer_id"], "rollout": 50})
    for c in range(100):
        answers = {
            engine.evaluate("f", {"customer_id": f"c{c}", "user_id": f"u{u}"}).variant for u in range(5)
        }
        assert len(answers) == 1


# -- rules -------------------------------------------------------------------------------------------------


def test_rules_target_users_segments_and_attribute_conditions_in_order() -> None:
    engine = flags(
        {
            "key": "f",
            "variants": {"on": True, "off": False, "beta": "beta"},
            "default": {"variant": "off"},
            "rules": [
                {"users": ["u-1"], "serve": {"variant": "beta"}},
                {"segments": ["staff"], "serve": {"variant": "on"}},
                {
                    "when": {
                        "any": [
                            {"attribute": "plan", "op": "in", "values": ["pro", "growth"]},
                            {"attribute": "company.size", "op": "gte", "value": 100},
                        ]
                    },
                    "serve": {"variant": "on"},
                },
                {"when": {"not": {"attribute": "country", "op": "exists"}}, "serve": {"variant": "beta"}},
            ],
        },
        segments={"staff": {"when": {"attribute": "email", "op": "ends_with", "value": "@plg.dev"}}},
    )

    def ev(ctx):
        r = engine.evaluate("f", {"country": "DE", **ctx})
        return r.variant, r.reason

    assert ev({"user_id": "u-1", "plan": "pro"}) == ("beta", TARGETING_MATCH)  # first match wins
    assert ev({"user_id": "u-2", "email": "a@plg.dev"}) == ("on", TARGETING_MATCH)
    assert ev({"user_id": "u-3", "plan": "growth"}) == ("on", TARGETING_MATCH)
    assert ev({"user_id": "u-3", "company": {"size": 250}}) == ("on", TARGETING_MATCH)
    assert ev({"user_id": "u-3", "company": {"size": "250"}}) == ("off", DEFAULT)  # a string is no number
    assert ev({"user_id": "u-3", "plan": "free"}) == ("off", DEFAULT)
    assert engine.evaluate("f", {"user_id": "u-3"}).variant == "beta"  # no country at all


def test_booleans_never_equal_numbers_in_conditions() -> None:
    engine = flags(
        {
            "key": "f",
            "default": {"variant": "off"},
            "rules": [
                {"when": {"attribute": "n", "op": "eq", "value": 1}, "serve": {"variant": "on"}},
            ],
        },
        {
            "key": "g",
            "default": {"variant": "off"},
            "rules": [
                {"when": {"attribute": "n", "op": "in", "values": [True]}, "serve": {"variant": "on"}},
            ],
        },
    )
    assert engine.evaluate("f", {"n": 1}).variant == "on"
    assert engine.evaluate("f", {"n": True}).variant == "off"
    assert engine.evaluate("g", {"n": True}).variant == "on"
    assert engine.evaluate("g", {"n": 1}).variant == "off"


def test_a_rule_with_a_rollout_falls_through_for_those_outside_it() -> None:
    engine = flags(
        {
            "key": "f",
            "default": {"variant": "off"},
            "rules": [
                {
                    "when": {"attribute": "plan", "op": "eq", "value": "pro"},
                    "rollout": 50,
                    "serve": {"variant": "on"},
                },
            ],
        }
    )
    results = Counter(engine.evaluate("f", {"user_id": f"u{i}", "plan": "pro"}).reason for i in range(4000))
    assert abs(results[SPLIT] / 4000 - 0.5) < 0.05
    assert results[SPLIT] + results[DEFAULT] == 4000


def test_kill_switch_and_unknown_flags_and_types() -> None:
    engine = flags(
        {"key": "f", "enabled": False, "rollout": 100},
        {"key": "s", "variants": {"v": "x"}, "off_variant": "v", "default": {"variant": "v"}},
    )
    assert (engine.evaluate("f", {"user_id": "u"}).variant, engine.evaluate("f", {}).reason) == (
        "off",
        DISABLED,
    )
    missing = engine.evaluate("nope", {}, default=42)
    assert (missing.value, missing.reason, missing.error_code) == (42, ERROR, FLAG_NOT_FOUND)
    wrong = engine.evaluate("s", {}, default=False, expected_type="boolean")
    assert (wrong.value, wrong.error_code) == (False, TYPE_MISMATCH)
    assert engine.evaluate("s", {}, expected_type="string").value == "x"
    assert engine.evaluate("s", {}).reason == STATIC


# -- prerequisites -----------------------------------------------------------------------------------------


def test_prerequisites_gate_a_flag_on_another_flags_variant() -> None:
    engine = flags(
        {"key": "base", "rollout": 50},
        {"key": "child", "prerequisites": [{"flag": "base", "variants": ["on"]}]},
        {"key": "grandchild", "prerequisites": [{"flag": "child"}]},
    )
    for i in range(300):
        ctx = {"user_id": f"u{i}"}
        base = engine.evaluate("base", ctx).variant
        child = engine.evaluate("child", ctx)
        grand = engine.evaluate("grandchild", ctx)
        if base == "on":
            assert (child.variant, child.reason) == ("on", STATIC)
            assert grand.variant == "on"
        else:
            assert (child.variant, child.reason) == ("off", PREREQUISITE_FAILED)
            assert (grand.variant, grand.reason) == ("off", PREREQUISITE_FAILED)


def test_a_disabled_prerequisite_turns_its_dependants_off() -> None:
    engine = flags({"key": "base", "enabled": False}, {"key": "child", "prerequisites": [{"flag": "base"}]})
    assert engine.evaluate("child", {"user_id": "u"}).reason == PREREQUISITE_FAILED


# -- validation --------------------------------------------------------------------------------------------


def test_an_invalid_document_reports_every_error_at_once() -> None:
    with pytest.raises(FlagConfigError) as caught:
        compile_document(
            {
                "flags": [
                    {"key": "a", "rollout": 150, "prerequisites": [{"flag": "b"}]},
                    {"key": "b", "prerequisites": [{"flag": "a"}], "default": {"variant": "maybe"}},
                    {
                        "key": "c",
                        "rules": [
                            {
                                "when": {"attribute": "x", "op": "like", "value": "y"},
                                "serve": {"variant": "on"},
                            }
                        ],
                    },
                    {"key": "c"},
                    {"key": "9bad"},
                    {
                        "key": "d",
                        "rules": [{"segments": ["ghosts"], "serve": {"variant": "on"}}],
                        "default": {"split": [{"variant": "on", "weight": 0}]},
                    },
                    {"key": "e", "variants": {True: 1}, "colour": "red"},
                ]
            }
        )
    text = "\n".join(caught.value.errors)
    for needle in (
        "flags[0] (a).rollout",
        "unknown variant 'maybe'",
        "'like' is not one of",
        "defined twice",
        "flags[4].key",
        "unknown segment 'ghosts'",
        "weights add up to 0",
        "bad variant name True",
        "unknown keys ['colour']",
        "cycle: a -> b -> a",
    ):
        assert needle in text, (needle, text)


def test_the_shipped_flags_file_compiles() -> None:
    from services.growth.flagstore import load_flags_file

    doc = load_flags_file(Path(os.environ.get("PLG_FLAGS_FILE", "deploy/config/flags.yaml")))
    engine = compile_document(doc)
    assert "growth_upgrade_prompt" in engine
    assert engine.evaluate("advanced_export", {"user_id": "enterprise_trial"}).reason == TARGETING_MATCH
