"""SIGKILL in the middle of a stream: the enriched topic (read_committed) has every event exactly once."""

from __future__ import annotations

import signal

import pytest

from tests.integration.enrichment.harness import event
from tests.integration.metering.harness import wait_for

pytestmark = pytest.mark.integration

N = 6000


def test_sigkill_during_a_stream_loses_and_duplicates_nothing(world):
    customer = world.customer("pro")
    instance = "enr-kill"
    # Small transactions, so the stream takes many of them (150 for the first half) and the kill lands
    # between two or inside one; with 100 a quiet machine had finished the first half before the kill.
    proc = world.spawn_enrichment(instance, ENRICHMENT_MAX_BATCH_EVENTS="20")
    events = [
        event(customer, "core_action_completed", anonymous_id=f"a{i % 50}", action="x") for i in range(N)
    ]
    world.send(events[: N // 2])
    wait_for(lambda: len(world.enriched_raw()) >= 100, timeout=60, interval=0.05, what="first transactions")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    at_kill = len(world.enriched_raw())
    assert at_kill < N // 2, "the stream was over before the kill: the test proves nothing"
    world.send(events[N // 2 :])
    # Same instance id: its transactional.id fences and aborts whatever the dead process left open.
    world.spawn_enrichment(instance)
    got = world.wait_enriched([e["event_id"] for e in events], timeout=120)  # asserts no duplicates
    assert set(got) == {e["event_id"] for e in events}
