"""Activation on the real stack: enriched events cross thresholds and produce exactly one activation
event per subject and threshold — also across a restart — with the telemetry event and the SSE push."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from services.kernel.processing.store import LocalStore
from services.kernel.topics import ACTIVATION_EVENTS, USAGE_EVENTS, topic
from tests.integration.growth.conftest import EnrichedProducer, GrowthFactory, SseReader, wait_for
from tests.integration.ingest.conftest import read_topic

DAY_MS = 86_400_000


def activation_events(growth, prefix: str, expected: int, customer: str) -> list[dict]:
    s = growth.settings
    name = topic(ACTIVATION_EVENTS, prefix).name
    records = read_topic(s.kafka.bootstrap_servers, s.registry.url, name, expected, settle=2.0)
    return [r.value() for r in records if r.value()["customer_id"] == customer]


def restored_from(growth) -> dict[int, str]:
    """Where each of the activation loop's partitions came from at its last restore: "store" or
    "changelog" (a partition that never had a record has no committed offset: it always replays, empty).
    Waits for the restore: /readyz answers 200 once the loop has subscribed, which can be before the group
    has assigned it its partitions."""
    handler = growth.server.config.app.state.resources.loop.handler

    def restored() -> dict[int, str]:
        done = dict(handler.restored_from)
        return done if done and set(done) == set(handler.trackers) else {}

    return wait_for(restored, timeout=60, what="the activation loop's partitions restored")


def test_a_threshold_crossed_produces_one_event_each_also_after_a_restart(
    start_growth: GrowthFactory, enriched: EnrichedProducer, provisioned, tmp_path: Path
) -> None:
    customer, person = f"cust-{uuid.uuid4().hex[:8]}", "user-1"
    # A bound of 1000 state entries (the least allowed): the state is tiny, so this shows the store's
    # reuse, not its spill (tests/unit/test_state_stores.py and test_bounded_state.py show that).
    growth = start_growth(instance_id="activation-test", state_dir=tmp_path, state_memory_keys=1000)
    status_url = f"/v1/activation/{customer}/{person}"
    reader = SseReader(f"{growth.url}{status_url}/stream", growth.auth_headers())
    try:
        with growth.client() as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
            enriched.send(customer, person, "project_created", count=2)
            enriched.send(customer, "user-2", "team_invite_sent")  # 1 of 2
            wait_for(lambda: client.get(status_url).json()["person"][0]["count"] == 2, what="2 counted")
            assert not client.get(status_url).json()["show_upgrade_prompt"]
            enriched.send(customer, person, "project_created")  # the third: person and customer cross
            prompt, _ = reader.next("show-upgrade-prompt", timeout=20)
            assert (prompt["threshold"], prompt["customer_id"]) == ("project_created", customer)
            status = wait_for(lambda: (b := client.get(status_url).json())["person"][0]["crossed"] and b)
            assert status["person"][0]["count"] == 3
            assert status["customer"][0]["crossed"]
            enriched.send(customer, person, "project_created", count=2)  # beyond it: nothing new
        events = activation_events(growth, provisioned.prefix, 2, customer)
        assert sorted((e["scope"], e["threshold"], e["person_id"]) for e in events) == [
            ("customer", "project_created", None),
            ("person", "project_created", person),
        ]
        assert all(
            e["count"] == 3 and e["required"] == 3 and e["prompt"] == "show-upgrade-prompt" for e in events
        )
    finally:
        reader.close()
        growth.stop()

    # A new process restores the counts and what fired from its local store (sealed at the committed
    # offsets by the clean stop): more events cross nothing again, and the customer's team invites keep
    # counting from where they were.
    growth = start_growth(instance_id="activation-test", state_dir=tmp_path, state_memory_keys=1000)
    with growth.client() as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness after a restart")
        assert "store" in restored_from(growth).values()
        enriched.send(customer, person, "project_created")
        enriched.send(customer, "user-3", "team_invite_sent")  # the customer's second: it crosses now
        wait_for(
            lambda: client.get(status_url).json()["person"][0]["count"] == 6,
            what="counts restored and continued",
        )
    events = activation_events(growth, provisioned.prefix, 3, customer)
    assert sorted((e["scope"], e["threshold"]) for e in events) == [
        ("customer", "project_created"),
        ("customer", "team_invites"),
        ("person", "project_created"),
    ]
    s = growth.settings
    usage = read_topic(
        s.kafka.bootstrap_servers, s.registry.url, topic(USAGE_EVENTS, provisioned.prefix).name, 3
    )
    telemetry = [r.value() for r in usage if r.value()["customer_id"] == customer]
    assert sorted(
        t["properties"]["threshold"] for t in telemetry if t["name"] == "activation_threshold_crossed"
    ) == [
        "project_created",
        "project_created",
        "team_invites",
    ]
    growth.stop()

    # A store that cannot be trusted (unsealed, as after a crash) is discarded: the changelog is replayed
    # (folded into the wiped store), and the counts go on exactly.
    sealed = 0
    for path in (tmp_path / "activation-test").iterdir():
        store = LocalStore(path)
        if store.seal_of() is not None:  # the second clean stop sealed it again
            sealed += 1
            store.unseal()
        store.close()
    assert sealed > 0
    growth = start_growth(instance_id="activation-test", state_dir=tmp_path, state_memory_keys=1000)
    with growth.client() as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness after a replay")
        assert set(restored_from(growth).values()) == {"changelog"}
        # Replayed through the kernel's store fold: the state was built in the wiped store while the
        # changelog was read, so it is all on disk until used (a replay into memory would hold these few
        # entries in memory, under the bound of 1000, and none on disk).
        trackers = growth.server.config.app.state.resources.loop.handler.trackers
        assert sum(t.state.disk for t in trackers.values()) >= 4  # 2 persons' counters, customer's, fired
        assert sum(len(t.state.mem) for t in trackers.values()) == 0
        enriched.send(customer, person, "project_created")
        wait_for(lambda: client.get(status_url).json()["person"][0]["count"] == 7, what="replayed, counted")
        status = client.get(status_url).json()
        invites = next(t for t in status["customer"] if t["threshold"] == "team_invites")
        assert invites["count"] == 2  # both, once each
    assert len(activation_events(growth, provisioned.prefix, 3, customer)) == 3  # nothing crossed again


def test_only_the_configured_plans_cross_and_windows_count_recent_days(
    growth, enriched: EnrichedProducer, provisioned
) -> None:
    paying, windowed = f"cust-{uuid.uuid4().hex[:8]}", f"cust-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    with growth.client() as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
        enriched.send(paying, "p", "project_created", plan="pro", count=3)  # counted, never crossed
        # The North Star: 10 core actions in 30 days. 9 of them 40 days ago do not help today's one.
        enriched.send(windowed, "w", "core_action_completed", timestamp_ms=now - 40 * DAY_MS, count=9)
        enriched.send(windowed, "w", "core_action_completed", timestamp_ms=now)
        north = wait_for(
            lambda: next(
                (
                    t
                    for t in client.get(f"/v1/activation/{windowed}/w").json()["person"]
                    if t["north_star"] and t["count"]
                ),
                None,
            ),
            what="north star counted",
        )
        assert (north["count"], north["crossed"], north["window_days"]) == (1, False, 30)
        enriched.send(windowed, "w", "core_action_completed", timestamp_ms=now - 29 * DAY_MS, count=9)
        wait_for(
            lambda: any(
                t["north_star"] and t["crossed"]
                for t in client.get(f"/v1/activation/{windowed}/w").json()["person"]
            ),
            what="north star crossed",
        )
        pro = client.get(f"/v1/activation/{paying}/p").json()
        assert pro["person"][0]["count"] == 3
        assert not pro["person"][0]["crossed"]
    assert activation_events(growth, provisioned.prefix, 2, paying) == []
    crossed = activation_events(growth, provisioned.prefix, 2, windowed)
    assert sorted(e["scope"] for e in crossed) == ["customer", "person"]
    assert all(e["north_star"] and e["window_days"] == 30 for e in crossed)
