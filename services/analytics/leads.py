"""Product-qualified leads at the edges: the accounts from the customers table (PostgreSQL), their signals
from the store, and the watcher that records each new lead once (``pql_leads``, an outbox) and then sends
it to the ``pql`` topic and the webhooks, each at least once (``pql_id`` deduplicates).

Why an outbox in PostgreSQL, not the store: the claim "this account qualified" must happen once across
replicas (its primary key) and survive a crash between deciding and sending; the sends then retry from it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from services.activation import ActivationConfig
from services.analytics import queries
from services.analytics.pql import Account, PqlRules, eligible, evaluate, rank
from services.analytics.store import AnalyticsStore
from services.kernel import metrics
from services.kernel.kafka import Producer
from services.kernel.lifecycle import wait_or_stop
from services.kernel.serde import ValueEncoder
from services.kernel.webhooks import WebhookSender

log = logging.getLogger(__name__)

Connect = Callable[[], AbstractContextManager[Any]]

LEADS = metrics.counter("plg_analytics_pql", "Product-qualified leads recorded (first qualification).")


def accounts(conn: Any, rules: PqlRules) -> list[Account]:
    """Accounts on a plan sales looks at, or trialing (the customers table is the authority on both)."""
    rows = conn.execute(
        "SELECT customer_id, plan, billing_status, csm_owner,"
        " suspended_at IS NOT NULL AND (suspended_until IS NULL OR suspended_until > now())"
        " FROM customers WHERE plan = ANY(%s) OR (%s AND billing_status = 'trialing')",
        (sorted(rules.plans), rules.trialing),
    ).fetchall()
    return [Account(str(c), str(p), str(b), o, bool(s)) for c, p, b, o, s in rows]


def recorded(conn: Any, customers: Sequence[str]) -> dict[str, int]:
    """When each of these accounts first qualified (epoch ms), for those that did."""
    rows = conn.execute(
        "SELECT customer_id, (extract(epoch FROM qualified_at) * 1000)::bigint FROM pql_leads"
        " WHERE customer_id = ANY(%s)",
        (list(customers),),
    ).fetchall()
    return {str(c): int(t) for c, t in rows}


def find_leads(
    store: AnalyticsStore,
    connect: Connect,
    activation: ActivationConfig,
    rules: PqlRules,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Every account that qualifies now, best first, with its evidence (and when it first qualified)."""
    with connect() as conn:
        candidates = [a for a in accounts(conn, rules) if eligible(a, rules)]
    thresholds = [
        {"name": t.name, "event": t.event, "count": t.count, "window_days": t.window_days}
        for t in activation.thresholds
    ]
    signals = queries.pql_signals(
        store, [a.customer_id for a in candidates], now_ms, rules.window_days, thresholds
    )
    leads = []
    for account in candidates:
        found = signals.get(account.customer_id)
        lead = evaluate(account, found, rules) if found is not None else None
        if lead is not None:
            leads.append(lead)
    if leads:
        with connect() as conn:
            first = recorded(conn, [lead["customer_id"] for lead in leads])
        for lead in leads:
            lead["qualified_at"] = first.get(lead["customer_id"])
    return rank(leads)


def avro_record(lead: dict[str, Any], qualified_at: int) -> dict[str, Any]:
    return {
        "pql_id": lead["pql_id"],
        "customer_id": lead["customer_id"],
        "plan": lead["plan"],
        "billing_status": lead["billing_status"],
        "csm_owner": lead.get("csm_owner"),
        "score": int(lead["score"]),
        "reasons": list(lead["reasons"]),
        "evidence": orjson.dumps(lead["evidence"]).decode(),
        "qualified_at": qualified_at,
    }


