"""SIGKILL in the middle of a stream: the enriched topic (read_committed) has every event exactly once."""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.enrichment.harness import event
from tests.integration.metering.harness import wait_for

pytestmark = pytest.mark.integration

N = 3000


def test_sigkill_during_a_stream_loses_and_duplicates_nothing(world):
    customer = world.customer("pro")
    instance = "enr-kill"
    proc = world.spawn_enrichment(instance)
    events = [
        event(customer, "core_action_completed", anonymous_id=f"a{i % 50}", action="x") for i in range(N)
    ]
    world.send(events[: N // 3])
    # Killed while it is working through the stream (some batches committed, one likely open).
    wait_for(lambda: len(world.enriched_raw()) > 0, timeout=60, what="first enriched records")
    world.send(events[N // 3 : 2 * N // 3])
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    world.send(events[2 * N // 3 :])
    # Same instance id: its transactional.id fences and aborts whatever the dead process left open.
    world.spawn_enrichment(instance)
    got = world.wait_enriched([e["event_id"] for e in events], timeout=120)  # asserts no duplicates
    assert set(got) == {e["event_id"] for e in events}
