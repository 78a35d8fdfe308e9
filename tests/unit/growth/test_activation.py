"""Activation thresholds (services/growth/activation.py): config validation, counting per person and
customer, windows, once-only crossings, the plans rule."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from services.activation import ActivationConfigError, load_activation, parse_activation
from services.growth.activation import DAY_MS, Tracker, activation_record

NOW = 1_800_000_000_000
_IDS = itertools.count()


def event(
    name: str, person: str | None = "p1", customer: str = "c1", plan: str | None = "free", ts: int = NOW
):
    return {
        "event_id": f"e-{next(_IDS)}",
        "customer_id": customer,
        "name": name,
        "timestamp": ts,
        "person_id": person,
        "plan": plan,
    }


CONFIG = parse_activation(
    {
        "plans": ["free"],
        "north_star": "core",
        "thresholds": [
            {"name": "projects", "event": "project_created", "count": 3},
            {"name": "invites", "event": "team_invite_sent", "count": 2, "scopes": ["customer"]},
            {"name": "core", "event": "core_action_completed", "count": 10, "window_days": 30},
        ],
    }
)


def test_the_shipped_file_has_the_seeds_thresholds() -> None:
    config = load_activation(Path("deploy/config/activation.yaml"))
    got = {t.name: (t.event, t.count, t.window_days) for t in config.thresholds}
    assert got["project_created"] == ("project_created", 3, None)
    assert got["api_calls"][1] == 50
    assert got["team_invites"][1] == 2
    assert got["core_action_completed"] == ("core_action_completed", 10, 30)
    assert config.north_star == "core_action_completed"
    assert config.plans == {"free"}


def test_an_invalid_config_reports_every_error_at_once() -> None:
    with pytest.raises(ActivationConfigError) as caught:
        parse_activation(
            {
                "plans": [],
                "north_star": "nope",
                "thresholds": [
                    {"name": "a", "event": "x", "count": 0},
                    {"name": "b", "event": "", "count": 2, "window_days": 0, "scopes": ["team"]},
                    {"name": "a", "event": "y", "count": 1},
                ],
            }
        )
    text = "\n".join(caught.value.errors)
    for needle in (
        "plans:",
        "count: a whole number",
        "event:",
        "window_days",
        "scopes",
        "used twice",
        "north_star",
    ):
        assert needle in text, (needle, text)


def test_a_threshold_crosses_once_per_person_and_once_per_customer() -> None:
    tracker = Tracker(CONFIG)
    crossings = []
    for person in ("p1", "p1", "p2", "p1", "p1", "p2", "p2"):
        crossings += tracker.apply(event("project_created", person))
    # The customer crosses on the 3rd event (p1, p1, p2); p1 on its 3rd (5th overall); p2 on its 3rd (7th).
    assert [(c.scope, c.person, c.count) for c in crossings] == [
        ("customer", None, 3),
        ("person", "p1", 3),
        ("person", "p2", 3),
    ]
    record = activation_record(crossings[1], NOW)
    assert record["event_id"] == "person|c1|p1|projects"
    assert record["prompt"] == "show-upgrade-prompt"


def test_scopes_limit_where_a_threshold_counts() -> None:
    tracker = Tracker(CONFIG)
    crossings = tracker.apply(event("team_invite_sent", "a")) + tracker.apply(event("team_invite_sent", "b"))
    assert [(c.scope, c.threshold.name) for c in crossings] == [("customer", "invites")]


def test_only_the_configured_plans_cross_but_every_plan_is_counted() -> None:
    tracker = Tracker(CONFIG)
    crossings = [c for _ in range(5) for c in tracker.apply(event("project_created", plan="pro"))]
    assert crossings == []
    assert tracker.state["c|person|c1|p1|project_created"]["n"] == 5
    # An unknown plan (customer unknown to enrichment) never crosses either.
    assert [c for _ in range(5) for c in tracker.apply(event("project_created", "p9", plan=None))] == []


def test_a_window_counts_the_last_n_days_of_the_subject() -> None:
    tracker = Tracker(CONFIG)
    old = [c for _ in range(9) for c in tracker.apply(event("core_action_completed", ts=NOW - 40 * DAY_MS))]
    assert old == []
    assert tracker.apply(event("core_action_completed", ts=NOW)) == []  # 9 of them are out of the window
    days = tracker.state["c|person|c1|p1|core_action_completed"]["d"]
    assert list(days) == [str(NOW // DAY_MS)]  # the old days were dropped
    late = [c for _ in range(9) for c in tracker.apply(event("core_action_completed", ts=NOW - 29 * DAY_MS))]
    assert [(c.scope, c.count) for c in late] == [("person", 10), ("customer", 10)]
    assert all(c.threshold.north_star for c in late)


def test_events_without_a_customer_or_person_and_untracked_events() -> None:
    tracker = Tracker(CONFIG)
    assert tracker.apply(event("project_created", customer="")) == []
    assert tracker.apply(event("page_viewed")) == []
    assert not tracker.dirty
    tracker.apply(event("project_created", person=None))
    assert set(tracker.dirty) == {"c|customer|c1||project_created"}


def test_state_restored_from_the_changelog_does_not_cross_again() -> None:
    tracker = Tracker(CONFIG)
    for _ in range(3):
        tracker.apply(event("project_created"))
    changelog = dict(tracker.take_dirty())
    restored = Tracker(CONFIG, {k: dict(v) for k, v in changelog.items()})
    assert restored.apply(event("project_created")) == []
    assert restored.state["c|person|c1|p1|project_created"]["n"] == 4


def test_a_duplicate_event_id_is_not_counted_twice() -> None:
    tracker = Tracker(CONFIG)
    first = event("project_created")
    for _ in range(5):  # one event, retried: it counts once and crosses nothing
        assert tracker.apply(first) == []
    assert tracker.state["c|person|c1|p1|project_created"]["n"] == 1
    second = {**first, "event_id": "another"}
    third = {**first, "event_id": "and-another"}
    assert tracker.apply(second) == []
    assert [c.scope for c in tracker.apply(third)] == ["person", "customer"]
