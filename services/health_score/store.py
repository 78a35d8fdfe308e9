"""PostgreSQL side of the health score (migrations 0060, 0150): daily facts, context and alert state per
customer, daily score history, consumed offsets, the alert outbox, and for several scorer instances the
home partitions' owners (a fencing epoch each) and the inbox of inputs read away from their customer's
home (docs/health-score.md#scaling-out-several-scorer-instances)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from services.health_score.alerts import Alert, CustomerAlertState
from services.health_score.model import Context, DayFacts, HealthScore

EPOCH = date(1970, 1, 1)


def _dumps(value: Any) -> str:
    # An inbox payload is a decoded record: entitlement-events' usage and limit are Decimals (kept as
    # their exact text, which is all the readers use of them).
    return json.dumps(value, default=str)


def to_date(day: int) -> date:
    return EPOCH + timedelta(days=day)


def to_day(value: date) -> int:
    return (value - EPOCH).days


@dataclass
class CustomerState:
    """Everything the scorer holds for one customer; the same rows the batch path reads."""

    facts: dict[int, DayFacts]
    context: Context
    alerts: CustomerAlertState


class Fenced(Exception):
    """A home partition this instance claimed has been claimed since by another: its cache is stale and
    nothing of the transaction was written."""


@dataclass(frozen=True)
class InboxEntry:
    """An input read away from its customer's home, waiting there (``kind``: event | entitlement)."""

    id: int
    customer_id: str
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ScoreRow:
    score: HealthScore
    record: dict[str, Any]
    path: str


