"""The billing ledger in PostgreSQL: the truth of what plg bills and what it told Stripe.

* ``apply`` (the sink, one transaction per consumed batch): the aggregates' latest totals, the consumed
  offsets, and the reports of every closed window whose total grew (late corrections as new revisions)
  — so a crash anywhere leaves offsets, usage and ledger agreeing, and a redelivered batch is skipped.
* ``plan`` (a timer, one transaction): the reports of windows that closed since, without new records.
* ``claim_due`` / ``mark_*`` / ``release`` (the outbox sender): lease due reports, record outcomes.

Windows are identified by (customer, meter, window start); each report row carries its revision, the
whole units it adds, the window total it brings Stripe to, and its deterministic identifier.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal
from typing import Any, cast

import psycopg
from psycopg_pool import ConnectionPool

from services.billing_reporter.planning import event_time, next_revision, report_identifier, whole_units
from services.kernel import metrics

log = logging.getLogger(__name__)

PERIOD = "BILLING_PERIOD"

PLANNED = metrics.counter(
    "plg_billing_reports_planned", "Report rows written to the ledger, by kind.", ("kind",)
)
TOO_OLD = metrics.counter(
    "plg_billing_windows_too_old",
    "Closed windows older than Stripe accepts (35 days) when first planned: left to reconciliation.",
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One aggregate's latest state (the ungrouped series of a customer's meter in one window)."""

    customer_id: str
    meter: str
    granularity: str
    window_start: int
    window_end: int
    value: Decimal
    event_count: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class ReportRow:
    customer_id: str
    meter: str
    window_start: int
    window_end: int
    revision: int
    quantity: Decimal
    window_total: Decimal
    identifier: str
    stripe_customer_id: str
    status: str
    attempts: int
    created_at: float  # epoch seconds
    delivered_at: float | None = None
    # The meter event's timestamp (epoch s), decided when the report was planned (planning.event_time);
    # None for a level report and for reports planned before migration 0162 (the sender dates those).
    event_at: int | None = None
    # The customer's Stripe subscription began after this window started, in the same plg period: Stripe
    # bills only usage from its start (epoch seconds), so the event is dated there (see _started).
    not_before: float | None = None


_REPORT_COLUMNS = (
    "customer_id, meter, window_start, window_end, revision, quantity, window_total, identifier,"
    " stripe_customer_id, status, attempts, extract(epoch FROM created_at)::float8,"
    " extract(epoch FROM delivered_at)::float8, event_at"
)


def _started(report: ReportRow, start: tuple[int, float] | None) -> ReportRow:
    """A window of the period the customer's Stripe subscription began in, from before it began, is dated
    at the subscription's start: Stripe bills a metered price only for usage inside the subscription's
    period, plg the whole period (the plan at its end) — without this, usage before the checkout was on
    plg's invoice and charged by nobody. Windows of earlier periods keep their own dates. Only for reports
    planned before migration 0162: later ones carry the date decided when planned (``event_at``)."""
    if start is None or report.event_at is not None:
        return report
    usage_from, started_s = start
    if usage_from <= report.window_start < started_s * 1000:
        return replace(report, not_before=started_s)
    return report


# Whether a subscription covers usage at ``at`` (epoch ms, an SQL expression): the customer's row in
# `subscriptions` (one per customer: the latest subscription) has a Stripe subscription that was not
# canceled before ``at``, or that was canceled and replaced by one whose first plg period (`usage_from`)
# ``at`` is in. `canceled_at` (migration 0162) stays when a new subscription begins, so windows before it
# stay the old subscription's (a canceled subscription's late windows still go out, as before) and windows
# between it and the new subscription's first period belong to none. Stripe bills a meter event only inside
# a subscription's period: an event sent while none covers it (no subscription yet — `plg customers create
# --stripe`, then a checkout later — or between a cancel and a new checkout) keeps its date and is charged
# by nobody although plg's invoice may bill it. Held here instead (cleaned, no report), such usage is
# planned when a subscription begins (mark_customer_dirty) and dated at its start (planning.event_time).
def _covered(at: str) -> str:
    return (
        "s.stripe_subscription_id IS NOT NULL AND (s.canceled_at IS NULL"
        f" OR {at} < extract(epoch FROM s.canceled_at) * 1000"
        f" OR (s.status <> 'canceled' AND (s.usage_from IS NULL OR {at} >= s.usage_from)))"
    )


