"""Pure pieces of analytics: an enriched event as a store row, durations, and query answers' shapes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.kernel.topics import HISTORICAL_PROPERTY

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: A funnel's conversion window may not exceed a year: longer is a retention question.
MAX_WINDOW_SECONDS = 366 * 86400


class QueryError(ValueError):
    """A query the caller can fix (unknown step, bad window): answered 400 / exit 1 with this text."""


def parse_duration(text: str) -> int:
    """``"7d"`` → 604800 seconds; units s, m, h, d, w."""
    match = _DURATION.match(text)
    if match is None:
        raise QueryError(f"duration {text!r} is not a whole number followed by s, m, h, d or w (e.g. 7d)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise QueryError(f"duration {text!r} must be positive")
    return seconds


def person_of(event: Mapping[str, Any]) -> str:
    """Whom the event is about: enrichment's person (the identity graph's survivor), else the user, else the
    anonymous id; empty for account-level events (they count for customers, not persons)."""
    for field in ("person_id", "resolved_user_id", "user_id", "anonymous_id"):
        value = event.get(field)
        if value:
            return str(value)
    return ""


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def store_time(ms: int) -> str:
    """Epoch milliseconds as ClickHouse reads them into ``DateTime64(3)`` exactly: a whole number would be
    taken as seconds, so it is written as ``seconds.millis``."""
    seconds, millis = divmod(int(ms), 1000)
    return f"{seconds}.{millis:03d}"


def row_of(event: Mapping[str, Any], topic: str, partition: int, offset: int) -> dict[str, Any]:
    """The store row of one decoded ``usage-events-enriched`` value."""
    properties = {str(k): _text(v) for k, v in (event.get("properties") or {}).items()}
    historical = properties.get(HISTORICAL_PROPERTY) == "true"
    received = event.get("received_at")
    tenant = event.get("tenant") or {}
    return {
        "event_id": event["event_id"],
        "customer_id": event["customer_id"],
        "name": event["name"],
        "ts": store_time(event["timestamp"]),
        "person": person_of(event),
        "user_id": event.get("user_id"),
        "anonymous_id": event.get("anonymous_id"),
        "session_id": event.get("session_id"),
        "plan": event.get("plan") or "",
        "properties": properties,
        "schema_version": event.get("schema_version"),
        "historical": 1 if historical else 0,
        "received_at": None if received is None else store_time(received),
        "enriched_at": store_time(event.get("enriched_at") or event["timestamp"]),
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "billing_status": tenant.get("billing_status") or "",
        "open_tickets": int(tenant.get("open_tickets") or 0),
    }


def limit_hit_row(event: Mapping[str, Any], topic: str, partition: int, offset: int) -> dict[str, Any]:
    """The store row of one decoded ``entitlement-events`` value (a plan-limit crossing)."""
    return {
        "event_id": event["event_id"],
        "customer_id": event["customer_id"],
        "meter": event["meter"],
        "plan": event.get("plan") or "",
        "threshold_percent": int(event["threshold_percent"]),
        # Decimals as text: JSON numbers would pass through a float on the way into Decimal(38, 9).
        "usage": str(event["usage"]),
        "limit_value": str(event["limit"]),
        "hard_limit": 1 if event.get("hard_limit") else 0,
        "occurred_at": store_time(event["occurred_at"]),
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }


def dedup_token(
    group: str, next_offsets: Mapping[tuple[str, int], int], firsts: Mapping[tuple[str, int], int]
) -> str:
    """The insert's deduplication token: the group and each partition's offset range of the batch, so a
    retried insert of the very same batch is dropped by the engine."""
    ranges = ",".join(
        f"{t}/{p}:{firsts[(t, p)]}-{n}" for (t, p), n in sorted(next_offsets.items()) if (t, p) in firsts
    )
    return f"{group}:{ranges}"


@dataclass(frozen=True, slots=True)
class FunnelStep:
    name: str
    count: int


def funnel_steps(steps: Sequence[str], levels: Iterable[tuple[int, int]]) -> list[FunnelStep]:
    """Persons per step from ``(level reached, persons)`` pairs: step i counts everyone who reached a level
    past it, in order, inside the window."""
    reached = [0] * (len(steps) + 1)
    for level, persons in levels:
        reached[min(max(level, 0), len(steps))] += persons
    out, running = [], 0
    for i in range(len(steps), 0, -1):
        running += reached[i]
        out.append(FunnelStep(steps[i - 1], running))
    return list(reversed(out))


def check_steps(steps: Sequence[str]) -> list[str]:
    cleaned = [s.strip() for s in steps if s.strip()]
    if len(cleaned) < 2:
        raise QueryError("a funnel needs at least two steps (e.g. steps=signed_up,project_created)")
    if len(cleaned) > 20:
        raise QueryError(f"a funnel has at most 20 steps, got {len(cleaned)}")
    return cleaned


def retention_table(rows: Iterable[Mapping[str, Any]], weeks: int) -> list[dict[str, Any]]:
    """``(cohort, week, persons)`` rows → one entry per cohort week with its size (week ``-1``: every
    person of the cohort) and the persons active in each week from the first (0 where none were),
    ``weeks`` columns at most."""
    cohorts: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    for row in rows:
        week, cohort = int(row["week"]), str(row["cohort"])
        if week == -1:
            sizes[cohort] = int(row["persons"])
            cohorts.setdefault(cohort, [0] * weeks)
        elif 0 <= week < weeks:
            cohorts.setdefault(cohort, [0] * weeks)[week] = int(row["persons"])
    out = []
    for cohort in sorted(cohorts):
        counts = cohorts[cohort]
        size = sizes.get(cohort, counts[0])
        out.append(
            {
                "cohort": cohort,
                "size": size,
                "weeks": counts,
                "rates": [round(n / size, 4) if size else 0.0 for n in counts],
            }
        )
    return out
