"""Per-stage event counts and delay since ingest: what the loss and delay alerts are computed from."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.kernel.processing.messages import Message
from services.kernel.processing.stage import StageMetrics
from tests.unit.kernel.test_processing import FakeRecord


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _message(topic: str, offset: int, received_at: int | None) -> Message:
    value = {"event_id": f"e{offset}"} if received_at is None else {"received_at": received_at}
    return Message(FakeRecord(topic, 0, offset, b""), value)  # type: ignore[arg-type]


def test_committed_batch_counts_every_settled_record_by_topic_and_observes_its_oldest_event() -> None:
    stage = StageMetrics("stage-test-a", clock=lambda: 1_000.0)
    processed = [_message("usage-events", 1, 990_000), _message("usage-events", 2, 995_500)]
    dead_lettered = [_message("usage-events", 3, 999_000)]
    undecodable = [FakeRecord("identity-links", 0, 7, b"\x00")]
    stage.settled(processed, dead_lettered, undecodable)  # type: ignore[arg-type]

    assert _sample("plg_stage_events_total", service="stage-test-a", topic="usage-events") == 3
    assert _sample("plg_stage_events_total", service="stage-test-a", topic="identity-links") == 1
    # One observation per batch: the oldest event, received 10 s before the commit.
    assert _sample("plg_stage_delay_seconds_count", service="stage-test-a") == 1
    assert _sample("plg_stage_delay_seconds_sum", service="stage-test-a") == 10.0
    assert _sample("plg_stage_last_commit_timestamp_seconds", service="stage-test-a") == 1_000.0


def test_records_without_an_ingest_timestamp_are_counted_but_never_read_as_delay() -> None:
    # A compacted topic's records (no received_at) must not look like a stage days behind.
    stage = StageMetrics("stage-test-b", clock=lambda: 1_000.0)
    stage.settled([_message("customer-health", 1, None)], [], [])
    assert _sample("plg_stage_events_total", service="stage-test-b", topic="customer-health") == 1
    assert _sample("plg_stage_delay_seconds_count", service="stage-test-b") == 0


def test_an_empty_batch_changes_nothing() -> None:
    stage = StageMetrics("stage-test-c", clock=lambda: 1_000.0)
    stage.settled([], [], [])
    assert _sample("plg_stage_last_commit_timestamp_seconds", service="stage-test-c") == 0
    assert _sample("plg_stage_delay_seconds_count", service="stage-test-c") == 0


def test_usage_events_carry_the_receipt_in_ingests_metadata() -> None:
    # usage-events (enrichment's and the aggregator's input) nests received_at in its `ingest` record;
    # events produced straight to Kafka have none and must not count as delay.
    stage = StageMetrics("stage-test-d", clock=lambda: 1_000.0)
    via_ingest = Message(
        FakeRecord("usage-events", 0, 1, b""),  # type: ignore[arg-type]
        {"event_id": "e1", "ingest": {"received_at": 997_000, "source": "http"}},
    )
    direct = Message(FakeRecord("usage-events", 0, 2, b""), {"event_id": "e2", "ingest": None})  # type: ignore[arg-type]
    stage.settled([via_ingest, direct], [], [])
    assert _sample("plg_stage_delay_seconds_count", service="stage-test-d") == 1
    assert _sample("plg_stage_delay_seconds_sum", service="stage-test-d") == 3.0