class HealthStore:
    def __init__(self, pool: ConnectionPool, consumer_group: str) -> None:
        self.pool = pool
        self.consumer_group = consumer_group

    # -- reads ------------------------------------------------------------------------------------------

    def load(self, customer_ids: Iterable[str], since_day: int) -> dict[str, CustomerState]:
        ids = list(customer_ids)
        states = {c: CustomerState({}, Context(), CustomerAlertState()) for c in ids}
        if not ids:
            return states
        with self.pool.connection() as conn:
            for cid, day, facts in conn.execute(
                "SELECT customer_id, day, facts FROM health_daily_facts"
                " WHERE customer_id = ANY(%s) AND day >= %s",
                (ids, to_date(since_day)),
            ):
                states[cid].facts[to_day(day)] = DayFacts.from_json(facts)
            for cid, context, alert_state in conn.execute(
                "SELECT customer_id, context, alert_state FROM health_context WHERE customer_id = ANY(%s)",
                (ids,),
            ):
                states[cid].context = Context.from_json(context)
                states[cid].alerts = CustomerAlertState.from_json(alert_state)
        return states

    def inbox(self, homes: Iterable[int], limit: int = 5000) -> list[InboxEntry]:
        """The oldest entries waiting for ``homes`` (home partitions this instance owns)."""
        wanted = sorted(homes)
        if not wanted:
            return []
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, customer_id, kind, payload FROM health_inbox"
                " WHERE consumer_group = %s AND home_partition = ANY(%s) ORDER BY id LIMIT %s",
                (self.consumer_group, wanted, limit),
            ).fetchall()
        return [InboxEntry(i, c, k, p) for i, c, k, p in rows]

    def customers(self) -> list[str]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT customer_id FROM health_context"
                " UNION SELECT DISTINCT customer_id FROM health_daily_facts"
            ).fetchall()
        return sorted(r[0] for r in rows)

    def stored_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        wanted = set(partitions)
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT topic, partition, next_offset FROM health_offsets WHERE consumer_group = %s",
                (self.consumer_group,),
            ).fetchall()
        return {(t, p): o for t, p, o in rows if (t, p) in wanted}

    def history(self, since_day: int, customer_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Daily scores per customer, oldest first."""
        query = "SELECT customer_id, day, score, band FROM health_scores_daily WHERE day >= %s"
        params: list[Any] = [to_date(since_day)]
        if customer_id is not None:
            query += " AND customer_id = %s"
            params.append(customer_id)
        out: dict[str, list[dict[str, Any]]] = {}
        with self.pool.connection() as conn:
            for cid, day, score, band in conn.execute(query + " ORDER BY customer_id, day", params):
                out.setdefault(cid, []).append({"day": day.isoformat(), "score": score, "band": band})
        return out

    def recent_alerts(self, customer_id: str, limit: int = 20) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT payload FROM health_alerts WHERE customer_id = %s ORDER BY fired_at DESC LIMIT %s",
                (customer_id, limit),
            ).fetchall()
        return [r[0] for r in rows]

    # -- writes -----------------------------------------------------------------------------------------

    def claim(self, partitions: Iterable[int], owner: str) -> dict[int, int]:
        """Claims home partitions for ``owner`` (just assigned by Kafka): each one's epoch goes up by one,
        so a previous owner's next write is fenced. Waits for a write in flight under an older epoch to
        finish (it holds a share lock), so state loaded after this sees it."""
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "INSERT INTO health_partition_owners (consumer_group, partition, epoch, owner)"
                " SELECT %s, p, 1, %s FROM unnest(%s::int[]) AS p"
                " ON CONFLICT (consumer_group, partition) DO UPDATE"
                " SET epoch = health_partition_owners.epoch + 1, owner = EXCLUDED.owner, claimed_at = now()"
                " RETURNING partition, epoch",
                (self.consumer_group, owner, wanted),
            ).fetchall()
        return {p: e for p, e in rows}

    def save(
        self,
        states: Mapping[str, CustomerState],
        touched_days: Mapping[str, set[int]],
        scores: Sequence[ScoreRow],
        alerts: Sequence[Alert],
        offsets: Mapping[tuple[str, int], int],
        *,
        fence: Mapping[int, int] | None = None,
        inbox_add: Sequence[tuple[int, str, str, Mapping[str, Any]]] = (),
        inbox_done: Sequence[int] = (),
    ) -> None:
        """The batch's effect in one transaction: the days it touched, contexts and alert states, the day's
        scores, the alerts it fired and the offsets it consumed — plus, with several instances, the inputs
        it routes to other homes (``inbox_add``: home partition, customer, kind, payload) and the inbox
        entries it folded (``inbox_done``).

        ``fence`` (home partition → the epoch this instance claimed) is checked first under a share lock:
        :class:`Fenced` when another instance has claimed one since, or took an inbox entry (nothing is
        written then)."""
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if fence:
                cur.execute(
                    "SELECT partition, epoch FROM health_partition_owners"
                    " WHERE consumer_group = %s AND partition = ANY(%s) FOR SHARE",
                    (self.consumer_group, sorted(fence)),
                )
                current: dict[int, int] = dict(cur.fetchall())
                stale = sorted(p for p, e in fence.items() if current.get(p) != e)
                if stale:
                    raise Fenced(f"home partitions {stale} were claimed by another instance")
            if inbox_done:
                cur.execute("DELETE FROM health_inbox WHERE id = ANY(%s)", (list(inbox_done),))
                if cur.rowcount != len(set(inbox_done)):
                    raise Fenced("inbox entries were folded by another instance")
            if inbox_add:
                cur.executemany(
                    "INSERT INTO health_inbox (consumer_group, home_partition, customer_id, kind, payload)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [
                        (self.consumer_group, h, c, k, Jsonb(dict(v), dumps=_dumps))
                        for h, c, k, v in inbox_add
                    ],
                )
            fact_rows = [
                (cid, to_date(day), Jsonb(states[cid].facts[day].to_json()))
                for cid, days in touched_days.items()
                for day in sorted(days)
                if day in states[cid].facts
            ]
            if fact_rows:
                cur.executemany(
                    "INSERT INTO health_daily_facts (customer_id, day, facts) VALUES (%s, %s, %s)"
                    " ON CONFLICT (customer_id, day)"
                    " DO UPDATE SET facts = EXCLUDED.facts, updated_at = now()",
                    fact_rows,
                )
            context_rows = [
                (cid, Jsonb(states[cid].context.to_json()), Jsonb(states[cid].alerts.to_json()))
                for cid in states
            ]
            if context_rows:
                cur.executemany(
                    "INSERT INTO health_context (customer_id, context, alert_state) VALUES (%s, %s, %s)"
                    " ON CONFLICT (customer_id) DO UPDATE"
                    " SET context = EXCLUDED.context, alert_state = EXCLUDED.alert_state",
                    context_rows,
                )
            self._save_scores(cur, scores)
            if alerts:
                cur.executemany(
                    "INSERT INTO health_alerts"
                    " (alert_id, customer_id, rule, payload, fired_at, consumer_group)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (alert_id) DO NOTHING",
                    [
                        (
                            a.alert_id,
                            a.customer_id,
                            a.rule,
                            Jsonb(a.to_record()),
                            a.fired_at,
                            self.consumer_group,
                        )
                        for a in alerts
                    ],
                )
            if offsets:
                cur.executemany(
                    "INSERT INTO health_offsets (consumer_group, topic, partition, next_offset)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (consumer_group, topic, partition)"
                    " DO UPDATE SET next_offset = GREATEST(health_offsets.next_offset, EXCLUDED.next_offset)",
                    [(self.consumer_group, t, p, o) for (t, p), o in offsets.items()],
                )

    def save_scores(self, scores: Sequence[ScoreRow]) -> None:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            self._save_scores(cur, scores)

    @staticmethod
    def _save_scores(cur: Any, scores: Sequence[ScoreRow]) -> None:
        if not scores:
            return
        cur.executemany(
            "INSERT INTO health_scores_daily (customer_id, day, score, band, segment, components, record,"
            " computed_at, path, config_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (customer_id, day) DO UPDATE SET score = EXCLUDED.score, band = EXCLUDED.band,"
            " segment = EXCLUDED.segment, components = EXCLUDED.components, record = EXCLUDED.record,"
            " computed_at = EXCLUDED.computed_at, path = EXCLUDED.path,"
            " config_version = EXCLUDED.config_version"
            " WHERE health_scores_daily.computed_at <= EXCLUDED.computed_at",
            [
                (
                    r.score.customer_id,
                    to_date(r.score.as_of // 86_400_000),
                    r.score.score,
                    r.score.band,
                    r.score.segment,
                    Jsonb(r.score.components),
                    Jsonb(r.record),
                    r.score.as_of,
                    r.path,
                    r.score.config_version,
                )
                for r in scores
            ],
        )

    def prune(self, before_day: int) -> int:
        """Drops daily facts older than the registry's retention."""
        with self.pool.connection() as conn:
            return conn.execute(
                "DELETE FROM health_daily_facts WHERE day < %s", (to_date(before_day),)
            ).rowcount

    # -- the alert outbox -------------------------------------------------------------------------------

    def unpublished_alerts(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT payload FROM health_alerts WHERE consumer_group = %s AND published_at IS NULL"
                " ORDER BY fired_at LIMIT %s",
                (self.consumer_group, limit),
            ).fetchall()
        return [r[0] for r in rows]

    def publish_alerts(self, publish: Callable[[list[dict[str, Any]]], None], limit: int = 200) -> int:
        """Unpublished alerts handed to ``publish`` (which returns once Kafka acknowledged them) and marked
        published, in one transaction that holds their rows: the alert senders of several scorer instances
        skip rows another is publishing (SKIP LOCKED), so none is published twice by two senders at once."""
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT alert_id, payload FROM health_alerts"
                " WHERE consumer_group = %s AND published_at IS NULL"
                " ORDER BY fired_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (self.consumer_group, limit),
            ).fetchall()
            if not rows:
                return 0
            publish([r[1] for r in rows])
            done = [r[0] for r in rows]
            conn.execute("UPDATE health_alerts SET published_at = now() WHERE alert_id = ANY(%s)", (done,))
        return len(rows)

    def mark_published(self, alert_ids: Sequence[str]) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE health_alerts SET published_at = now() WHERE alert_id = ANY(%s)", (list(alert_ids),)
            )

    def due_webhooks(
        self, limit: int = 50, lease_seconds: float = 120.0
    ) -> list[tuple[dict[str, Any], list[str], int]]:
        """Alerts whose webhooks are due, leased to the caller: their next attempt moves ``lease_seconds``
        ahead as they are taken (SKIP LOCKED), so another instance's sender does not POST them at the same
        time; :meth:`webhook_result` then sets the real outcome (a sender that died leaves the lease to
        expire, and another retries)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "UPDATE health_alerts SET next_attempt_at = now() + make_interval(secs => %s)"
                " WHERE alert_id IN (SELECT alert_id FROM health_alerts"
                " WHERE consumer_group = %s AND webhooks_finished_at IS NULL AND next_attempt_at <= now()"
                " ORDER BY fired_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING payload, webhooks_done, webhook_attempts, fired_at",
                (lease_seconds, self.consumer_group, limit),
            ).fetchall()
        return [(p, list(d), a) for p, d, a, _ in sorted(rows, key=lambda r: r[3])]

    def webhook_result(
        self, alert_id: str, done: Sequence[str], all_done: bool, retry_in: float | None
    ) -> None:
        with self.pool.connection() as conn:
            if all_done or retry_in is None:
                conn.execute(
                    "UPDATE health_alerts SET webhooks_done = %s, webhooks_finished_at = now(),"
                    " webhook_attempts = webhook_attempts + 1 WHERE alert_id = %s",
                    (list(done), alert_id),
                )
            else:
                conn.execute(
                    "UPDATE health_alerts SET webhooks_done = %s, webhook_attempts = webhook_attempts + 1,"
                    " next_attempt_at = now() + make_interval(secs => %s) WHERE alert_id = %s",
                    (list(done), retry_in, alert_id),
                )