class PqlWatcher:
    """Every ``interval`` seconds: find the leads, record the new ones, publish the unpublished ones, and
    deliver due webhooks (signed like the health alerts' when a secret is set)."""

    def __init__(
        self,
        store: AnalyticsStore,
        connect: Connect,
        activation: ActivationConfig,
        rules: PqlRules,
        producer: Producer,
        encoder: ValueEncoder,
        topic: str,
        webhooks: Sequence[str] = (),
        signing_secret: str | None = None,
        interval: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.connect = connect
        self.activation = activation
        self.rules = rules
        self.producer = producer
        self.encoder = encoder
        self.topic = topic
        self.webhooks = WebhookSender(
            webhooks,
            what="pql",
            key_field="pql_id",
            log=log,
            signing_secret=signing_secret,
            timeout=timeout,
        )
        self.interval = interval
        self.healthy = False
        self.rounds = 0

    def run(self, stop: threading.Event) -> None:
        try:
            while True:
                try:
                    self.round()
                    self.healthy = True
                except Exception:  # store, database or broker trouble: logged, retried next round
                    self.healthy = False
                    log.exception("pql round failed; retrying")
                self.rounds += 1
                if wait_or_stop(stop, self.interval):
                    return
        finally:
            self.webhooks.close()

    def round(self, now_ms: int | None = None) -> int:
        """One evaluation; returns how many accounts newly qualified."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        leads = find_leads(self.store, self.connect, self.activation, self.rules, now_ms)
        new = self.record([lead for lead in leads if lead.get("qualified_at") is None], now_ms)
        self.publish()
        self.deliver()
        return new

    def record(self, leads: Sequence[dict[str, Any]], now_ms: int) -> int:
        if not leads:
            return 0
        at = datetime.fromtimestamp(now_ms / 1000, UTC)
        new = 0
        with self.connect() as conn:
            for lead in leads:
                record = avro_record(lead, now_ms)
                row = conn.execute(
                    "INSERT INTO pql_leads (customer_id, pql_id, record, qualified_at)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (customer_id) DO NOTHING RETURNING customer_id",
                    (lead["customer_id"], lead["pql_id"], Jsonb(record), at),
                ).fetchone()
                if row is not None:
                    new += 1
                    log.info(
                        "product-qualified lead",
                        extra={"customer_id": lead["customer_id"], "score": lead["score"]},
                    )
        LEADS.inc(new)
        return new

    def publish(self) -> int:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT pql_id, record FROM pql_leads WHERE published_at IS NULL"
                " ORDER BY qualified_at LIMIT 500"
            ).fetchall()
        if not rows:
            return 0
        futures = [
            self.producer.send(self.topic, self.encoder.encode(record), key=record["customer_id"])
            for _, record in rows
        ]
        for future in futures:
            future.result(timeout=30)
        with self.connect() as conn:
            conn.execute(
                "UPDATE pql_leads SET published_at = now() WHERE pql_id = ANY(%s)", ([r[0] for r in rows],)
            )
        return len(rows)

    def deliver(self) -> int:
        if not self.webhooks.urls:
            return 0
        with self.connect() as conn:
            due = conn.execute(
                "SELECT pql_id, record, webhooks_done, webhook_attempts FROM pql_leads"
                " WHERE NOT webhooks_settled AND webhook_next_at <= now() ORDER BY qualified_at LIMIT 100"
            ).fetchall()
        for pql_id, record, done, attempts in due:
            body = orjson.dumps({"type": "pql", **record, "evidence": orjson.loads(record["evidence"])})
            sent = self.webhooks.deliver(body, record["pql_id"], done, attempts)
            with self.connect() as conn:
                conn.execute(
                    "UPDATE pql_leads SET webhooks_done = %s, webhook_attempts = webhook_attempts + 1,"
                    " webhooks_settled = %s, webhook_next_at = now() + make_interval(secs => %s)"
                    " WHERE pql_id = %s",
                    # A settled row is never read again: its next attempt time does not matter.
                    (sent.done, sent.settled, sent.retry_in or 0.0, pql_id),
                )
        return len(due)
