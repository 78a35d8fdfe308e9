"""Onboarding progress in the service's own table (``growth_onboarding_progress``, migration 0050)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import ConnectionPool


@dataclass(frozen=True)
class Completion:
    first: bool  # this call recorded it; False: it was recorded before (idempotent repeat)
    emitted: bool  # its onboarding_step_completed event is known written
    flow: str
    completed_at: datetime


class ProgressStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def completed(self, customer: str, person: str) -> list[str]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT step_id FROM growth_onboarding_progress WHERE customer_id = %s AND person_id = %s",
                (customer, person),
            ).fetchall()
        return [r[0] for r in rows]

    def complete(self, customer: str, person: str, step: str, flow: str) -> Completion:
        with self.pool.connection() as conn:
            inserted = conn.execute(
                "INSERT INTO growth_onboarding_progress (customer_id, person_id, step_id, flow)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING flow, completed_at",
                (customer, person, step, flow),
            ).fetchone()
            if inserted is not None:
                return Completion(True, False, inserted[0], inserted[1])
            row = conn.execute(
                "SELECT flow, completed_at, emitted FROM growth_onboarding_progress"
                " WHERE customer_id = %s AND person_id = %s AND step_id = %s",
                (customer, person, step),
            ).fetchone()
        assert row is not None  # rows are never deleted
        return Completion(False, bool(row[2]), row[0], row[1])

    def mark_emitted(self, customer: str, person: str, step: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE growth_onboarding_progress SET emitted = true"
                " WHERE customer_id = %s AND person_id = %s AND step_id = %s",
                (customer, person, step),
            )
