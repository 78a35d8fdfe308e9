"""``make demo``'s generator (services/devstack/demo.py): deterministic with a seed, the planted activation
effect is there, and every event passes the import route's checks."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from services.devstack import demo
from services.ingest.importing import NDJSON, normalise_import
from services.ingest.model import Limits, RequestContext

DAY_MS = demo.DAY_MS
NOW = int(time.time() * 1000) // DAY_MS * DAY_MS


@pytest.fixture(scope="module")
def history() -> demo.History:
    return demo.generate(150, 90, seed=7, now_ms=NOW)


def _ms(event: dict) -> int:
    return int(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp() * 1000)


def test_same_seed_same_history_other_seed_other_history() -> None:
    a = demo.generate(10, 30, seed=3, now_ms=NOW)
    b = demo.generate(10, 30, seed=3, now_ms=NOW)
    c = demo.generate(10, 30, seed=4, now_ms=NOW)
    assert a.profiles == b.profiles
    assert a.events == b.events
    assert a.events != c.events
    ids = [e["event_id"] for events in a.events.values() for e in events]
    assert len(ids) == len(set(ids)), "event ids are unique (re-importing stores each once)"


def test_planted_activation_effect(history: demo.History) -> None:
    activated, others = [], []
    for p in history.profiles:
        events = history.events[p.customer_id]
        early = sum(
            1
            for e in events
            if e["name"] == "project_created" and _ms(e) < p.signup_ms + demo.ACTIVATION_DAYS * DAY_MS
        )
        assert (early >= demo.ACTIVATION_PROJECTS) == p.activated
        # Still active in the last week of the period?
        retained = any(_ms(e) >= NOW - 7 * DAY_MS for e in events)
        if p.signup_ms < NOW - 45 * DAY_MS:  # old enough to have churned
            (activated if p.activated else others).append(retained)
    assert len(activated) > 15
    assert len(others) > 15
    assert sum(activated) / len(activated) > 0.8
    assert sum(others) / len(others) < 0.35
    plans = {p.plan for p in history.profiles}
    assert {"free", "pro"} <= plans
    assert plans - {"free", "pro", "enterprise"}, "some free signups upgraded"
    assert any(p.heavy for p in history.profiles)
    assert any(p.ticket for p in history.profiles)


def test_heavy_free_accounts_reach_their_api_limit(history: demo.History) -> None:
    heavy = [
        p for p in history.profiles if p.heavy and p.churn_ms is None and p.signup_ms < NOW - 40 * DAY_MS
    ]
    assert heavy
    for p in heavy:
        last_30 = [
            e
            for e in history.events[p.customer_id]
            if e["name"] == "api_call_made" and _ms(e) >= NOW - 30 * DAY_MS
        ]
        assert len(last_30) > 1000  # the free plan's api_requests limit (deploy/config/metering.yaml)


def test_every_event_passes_the_import_checks() -> None:
    history = demo.generate(8, 90, seed=11, now_ms=NOW)
    for p in history.profiles:
        ctx = RequestContext(p.customer_id, "k", "r", int(time.time() * 1000), source="import")
        for body in demo.chunks(history.events[p.customer_id]):
            checked = normalise_import(body, NDJSON, ctx, Limits())
            assert not checked.rejections, checked.rejections[:3]
            assert checked.total == len(checked.records) > 0


def test_live_events_are_valid_batch_events() -> None:
    import random

    from services.ingest.model import normalise_events

    p = demo.plan_profile(1, 90, NOW, seed=7)
    now = int(time.time() * 1000)
    events = demo.live_events(random.Random(1), p, 40, now)
    assert len(events) == 40
    checked = normalise_events(events, 1000, RequestContext(p.customer_id, "k", "r", now), Limits())
    assert not checked.rejections, checked.rejections[:3]
