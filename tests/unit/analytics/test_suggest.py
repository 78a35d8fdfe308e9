"""Learned activation thresholds: a planted threshold is found with its evidence, a noise event is not
suggested, too little data is refused, and the proposed activation.yaml changes only what it suggests."""

from __future__ import annotations

import difflib
import random
from pathlib import Path

from services.activation import parse_activation
from services.analytics.suggest import Account, proposed_yaml, suggest, suggest_for_event


def cohort(n: int, seed: int = 7) -> list[Account]:
    """Accounts whose retention depends on doing project_created 5+ times (80 % against 20 %), with
    api_call_made as noise (random, no effect)."""
    rng = random.Random(seed)
    accounts = []
    for _ in range(n):
        projects = rng.randint(0, 10)
        calls = rng.randint(0, 30)
        chance = 0.8 if projects >= 5 else 0.2
        accounts.append(Account(rng.random() < chance, {"project_created": projects, "api_call_made": calls}))
    return accounts


def test_the_planted_threshold_is_found_with_its_evidence() -> None:
    found = suggest_for_event(cohort(2000), "project_created")
    assert found.verdict == "suggested"
    assert found.count == 5
    assert 0.75 <= found.retention_reached <= 0.85
    assert 0.15 <= found.retention_not_reached <= 0.25
    assert found.ci_low > 0.5
    assert found.lift is not None
    assert found.lift > 3
    assert found.reached + found.not_reached == 2000


def test_an_event_without_effect_is_not_suggested() -> None:
    ranked = suggest(cohort(2000), ["api_call_made", "project_created"])
    assert [s.event for s in ranked] == ["project_created", "api_call_made"]
    assert ranked[1].verdict == "no_signal"


def test_too_little_data_is_refused() -> None:
    few = suggest_for_event(cohort(30), "project_created")
    assert few.verdict == "too_few"
    assert few.count is None
    assert "30 accounts" in few.reason
    lopsided = [Account(True, {"x": 1}) for _ in range(95)] + [Account(False, {}) for _ in range(5)]
    assert suggest_for_event(lopsided, "x").verdict == "too_few"


def test_the_proposed_yaml_changes_only_the_suggested_threshold() -> None:
    text = Path("deploy/config/activation.yaml").read_text()
    changed = proposed_yaml(text, "project_created", 5, 14)
    diff = [
        line
        for line in difflib.unified_diff(text.splitlines(), changed.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert diff == ["-    count: 3", "+    count: 5", "+    window_days: 14"]
    assert parse_activation(__import__("yaml").safe_load(changed)).by_event["project_created"][0].count == 5
    added = proposed_yaml(text, "report_exported", 2, 7)
    config = parse_activation(__import__("yaml").safe_load(added))
    assert config.by_event["report_exported"][0].window_days == 7


def test_the_cli_report_shows_the_evidence_and_a_diff_it_never_applies(tmp_path: Path) -> None:
    from services.cli.analytics import suggestion_report

    file = tmp_path / "activation.yaml"
    original = Path("deploy/config/activation.yaml").read_text()
    file.write_text(original)
    found = suggest(cohort(2000), ["project_created", "api_call_made"])
    body = {
        "accounts": 2000,
        "retained": 1000,
        "within_days": 14,
        "retained_after_days": 30,
        "suggestions": [s.as_dict() for s in found],
    }
    report = "\n".join(suggestion_report(body, str(file)))
    assert "project_created" in report
    assert "no_signal" in report
    assert "-    count: 3\n+    count: 5\n+    window_days: 14" in report
    assert file.read_text() == original
    body["suggestions"] = [s.as_dict() for s in suggest(cohort(20), ["project_created"])]
    assert "no change to propose" in "\n".join(suggestion_report(body, str(file)))
