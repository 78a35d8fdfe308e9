"""`plg dlq` helpers without a broker: --since parsing and how a dead letter is summarised."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.cli.__main__ import main
from services.cli.dlq import DlqError, Letter, parse_since

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800)])
def test_since_takes_durations_back_from_now(text, seconds):
    assert parse_since(text, NOW) == int((NOW - seconds) * 1000)


def test_since_takes_iso_times_utc_by_default():
    assert parse_since("2023-11-14T22:13:20", NOW) == int(NOW * 1000)
    assert parse_since("2023-11-14T23:13:20+01:00", NOW) == int(NOW * 1000)


def test_a_bad_since_says_what_to_give():
    with pytest.raises(DlqError, match="duration"):
        parse_since("yesterday", NOW)


def test_a_letter_summary_names_where_it_came_from():
    letter = Letter(
        2,
        41,
        {
            "failed_at": int(NOW * 1000),
            "service": "enrichment",
            "error_code": "required_missing",
            "error_message": "required_missing at properties.plan: required property missing",
            "event_id": "e1",
            "customer_id": "acme",
            "original_topic": "usage-events",
            "original_partition": 4,
            "original_offset": 99,
        },
    )
    summary = letter.summary()
    assert summary["position"] == "2:41"
    assert summary["source"] == "usage-events[4]@99"
    assert summary["failed_at"] == datetime.fromtimestamp(NOW, UTC)


def test_tickets_close_needs_ids_or_all(capsys, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["tickets", "close", "acme"]) == 1
    assert "give the ticket ids to close, or --all" in capsys.readouterr().err
