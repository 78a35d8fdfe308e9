"""librdkafka's repeated complaints are thinned out; different complaints are never hidden behind them."""

from __future__ import annotations

import logging

from services.kernel.kafka import _RepeatFilter


def librdkafka_record(facility: str, text: str, client: str = "rdkafka#producer-1") -> logging.LogRecord:
    # confluent-kafka logs as logger.log(level, "%s [%s] %s", facility, client name, text).
    return logging.LogRecord(
        "librdkafka", logging.ERROR, __file__, 0, "%s [%s] %s", (facility, client, text), None
    )


REFUSED = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after {}ms)"


def test_a_run_of_the_same_complaint_is_logged_once_per_interval_with_a_count() -> None:
    clock = [100.0]
    repeat = _RepeatFilter(interval=30.0, clock=lambda: clock[0])

    first = repeat.filter(librdkafka_record("FAIL", REFUSED.format(0)))
    clock[0] += 1
    again = [repeat.filter(librdkafka_record("FAIL", REFUSED.format(ms))) for ms in (1, 3, 0)]
    clock[0] += 30
    later = librdkafka_record("FAIL", REFUSED.format(2))

    assert first is True
    assert again == [False, False, False]  # only the elapsed milliseconds differ: the same complaint
    assert repeat.filter(later) is True
    assert later.suppressed_repeats == 3


def test_a_different_complaint_from_the_same_facility_is_not_hidden() -> None:
    clock = [100.0]
    repeat = _RepeatFilter(interval=30.0, clock=lambda: clock[0])

    assert repeat.filter(librdkafka_record("FAIL", REFUSED.format(0))) is True
    clock[0] += 1
    auth = librdkafka_record("FAIL", "127.0.0.1:9092/1: SASL authentication error: Authentication failed")

    assert repeat.filter(auth) is True