def _billed_customer(at: str) -> str:
    """The joins that give ``c.stripe_customer_id`` only when a subscription covers ``at`` (and ``s``, the
    subscription row, for dating)."""
    return (
        f"LEFT JOIN subscriptions s ON s.customer_id = u.customer_id AND {_covered(at)}"
        " LEFT JOIN customers c ON c.customer_id = u.customer_id AND s.customer_id IS NOT NULL"
    )


# A report of a window in the current subscription's first plg period, dated before that subscription
# began: the previous subscription held it and, canceled, billed it on no invoice (a cancel at once discards
# the period's metered usage at Stripe); the new subscription bills only events from its start. So it does
# not count as at Stripe for the window: the window is reported again, dated at the start, under the next
# revision's identifier. A sum report's date is its `event_at`; a level's is its planning time. Reports
# from before migration 0162 (no `event_at`) count, as before.
_SUPERSEDED_SUM = (
    "(b.event_at IS NOT NULL AND s.usage_from IS NOT NULL AND s.started_at IS NOT NULL"
    " AND b.window_start >= s.usage_from AND b.event_at < extract(epoch FROM s.started_at))"
)
_SUPERSEDED_LEVEL = (
    "(s.usage_from IS NOT NULL AND s.started_at IS NOT NULL AND b.window_start >= s.usage_from"
    " AND b.created_at < s.started_at)"
)
_NOW_MS = "(extract(epoch FROM now()) * 1000)"


def _report(row: Sequence[object]) -> ReportRow:
    return ReportRow(*row)  # type: ignore[arg-type]


