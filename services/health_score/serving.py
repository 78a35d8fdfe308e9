"""The serving layer: the latest score of every customer (a materialised view of the compacted
``customer-health`` topic), its daily history, its alerts (``customer-alerts``) and recent enriched events,
all in memory so the API answers in microseconds; and the hub that pushes changes to SSE subscribers."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from services.health_score.model import day_of
from services.health_score.store import to_date
from services.kernel import metrics
from services.kernel.processing import Message

RECENT_EVENTS = 50
RECENT_ALERTS = 20

SERVING = metrics.gauge(
    "plg_health_serving_entries",
    "Customers in the API's in-memory maps, by map: scores (latest), history, alerts, events, plan_usage, "
    "list_rows (the list's rows kept between requests), and "
    "directory (the customers table as the list reads it). Bounded by the customers table: every customer id "
    "comes from an API key; per customer, history keeps HEALTH_HISTORY_DAYS points and alerts and events "
    "their last RECENT_ALERTS and RECENT_EVENTS.",
    ("map",),
)


class Hub:
    """Fan-out to the dashboard's SSE connections. ``publish`` is called from Kafka threads; each
    subscriber is an asyncio queue on the server's loop (bounded: a stalled browser loses events, never
    memory)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[
            int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[tuple[str, Any]], str | None]
        ] = {}
        self._customers: dict[str, int] = {}
        self._all = 0
        self._next = 0

    def subscribe(self, customer: str | None) -> tuple[int, asyncio.Queue[tuple[str, Any]]]:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1000)
        loop = asyncio.get_running_loop()
        with self._lock:
            self._next += 1
            self._subs[self._next] = (loop, queue, customer)
            if customer is None:
                self._all += 1
            else:
                self._customers[customer] = self._customers.get(customer, 0) + 1
            return self._next, queue

    def unsubscribe(self, sub_id: int) -> None:
        with self._lock:
            entry = self._subs.pop(sub_id, None)
            if entry is None:
                return
            customer = entry[2]
            if customer is None:
                self._all -= 1
            else:
                self._customers[customer] -= 1
                if not self._customers[customer]:
                    del self._customers[customer]

    def wants(self, customer: str, everyone: bool) -> bool:
        return customer in self._customers or (everyone and self._all > 0)

    def publish(self, kind: str, customer: str, data: Any, everyone: bool = True) -> None:
        if not self.wants(customer, everyone):
            return
        with self._lock:
            targets = [
                (loop, queue)
                for loop, queue, c in self._subs.values()
                if c == customer or (everyone and c is None)
            ]
        for loop, queue in targets:
            loop.call_soon_threadsafe(_offer, queue, (kind, data))


def _offer(queue: asyncio.Queue[tuple[str, Any]], item: tuple[str, Any]) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # a stalled browser loses events, the server no memory
        queue.put_nowait(item)


def _identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """What every answer about a customer's score starts with."""
    return {
        "customer_id": record["customer_id"],
        "score": record["score"],
        "band": record.get("band"),
        "segment": record.get("segment"),
        "plan": record.get("plan"),
        "churn_risk": record.get("churn_risk_probability"),
        "computed_at": record["computed_at"],
    }


