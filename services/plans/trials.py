"""Trial features: a boolean feature a customer may use until a date although its plan lacks it (seed 002's
"unlock feature" on completing an onboarding step). The one owner of the ``feature_trials`` table
(migration 0120): growth's onboarding actions grant, the entitlement API reads.

A grant is idempotent by its ``grant_key`` (the caller's stable name for "this grant", e.g. the onboarding
completion and action), so a retried or replayed grant never extends or repeats a trial. Writing a grant
touches the customer's row: the customers trigger's notification makes every entitlement API instance drop
its cached trials of that customer at once, as billing's credit grants do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from services.customers import store as customers


@dataclass(frozen=True, slots=True)
class Trial:
    feature: str
    granted_at: datetime
    expires_at: datetime
    source: str


def grant(
    conn: psycopg.Connection[Any], grant_key: str, customer_id: str, feature: str, days: int, source: str
) -> Trial | None:
    """Grant ``feature`` for ``days`` from now, in the caller's transaction; None when ``grant_key`` was
    granted before (nothing changes then)."""
    row = conn.execute(
        "INSERT INTO feature_trials (grant_key, customer_id, feature, expires_at, source)"
        " VALUES (%s, %s, %s, now() + %s, %s) ON CONFLICT (grant_key) DO NOTHING"
        " RETURNING granted_at, expires_at",
        (grant_key, customer_id, feature, timedelta(days=days), source),
    ).fetchone()
    if row is None:
        return None
    # The customers trigger notifies plg_customer_changed: entitlement APIs re-read the trials now.
    customers.notify_changed(conn, customer_id)
    return Trial(feature, row[0], row[1], source)


def active(conn: psycopg.Connection[Any], customer_id: str) -> list[Trial]:
    """The customer's trials that have not expired, latest expiry first."""
    rows = conn.execute(
        "SELECT feature, granted_at, expires_at, source FROM feature_trials"
        " WHERE customer_id = %s AND expires_at > now() ORDER BY expires_at DESC",
        (customer_id,),
    ).fetchall()
    return [Trial(*row) for row in rows]


def trial_until(active_trials: list[Trial], feature: str, now_ms: int) -> int | None:
    """When the latest unexpired trial of ``feature`` ends (epoch ms), or None (pure)."""
    ends = [
        int(t.expires_at.timestamp() * 1000)
        for t in active_trials
        if t.feature == feature and t.expires_at.timestamp() * 1000 > now_ms
    ]
    return max(ends) if ends else None
