"""Onboarding progress in the service's own tables: ``growth_onboarding_progress`` (migration 0050) and
the completion actions' ledger ``growth_onboarding_actions`` (migration 0120).

A step's completion actions are applied in the transaction that records the completion: the progress row,
one ledger row per action (who, when, what: the audit) and each action's own effect (a flag override, a
trial) commit together or not at all, and only the call that inserted the progress row applies them — so a
retried or replayed completion applies nothing again. ``emit`` actions write to Kafka after the commit; the
ledger's ``emitted`` says which were acknowledged, and a repeat of the completion sends the rest again under
the same event ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from services.growth.onboarding import Action, Emit, GrantTrial, SetFlag
from services.growth.overrides import PERSON, set_override
from services.plans import trials


@dataclass(frozen=True)
class AppliedAction:
    index: int
    kind: str
    detail: dict[str, Any]
    applied_at: datetime
    actor: str
    emitted: bool


@dataclass(frozen=True)
class Completion:
    first: bool  # this call recorded it; False: it was recorded before (idempotent repeat)
    emitted: bool  # its onboarding_step_completed event is known written
    flow: str
    completed_at: datetime
    #: The completion's actions as the ledger holds them (applied by the first call only).
    actions: tuple[AppliedAction, ...] = field(default=())


def action_source(flow: str, step: str) -> str:
    return f"onboarding:{flow}/{step}"


def trial_grant_key(customer: str, person: str, step: str, index: int) -> str:
    return f"onboarding|{customer}|{person}|{step}|{index}"


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

    def complete(
        self,
        customer: str,
        person: str,
        step: str,
        flow: str,
        actions: Sequence[Action] = (),
        *,
        actor: str = "unknown",
        request_id: str | None = None,
    ) -> Completion:
        with self.pool.connection() as conn, conn.transaction():
            inserted = conn.execute(
                "INSERT INTO growth_onboarding_progress (customer_id, person_id, step_id, flow)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING flow, completed_at",
                (customer, person, step, flow),
            ).fetchone()
            if inserted is not None:
                source = action_source(flow, step)
                for index, action in enumerate(actions):
                    detail = action.detail()
                    if isinstance(action, SetFlag):
                        subject = person if action.scope == PERSON else ""
                        set_override(
                            conn, action.flag, customer, action.scope, subject, action.variant, source
                        )
                    elif isinstance(action, GrantTrial):
                        granted = trials.grant(
                            conn,
                            trial_grant_key(customer, person, step, index),
                            customer,
                            action.feature,
                            action.days,
                            source,
                        )
                        if granted is not None:
                            detail["expires_at"] = granted.expires_at.isoformat()
                    conn.execute(
                        "INSERT INTO growth_onboarding_actions (customer_id, person_id, step_id,"
                        " action_index, kind, detail, flow, actor, request_id)"
                        " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)",
                        (
                            customer,
                            person,
                            step,
                            index,
                            action.kind,
                            json.dumps(detail),
                            flow,
                            actor[:200] or "unknown",
                            request_id,
                        ),
                    )
                return Completion(
                    True, False, inserted[0], inserted[1], self._actions(conn, customer, person, step)
                )
            row = conn.execute(
                "SELECT flow, completed_at, emitted FROM growth_onboarding_progress"
                " WHERE customer_id = %s AND person_id = %s AND step_id = %s",
                (customer, person, step),
            ).fetchone()
            assert row is not None  # rows are deleted only by erasure
            applied = self._actions(conn, customer, person, step)
        return Completion(False, bool(row[2]), row[0], row[1], applied)

    @staticmethod
    def _actions(conn: Any, customer: str, person: str, step: str) -> tuple[AppliedAction, ...]:
        rows = conn.execute(
            "SELECT action_index, kind, detail, applied_at, actor, emitted FROM growth_onboarding_actions"
            " WHERE customer_id = %s AND person_id = %s AND step_id = %s ORDER BY action_index",
            (customer, person, step),
        ).fetchall()
        return tuple(AppliedAction(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows)

    def claim_emit(self, customer: str, person: str, step: str, index: int | None = None) -> bool:
        """Take the right to write a completion's event not written yet: the step's own (``index`` None) or
        its emit action ``index``. False when it is written, or another request holds a fresh claim — so
        concurrent repeats of a completion write each event once. A claim lapses after
        :data:`EMIT_LEASE_SECONDS` (its request died) or on :meth:`release_emit` (its write failed)."""
        table, extra = _emit_row(index)
        with self.pool.connection() as conn:
            row = conn.execute(
                f"UPDATE {table} SET emit_claimed_at = now() WHERE customer_id = %s AND person_id = %s"
                f" AND step_id = %s{extra} AND NOT emitted AND (emit_claimed_at IS NULL"
                " OR emit_claimed_at < now() - make_interval(secs => %s)) RETURNING 1",
                (customer, person, step, *(() if index is None else (index,)), EMIT_LEASE_SECONDS),
            ).fetchone()
        return row is not None

    def release_emit(self, customer: str, person: str, step: str, index: int | None = None) -> None:
        table, extra = _emit_row(index)
        with self.pool.connection() as conn:
            conn.execute(
                f"UPDATE {table} SET emit_claimed_at = NULL WHERE customer_id = %s AND person_id = %s"
                f" AND step_id = %s{extra}",
                (customer, person, step, *(() if index is None else (index,))),
            )

    def mark_action_emitted(self, customer: str, person: str, step: str, index: int) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE growth_onboarding_actions SET emitted = true WHERE customer_id = %s"
                " AND person_id = %s AND step_id = %s AND action_index = %s",
                (customer, person, step, index),
            )

    def mark_emitted(self, customer: str, person: str, step: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE growth_onboarding_progress SET emitted = true"
                " WHERE customer_id = %s AND person_id = %s AND step_id = %s",
                (customer, person, step),
            )


#: How long a request's claim on writing an event holds (the write itself gives up after 10 s).
EMIT_LEASE_SECONDS = 30.0


def _emit_row(index: int | None) -> tuple[str, str]:
    if index is None:
        return "growth_onboarding_progress", ""
    return "growth_onboarding_actions", " AND action_index = %s"


def pending_emits(completion: Completion) -> list[tuple[int, Emit]]:
    """The completion's emit actions whose event is not known written yet, from the ledger (the config may
    have changed since; the ledger's detail is what was decided at completion)."""
    out: list[tuple[int, Emit]] = []
    for a in completion.actions:
        if a.kind == Emit.kind and not a.emitted:
            out.append((a.index, Emit(str(a.detail["event"]), dict(a.detail.get("properties") or {}))))
    return out