def summary(record: Mapping[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """A row of the overview and of ``GET /v1/health``."""
    return {
        **_identity(record),
        "trend": record.get("trend", 0),
        "trend_direction": record.get("trend_direction"),
        "sparkline": [h["score"] for h in history],
    }


def detail(record: Mapping[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /v1/health/{customer}``: the score with its trend, explanation and history."""
    return {
        **_identity(record),
        "components": record.get("components") or {},
        "trend": {
            "previous_score": record.get("previous_score"),
            "change": record.get("trend", 0),
            "direction": record.get("trend_direction"),
        },
        "explanation": {
            "contributions": record.get("contributions") or {},
            "top_factors": record.get("top_factors") or [],
            "factors": record.get("factors") or [],
        },
        "history": history,
        "active_users": record.get("active_users"),
        "seats": record.get("seats"),
        "path": record.get("path"),
        "config_version": record.get("config_version"),
    }


_SERVING_MAPS: tuple[tuple[str, Callable[[ServingCache], int]], ...] = (
    ("scores", lambda c: len(c.latest)),
    ("history", lambda c: len(c.history)),
    ("alerts", lambda c: len(c.alerts)),
    ("events", lambda c: len(c.events)),
    ("plan_usage", lambda c: len(c.plan_usage)),
)


def _rank(row: Mapping[str, Any]) -> tuple[Any, Any, str]:
    """Where a summary sits in the list: lowest score, then falling fastest, then by id."""
    return (row["score"], row["trend"] or 0, row["customer_id"])


class ServingCache:
    def __init__(self, hub: Hub, history_days: int = 56) -> None:
        self.hub = hub
        self.history_days = history_days
        self.latest: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.alerts: dict[str, deque[dict[str, Any]]] = {}
        self.events: dict[str, deque[dict[str, Any]]] = {}
        self.plan_usage: dict[str, dict[str, dict[str, Any]]] = {}
        self.changed: dict[str, float] = {}  # customer → time.monotonic() the cache saw its latest score
        # Each customer's row of the list, kept as scores arrive (the list only filters and slices them),
        # and the customers in list order: (score, trend, id) kept sorted, so a change moves one entry.
        self.summaries: dict[str, dict[str, Any]] = {}
        self._order: list[tuple[Any, Any, str]] = []
        self._sorted: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()
        for label, size in _SERVING_MAPS:
            metrics.track_size(SERVING.labels(label), self, size)

    def load_history(self, history: Mapping[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            for cid, rows in history.items():
                self.history[cid] = kept = list(rows)[-self.history_days :]
                record = self.latest.get(cid)
                if record is not None:
                    self._summarise(cid, record, kept)

    # -- fed by the views and the scorer (Kafka threads) -----------------------------------------------

    def apply_health(self, message: Message) -> None:
        record = message.value
        if record is None:
            return
        cid = record["customer_id"]
        old = self.latest.get(cid)
        if old is not None and old["computed_at"] > record["computed_at"]:
            return  # a batch recompute older than a real-time score that overtook it
        import time

        day = to_date(day_of(record["computed_at"])).isoformat()
        with self._lock:
            self.latest[cid] = record
            rows = self.history.setdefault(cid, [])
            point = {"day": day, "score": record["score"], "band": record.get("band")}
            if rows and rows[-1]["day"] == day:
                rows[-1] = point
            else:
                rows.append(point)
                del rows[: -self.history_days]
            row = self._summarise(cid, record, rows)
            self.changed[cid] = time.monotonic()
        self.hub.publish("score", cid, row)

    def _summarise(
        self, cid: str, record: Mapping[str, Any], history: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Under the lock: the customer's new summary, moved to its place in the order."""
        row = summary(record, history)
        old = self.summaries.get(cid)
        order = self._order
        if old is not None:
            at = bisect.bisect_left(order, _rank(old))
            if at < len(order) and order[at][2] == cid:
                del order[at]
        bisect.insort(order, _rank(row))
        self.summaries[cid] = row
        self._sorted = None
        return row

    def apply_alert(self, message: Message) -> None:
        alert = message.value
        if alert is None:
            return
        cid = alert["customer_id"]
        with self._lock:
            box = self.alerts.setdefault(cid, deque(maxlen=RECENT_ALERTS))
            if any(a["alert_id"] == alert["alert_id"] for a in box):
                return  # at-least-once delivery: seen already
            box.appendleft(alert)
        self.hub.publish("alert", cid, alert)

    def add_events(self, events: list[Mapping[str, Any]]) -> None:
        for event in events:
            cid = event["customer_id"]
            item = {
                "event_id": event["event_id"],
                "name": event["name"],
                "timestamp": event["timestamp"],
                "person_id": event.get("person_id"),
                "plan": event.get("plan"),
                "violations": len(event.get("violations") or []),
            }
            box = self.events.get(cid)
            if box is None:
                box = self.events[cid] = deque(maxlen=RECENT_EVENTS)
            box.appendleft(item)
            self.hub.publish("event", cid, item, everyone=False)

    def forget(self, customer_id: str, matches: Callable[[Any], bool]) -> int:
        """Drop the live events of the persons ``matches`` names (an erasure, docs/privacy.md)."""
        box = self.events.get(customer_id)
        if box is None:
            return 0
        kept = [e for e in list(box) if not matches(e.get("person_id"))]
        # Replaced whole (one atomic store) rather than edited in place under the scorer's appends.
        self.events[customer_id] = deque(kept, maxlen=box.maxlen)
        return len(box) - len(kept)

    def add_entitlements(self, events: list[Mapping[str, Any]]) -> None:
        """The latest plan-limit crossing per meter (entitlement-events): usage against limits."""
        for event in events:
            meters = self.plan_usage.setdefault(event["customer_id"], {})
            known = meters.get(event["meter"])
            if known is not None and known["occurred_at"] > event["occurred_at"]:
                continue
            meters[event["meter"]] = {
                "meter": event["meter"],
                "usage": str(event["usage"]),
                "limit": str(event["limit"]),
                "percent": event["threshold_percent"],
                "hard_limit": event["hard_limit"],
                "occurred_at": event["occurred_at"],
            }

    # -- read by the API (the event loop) ---------------------------------------------------------------

    def ranked(self) -> list[dict[str, Any]]:
        """Every customer's summary, riskiest first (lowest score, then falling fastest)."""
        ranked = self._sorted
        if ranked is None:
            with self._lock:
                summaries = self.summaries
                ranked = [summaries[key[2]] for key in self._order]
                self._sorted = ranked
        return ranked
