"""Nothing is silently dropped: late, future, invalid, undecodable events and unknown customers are
dead-lettered with a reason and their original bytes; events no meter counts are only counted in a metric."""

from __future__ import annotations

from decimal import Decimal

from services.kernel.dlq import DlqCipher
from services.kernel.topics import USAGE_EVENTS
from tests.integration.metering.harness import Metering, now_ms, usage_event, wait_for

HOUR = 3600 * 1000


def test_late_events_within_grace_count_and_later_ones_are_dead_lettered(metering: Metering):
    c = metering.customer("pro")
    on_time = usage_event(c, ts=now_ms() - HOUR // 2)
    late = usage_event(c, ts=now_ms() - 2 * HOUR)
    metering.start(grace_seconds=3600)
    metering.send([on_time, late])
    wait_for(lambda: metering.period_total(c) == (Decimal(1), 1))
    letters = wait_for(lambda: [d for d in metering.dead_letters() if d["customer_id"] == c])
    (letter,) = letters
    assert letter["error_code"] == "late_event"
    assert letter["event_id"] == late["event_id"]
    assert letter["service"] == "metering-aggregator"
    original = DlqCipher.from_env().reveal(letter)["original_value"]  # encrypted in the letter
    assert metering.decoder.decode(original)["event_id"] == late["event_id"]
    assert letter["original_topic"] == metering.topic(USAGE_EVENTS)


def test_unknown_customers_bad_values_and_undecodable_bytes_are_dead_lettered(metering: Metering):
    c = metering.customer("pro")
    metering.start()
    ghost = usage_event("nobody-" + c)
    bad_value = usage_event(c, "job_completed", duration_seconds="a while")
    future = usage_event(c, ts=now_ms() + 2 * HOUR)
    metering.send([ghost, bad_value, future, usage_event(c)])
    metering.producer.produce(metering.topic(USAGE_EVENTS), b"\x00\x00\x00\x00\x01garbage", c)
    metering.producer.produce(metering.topic(USAGE_EVENTS), b"not avro at all", c)
    metering.producer.flush(10)
    wait_for(lambda: len(metering.dead_letters()) == 5, what="five dead letters")
    codes = sorted(d["error_code"] for d in metering.dead_letters())
    assert codes == ["future_event", "invalid_meter_value", "undecodable", "undecodable", "unknown_customer"]
    by_code = {d["error_code"]: d for d in metering.dead_letters()}
    assert "compute_seconds" in by_code["invalid_meter_value"]["error_message"]
    assert by_code["unknown_customer"]["customer_id"] == ghost["customer_id"]
    assert metering.period_total(c) == (Decimal(1), 1)
    assert metering.period_total(c, "compute_seconds") is None


def test_a_backlog_older_than_the_grace_is_counted_when_the_aggregator_catches_up(metering: Metering):
    # Events that reached Kafka two hours ago, on time, while no aggregator ran (an outage, a long lag):
    # lateness is about the event's arrival, not about when we got round to it.
    c = metering.customer("pro")
    then = now_ms() - 2 * HOUR
    backlog = [usage_event(c, ts=then - 60_000 + i) for i in range(20)]
    already_late = usage_event(c, ts=then - 2 * HOUR)  # two hours old when it arrived back then
    metering.send([*backlog, already_late], arrival=then)
    metering.start(grace_seconds=3600)
    wait_for(lambda: metering.period_total(c) == (Decimal(20), 20), what="the backlog counted")
    letters = wait_for(lambda: [d for d in metering.dead_letters() if d["customer_id"] == c])
    assert [(d["error_code"], d["event_id"]) for d in letters] == [("late_event", already_late["event_id"])]
