"""Several instances share the partitions: each event is enriched once, by whichever instance owns it, and
every instance resolves every tenant's identities (each reads the whole identity-links topic)."""

from __future__ import annotations

import pytest

from tests.integration.enrichment.harness import event
from tests.integration.metering.harness import wait_for

pytestmark = pytest.mark.integration


def test_two_instances_share_the_partitions_and_both_resolve_identities(world):
    customers = [world.customer("pro") for _ in range(12)]
    for c in customers:
        world.identify(c, "anon-shared", f"user-of-{c}")
    first = world.start_enrichment()
    second = world.start_enrichment()

    def both_own_partitions():
        # The loops' snapshots: calling their consumers from this thread would queue behind their polls
        # (confluent-kafka lets one thread at a time in; this test once hung there for minutes).
        owned = [r.app.loop.assigned for r in (first, second)]
        return all(any(topic.endswith("usage-events") for topic, _ in tps) for tps in owned)

    wait_for(both_own_partitions, timeout=60, interval=0.5, what="a partition each")
    events = [event(c, anonymous_id="anon-shared") for c in customers for _ in range(20)]
    world.send(events)
    got = world.wait_enriched([e["event_id"] for e in events], timeout=60)  # asserts no duplicates
    for e in events:
        assert got[e["event_id"]]["person_id"] == f"user-of-{e['customer_id']}"
    assert not first.errors
    assert not second.errors