class Ledger:
    def __init__(
        self,
        pool: ConnectionPool,
        *,
        consumer_group: str,
        report_granularity: str,
        reportable_meters: Iterable[str],
        settle_ms: int,
        level_meters: Iterable[str] = (),
        package_meters: Mapping[str, tuple[str, Decimal]] | None = None,
        level_interval: float = 3600.0,
        correction_interval: float = 0.0,
        max_age_ms: int = 34 * 86_400_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.consumer_group = consumer_group
        # The ledger is its consumer group's: one database may hold several deployments' ledgers.
        self.ledger = consumer_group
        self.report_granularity = report_granularity
        self.level_meters = sorted(set(level_meters))
        # Meters whose per-window differences are reported (SUM, COUNT); level meters report their
        # period-to-date value at most once per ``level_interval`` seconds instead.
        self.reportable_meters = sorted(set(reportable_meters) - set(self.level_meters))
        # Derived package meters (docs/billing.md "Parity"): derived → (plg meter, package size); reported
        # like levels, from the plg meter's period total: the packages started so far.
        self.package_meters = dict(package_meters or {})
        self.package_bases = sorted({base for base, _ in self.package_meters.values()})
        self.level_interval = level_interval
        self.settle_ms = settle_ms
        # A window keeps getting late events while they arrive: its corrections are coalesced into at most
        # one per this many seconds (the window stays dirty meanwhile), so Stripe sees O(windows) calls.
        self.correction_interval = correction_interval
        self.max_age_ms = max_age_ms
        self.clock = clock
        self._plan_lock = f"billing_reporter:plan:{self.ledger}"  # advisory lock key (see _planning)

    # -- the sink ---------------------------------------------------------------------------------------
    def stored_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        wanted = list(partitions)
        if not wanted:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT topic, partition, next_offset FROM billing_offsets WHERE consumer_group = %s",
                (self.consumer_group,),
            ).fetchall()
        keep = set(wanted)
        return {(t, p): o for t, p, o in rows if (t, p) in keep}

    def apply(self, usage: Sequence[UsageRow], offsets: Mapping[tuple[str, int], int]) -> int:
        """Usage, offsets and the reports they make due, in one transaction. Returns reports planned."""
        with self.pool.connection() as conn, conn.transaction():
            if usage:
                self._planning(conn)
                self._upsert_usage(conn, usage)
            if offsets:
                conn.cursor().executemany(
                    "INSERT INTO billing_offsets (consumer_group, topic, partition, next_offset)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (consumer_group, topic, partition)"
                    " DO UPDATE SET next_offset = GREATEST(billing_offsets.next_offset,"
                    " EXCLUDED.next_offset)",
                    [(self.consumer_group, t, p, o) for (t, p), o in offsets.items()],
                )
            return self._plan(conn) if usage else 0

    def _upsert_usage(self, conn: psycopg.Connection[tuple[object, ...]], usage: Sequence[UsageRow]) -> None:
        reportable, levels = set(self.reportable_meters), set(self.level_meters) | set(self.package_bases)
        rows = [
            (
                self.ledger, u.customer_id, u.meter, u.granularity, u.window_start, u.window_end,
                u.value, u.event_count, u.updated_at,
                (u.granularity == self.report_granularity and u.meter in reportable)
                or (u.granularity == PERIOD and u.meter in levels),
            )
            for u in usage
        ]  # fmt: skip
        # A compacted topic read again from the start replays older totals: never go back in time.
        conn.cursor().executemany(
            "INSERT INTO billing_usage (ledger, customer_id, meter, granularity, window_start, window_end,"
            " value, event_count, updated_at, dirty) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (ledger, customer_id, meter, granularity, window_start) DO UPDATE SET"
            " value = EXCLUDED.value, event_count = EXCLUDED.event_count, updated_at = EXCLUDED.updated_at,"
            " window_end = EXCLUDED.window_end,"
            " dirty = billing_usage.dirty OR (EXCLUDED.dirty AND billing_usage.value <> EXCLUDED.value)"
            " WHERE billing_usage.updated_at <= EXCLUDED.updated_at",
            rows,
        )

    # -- planning -----------------------------------------------------------------------------------------
    def plan(self) -> int:
        """Reports for windows that closed since the last look (the timer's transaction)."""
        with self.pool.connection() as conn, conn.transaction():
            self._planning(conn)
            return self._plan(conn)

    def _planning(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """Taken first by every transaction that plans (before it locks any usage row: no deadlock),
        shared between planners, exclusive in mark_customer_dirty. A planning statement whose snapshot
        predates a subscription's commit would hold and clean windows mark_customer_dirty had marked again
        (FOR UPDATE re-reads the locked row, not the subscription): they would never be reported. With the
        lock the marking waits for such a planner, or the planner sees the subscription."""
        conn.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0))", (self._plan_lock,))

    def _plan(self, conn: psycopg.Connection[tuple[object, ...]]) -> int:
        planned = self._plan_windows(conn)
        if self.level_meters:
            planned += self._plan_levels(conn)
        if self.package_meters:
            planned += self._plan_packages(conn)
        return planned

    def _plan_packages(self, conn: psycopg.Connection[tuple[object, ...]]) -> int:
        """Derived package meters: the packages a period has started, ``ceil(total / size)``, reported as
        a level (a revision of the period) when it changed, at most once per level interval."""
        reports, cleaned = [], []
        for derived, (base, size) in sorted(self.package_meters.items()):
            due = conn.execute(
                f"""
                SELECT u.customer_id, u.window_start, u.window_end, u.value, c.stripe_customer_id,
                       CASE WHEN r.superseded THEN NULL ELSE r.quantity END, COALESCE(r.revision + 1, 0)
                FROM billing_usage u
                {_billed_customer(_NOW_MS)}
                LEFT JOIN LATERAL (
                    SELECT quantity, revision, created_at, {_SUPERSEDED_LEVEL} AS superseded
                    FROM billing_reports b
                    WHERE b.ledger = u.ledger AND b.customer_id = u.customer_id AND b.meter = %s
                      AND b.window_start = u.window_start
                    ORDER BY revision DESC LIMIT 1
                ) r ON true
                WHERE u.ledger = %s AND u.dirty AND u.granularity = %s AND u.meter = %s
                  AND (r.created_at IS NULL OR r.created_at <= now() - make_interval(secs => %s))
                FOR UPDATE OF u
                """,
                (derived, self.ledger, PERIOD, base, self.level_interval),
            ).fetchall()
            for customer, start, end, value, stripe_id, last, revision in cast(list[tuple[Any, ...]], due):
                cleaned.append((customer, base, start))
                packages = (Decimal(value) / size).to_integral_value(rounding=ROUND_CEILING)
                if stripe_id is None or packages <= 0 or (last is not None and Decimal(last) == packages):
                    continue
                ident = report_identifier(customer, derived, int(start), int(revision))
                reports.append(
                    (
                        self.ledger,
                        customer,
                        derived,
                        start,
                        end,
                        revision,
                        packages,
                        packages,
                        ident,
                        stripe_id,
                        None,  # a level: dated at its planning time by the sender
                    )
                )
                PLANNED.labels("packages").inc()
        self._insert_reports(conn, reports)
        # Only rows every derived meter of theirs looked at (one per base meter in practice).
        self._clean(conn, PERIOD, sorted(set(cleaned)))
        return len(reports)

    def _plan_levels(self, conn: psycopg.Connection[tuple[object, ...]]) -> int:
        """Level meters: a period's value changed since its last report, which is at least a reporting
        window old: report the new level (a revision of the period; ``quantity`` is the level itself)."""
        due = conn.execute(
            f"""
            SELECT u.customer_id, u.meter, u.window_start, u.window_end, u.value, c.stripe_customer_id,
                   CASE WHEN r.superseded THEN NULL ELSE r.quantity END, COALESCE(r.revision + 1, 0)
            FROM billing_usage u
            {_billed_customer(_NOW_MS)}
            LEFT JOIN LATERAL (
                SELECT quantity, revision, created_at, {_SUPERSEDED_LEVEL} AS superseded
                FROM billing_reports b
                WHERE b.ledger = u.ledger AND b.customer_id = u.customer_id AND b.meter = u.meter
                  AND b.window_start = u.window_start
                ORDER BY revision DESC LIMIT 1
            ) r ON true
            WHERE u.ledger = %s AND u.dirty AND u.granularity = %s AND u.meter = ANY(%s)
              AND (r.created_at IS NULL OR r.created_at <= now() - make_interval(secs => %s))
            FOR UPDATE OF u
            """,
            (self.ledger, PERIOD, self.level_meters, self.level_interval),
        ).fetchall()
        reports = []
        for customer, meter, start, end, value, stripe_id, last, revision in cast(list[tuple[Any, ...]], due):
            level = whole_units(Decimal(value))
            if stripe_id is None or level <= 0 or (last is not None and Decimal(last) == level):
                continue
            ident = report_identifier(customer, meter, int(start), int(revision))
            reports.append(
                (self.ledger, customer, meter, start, end, revision, level, level, ident, stripe_id, None)
            )
            PLANNED.labels("level").inc()
        self._insert_reports(conn, reports)
        self._clean(conn, PERIOD, [(c, m, s) for c, m, s, *_ in due])
        return len(reports)

    def _insert_reports(
        self, conn: psycopg.Connection[tuple[object, ...]], reports: list[tuple[Any, ...]]
    ) -> None:
        if reports:
            conn.cursor().executemany(
                """
                INSERT INTO billing_reports (ledger, customer_id, meter, window_start, window_end, revision,
                                             quantity, window_total, identifier, stripe_customer_id, event_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                reports,
            )

    def _clean(
        self, conn: psycopg.Connection[tuple[object, ...]], granularity: str, keys: list[tuple[Any, ...]]
    ) -> None:
        conn.cursor().executemany(
            "UPDATE billing_usage SET dirty = false WHERE ledger = %s AND customer_id = %s AND meter = %s"
            " AND granularity = %s AND window_start = %s",
            [(self.ledger, c, m, granularity, s) for c, m, s in keys],
        )

    def _plan_windows(self, conn: psycopg.Connection[tuple[object, ...]]) -> int:
        now_ms = int(self.clock() * 1000)
        # Locks the windows it plans (FOR UPDATE): two reporters never give one window the same revision.
        due = conn.execute(
            f"""
            SELECT u.customer_id, u.meter, u.window_start, u.window_end, u.value, c.stripe_customer_id,
                   COALESCE(r.reported, 0), COALESCE(r.revisions, 0), s.usage_from,
                   extract(epoch FROM s.started_at)::float8
            FROM billing_usage u
            {_billed_customer("u.window_start")}
            LEFT JOIN LATERAL (
                SELECT sum(quantity) FILTER (WHERE NOT {_SUPERSEDED_SUM}) AS reported, count(*) AS revisions,
                       max(created_at) AS last_planned
                FROM billing_reports b
                WHERE b.ledger = u.ledger AND b.customer_id = u.customer_id AND b.meter = u.meter
                  AND b.window_start = u.window_start
            ) r ON true
            WHERE u.ledger = %s AND u.dirty AND u.granularity = %s AND u.window_end + %s <= %s
              AND u.meter = ANY(%s)
              AND (r.last_planned IS NULL OR r.last_planned <= now() - make_interval(secs => %s))
            ORDER BY u.window_end FOR UPDATE OF u
            """,
            (
                self.ledger,
                self.report_granularity,
                self.settle_ms,
                now_ms,
                self.reportable_meters,
                self.correction_interval,
            ),
        ).fetchall()
        if not due:
            return 0
        reports = []
        for customer, meter, start, end, value, stripe_id, reported, revisions, usage_from, started in cast(
            list[tuple[Any, ...]], due
        ):
            if stripe_id is None:
                continue  # no subscription covers it (_covered): a subscription's start marks it dirty again
            if now_ms - int(start) > self.max_age_ms:
                TOO_OLD.inc()
                continue
            rev = next_revision(Decimal(value), Decimal(reported), int(revisions))
            if rev is None:
                continue
            ident = report_identifier(customer, meter, int(start), rev.revision)
            begun = None if usage_from is None or started is None else (int(usage_from), float(started))
            reports.append(
                (self.ledger, customer, meter, start, end, rev.revision, rev.quantity, rev.window_total,
                 ident, stripe_id, event_time(int(start), begun))
            )  # fmt: skip
            PLANNED.labels("correction" if rev.revision else "window").inc()
        self._insert_reports(conn, reports)
        self._clean(conn, self.report_granularity, [(c, m, s) for c, m, s, *_ in due])
        return len(reports)

    def mark_customer_dirty(self, customer_id: str) -> None:
        """A customer's Stripe subscription just began: look at their windows again (within Stripe's 35
        days); those planned while no subscription covered them were held (_covered), and those its
        predecessor held in this period are sent again (_SUPERSEDED_SUM, _SUPERSEDED_LEVEL)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self._plan_lock,))
            conn.execute(
                "UPDATE billing_usage SET dirty = true WHERE ledger = %s AND customer_id = %s"
                " AND ((granularity = %s AND meter = ANY(%s)) OR (granularity = %s AND meter = ANY(%s)))",
                (self.ledger, customer_id, self.report_granularity, self.reportable_meters, PERIOD,
                 self.level_meters + self.package_bases),
            )  # fmt: skip

    # -- the outbox ---------------------------------------------------------------------------------------
    def claim_due(self, limit: int, lease_seconds: float) -> list[ReportRow]:
        """Pending reports whose time has come, leased for ``lease_seconds`` (a sender that dies holding
        them leaves them to the next one; two senders never hold one report at once)."""
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                f"UPDATE billing_reports SET next_attempt_at = now() + make_interval(secs => %s)"
                f" WHERE identifier IN (SELECT identifier FROM billing_reports"
                f"   WHERE ledger = %s AND status = 'pending' AND next_attempt_at <= now()"
                f"   ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_REPORT_COLUMNS}",
                (lease_seconds, self.ledger, limit),
            ).fetchall()
            starts = self._subscription_starts(conn, {str(r[0]) for r in rows})
        reports = [_started(_report(r), starts.get(str(r[0]))) for r in rows]
        return sorted(reports, key=lambda r: (r.window_start, r.revision, r.identifier))

    @staticmethod
    def _subscription_starts(
        conn: psycopg.Connection[Any], customers: set[str]
    ) -> dict[str, tuple[int, float]]:
        """customer → (start of the plg period its subscription began in, ms; the start, epoch s)."""
        if not customers:
            return {}
        rows = conn.execute(
            "SELECT customer_id, usage_from, extract(epoch FROM started_at)::float8 FROM subscriptions"
            " WHERE customer_id = ANY(%s) AND started_at IS NOT NULL AND usage_from IS NOT NULL",
            (sorted(customers),),
        ).fetchall()
        return {str(c): (int(u), float(s)) for c, u, s in rows}

    def release(self, identifiers: Sequence[str]) -> None:
        if not identifiers:
            return
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE billing_reports SET next_attempt_at = now() WHERE identifier = ANY(%s) AND status ="
                " 'pending'",
                (list(identifiers),),
            )

    def mark_delivered(self, identifier: str, how: str = "delivered") -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE billing_reports SET status = 'delivered', delivered_at = now(), attempts = attempts"
                " + 1,"
                " last_error = %s WHERE identifier = %s AND status = 'pending'",
                (None if how == "delivered" else "already at Stripe (identifier seen before)", identifier),
            )

    def mark_retry(self, identifier: str, delay_seconds: float, error: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE billing_reports SET attempts = attempts + 1, last_error = %s,"
                " next_attempt_at = now() + make_interval(secs => %s) WHERE identifier = %s AND status ="
                " 'pending'",
                (error[:1000], delay_seconds, identifier),
            )

    def mark_rejected(self, identifier: str, error: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE billing_reports SET status = 'rejected', attempts = attempts + 1, last_error = %s"
                " WHERE identifier = %s AND status = 'pending'",
                (error[:1000], identifier),
            )

    def unpublished(self, limit: int) -> list[ReportRow]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_REPORT_COLUMNS} FROM billing_reports"
                f" WHERE ledger = %s AND status = 'delivered' AND published_at IS NULL"
                f" ORDER BY delivered_at LIMIT %s",
                (self.ledger, limit),
            ).fetchall()
        return [_report(r) for r in rows]

    def mark_published(self, identifiers: Sequence[str]) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE billing_reports SET published_at = now() WHERE identifier = ANY(%s)",
                (list(identifiers),),
            )
