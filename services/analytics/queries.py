"""The analytics questions, as ClickHouse SQL over ``plg_analytics.events`` (the same text on chDB and on a
ClickHouse server). Every value is a query parameter; only identifiers we choose are formatted in.

Persons are per tenant: a person is ``(customer_id, person)``. Account-level events (no person) count
for customers, not in person questions. Imported history (``historical = 1``) is analytics data like any
other here: it is only kept away from metering and billing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.analytics.model import (
    MAX_WINDOW_SECONDS,
    FunnelStep,
    QueryError,
    check_steps,
    funnel_steps,
    retention_table,
)
from services.analytics.pql import Signals
from services.analytics.store import AnalyticsStore
from services.analytics.suggest import Account

DAY_MS = 86_400_000
_PROPERTY_NAME_MAX = 200


@dataclass(frozen=True, slots=True)
class Scope:
    """Which events a question looks at: a time range (epoch ms, end exclusive), optionally one customer."""

    since_ms: int
    until_ms: int
    customer: str | None = None

    def where(self, params: dict[str, Any], alias: str = "") -> str:
        a = f"{alias}." if alias else ""
        params["since"] = self.since_ms
        params["until"] = self.until_ms
        clause = (
            f"{a}ts >= fromUnixTimestamp64Milli({{since:Int64}}, 'UTC') "
            f"AND {a}ts < fromUnixTimestamp64Milli({{until:Int64}}, 'UTC')"
        )
        if self.customer is not None:
            params["customer"] = self.customer
            clause += f" AND {a}customer_id = {{customer:String}}"
        return clause


def _breakdown_expr(breakdown: str | None, params: dict[str, Any]) -> str:
    """The value a person is broken down by: their plan, or a property, as on their first funnel event."""
    if breakdown is None:
        return "''"
    if breakdown == "plan":
        return "argMin(plan, ts)"
    if breakdown.startswith("property:"):
        name = breakdown.removeprefix("property:")
        if not name or len(name) > _PROPERTY_NAME_MAX:
            raise QueryError("breakdown property:<name> needs a property name of 1-200 characters")
        params["breakdown_property"] = name
        return "argMin(properties[{breakdown_property:String}], ts)"
    raise QueryError(f"breakdown {breakdown!r}: use plan or property:<name>")


def funnel(
    store: AnalyticsStore,
    steps: Sequence[str],
    window_seconds: int,
    scope: Scope,
    breakdown: str | None = None,
) -> dict[str, Any]:
    """Ordered funnel: for each step, the distinct persons who did every step before it and then this one,
    in this order, the whole sequence inside ``window_seconds`` from the first step (ClickHouse's
    ``windowFunnel``). With a breakdown, the same per value."""
    names = check_steps(steps)
    if window_seconds > MAX_WINDOW_SECONDS:
        raise QueryError(f"the conversion window is at most {MAX_WINDOW_SECONDS // 86400} days")
    params: dict[str, Any] = {"steps": names, "window_ms": window_seconds * 1000}
    conditions = []
    for i, name in enumerate(names):
        params[f"s{i}"] = name
        conditions.append(f"name = {{s{i}:String}}")
    by = _breakdown_expr(breakdown, params)
    sql = (
        f"SELECT breakdown, level, count() AS persons FROM ("
        f" SELECT customer_id, person, {by} AS breakdown,"
        f" windowFunnel({{window_ms:UInt64}})(toUInt64(toUnixTimestamp64Milli(ts)), {', '.join(conditions)})"
        f" AS level FROM {store.events}"
        f" WHERE name IN {{steps:Array(String)}} AND person != '' AND {scope.where(params)}"
        f" GROUP BY customer_id, person) GROUP BY breakdown, level"
    )
    by_value: dict[str, list[tuple[int, int]]] = {}
    for row in store.engine.rows(sql, params):
        by_value.setdefault(str(row["breakdown"]), []).append((int(row["level"]), int(row["persons"])))
    total: list[tuple[int, int]] = [pair for pairs in by_value.values() for pair in pairs]
    answer: dict[str, Any] = {
        "steps": [_step(s) for s in funnel_steps(names, total)],
        "window_seconds": window_seconds,
        **_range(scope),
    }
    if breakdown is not None:
        answer["breakdown_by"] = breakdown
        answer["breakdown"] = [
            {"value": value, "steps": [_step(s) for s in funnel_steps(names, pairs)]}
            for value, pairs in sorted(by_value.items())
        ]
    return answer


def retention(
    store: AnalyticsStore, scope: Scope, weeks: int, event: str | None = None, now_ms: int | None = None
) -> dict[str, Any]:
    """Weekly retention cohorts: persons by the ISO week (Monday, UTC) of their first event in the scope,
    and how many of them were active (did ``event``, or anything) in each following week."""
    # One pass, no join: per person the cohort week and the set of weeks it was active, then one row per
    # (person, active week) — plus week -1 for every person, which counts the cohort's size.
    params: dict[str, Any] = {}
    active = "groupUniqArray(toMonday(ts))"
    if event is not None:
        params["event"] = event
        active = "groupUniqArrayIf(toMonday(ts), name = {event:String})"
    sql = (
        f"SELECT toString(first_week) AS cohort, week, count() AS persons FROM ("
        f" SELECT toMonday(min(ts)) AS first_week, {active} AS active FROM {store.events}"
        f" WHERE person != '' AND {scope.where(params)} GROUP BY customer_id, person)"
        f" ARRAY JOIN arrayConcat([-1], arrayMap(w -> dateDiff('week', first_week, w), active)) AS week"
        f" GROUP BY first_week, week ORDER BY first_week, week"
    )
    rows = store.engine.rows(sql, params)
    table = retention_table(rows, weeks)
    now = dt.datetime.fromtimestamp((now_ms if now_ms is not None else scope.until_ms) / 1000, dt.UTC)
    for entry in table:
        start = dt.datetime.fromisoformat(entry["cohort"]).replace(tzinfo=dt.UTC)
        entry["observed_weeks"] = max(0, min(weeks, (now - start).days // 7 + 1))
    return {"weeks": weeks, "event": event, "cohorts": table, **_range(scope)}


def _crossings_sql(
    events: str, params: dict[str, Any], scope: Scope, event: str, count: int, window_days: int | None
) -> str:
    """Per person, the epoch ms of the event that made ``count`` occurrences of ``event`` within
    ``window_days`` (any earlier span; no window = since the first), 0 when never."""
    params.update(
        {"x_event": event, "x_count": count, "x_window": (window_days * DAY_MS) if window_days else 2**62}
    )
    return (
        f"SELECT customer_id, person, arraySort(groupArray(toUnixTimestamp64Milli(ts))) AS t,"
        f" arrayFilter(i -> i >= {{x_count:UInt32}}"
        f" AND t[i] - t[i - {{x_count:UInt32}} + 1] <= {{x_window:Int64}},"
        f" arrayEnumerate(t)) AS hits, if(length(hits) > 0, t[hits[1]], 0) AS crossed_ms"
        f" FROM {events} WHERE name = {{x_event:String}} AND person != '' AND {scope.where(params)}"
        f" GROUP BY customer_id, person"
    )


def north_star(
    store: AnalyticsStore, scope: Scope, event: str, count: int, window_days: int | None, name: str
) -> dict[str, Any]:
    """The north-star metric per week: the event's count, the persons doing it, and how many persons had
    reached the threshold (``count`` times within ``window_days``) by the end of each week (cumulative)."""
    params: dict[str, Any] = {"event": event}
    weekly = store.engine.rows(
        f"SELECT toString(toMonday(ts)) AS week, count() AS events, uniqExact(customer_id, person) AS persons"
        f" FROM {store.events} WHERE name = {{event:String}} AND {scope.where(params)}"
        f" GROUP BY week ORDER BY week",
        params,
    )
    cparams: dict[str, Any] = {}
    crossed = store.engine.rows(
        f"SELECT toString(toMonday(fromUnixTimestamp64Milli(crossed_ms, 'UTC'))) AS week, count() AS persons"
        f" FROM ({_crossings_sql(store.events, cparams, scope, event, count, window_days)})"
        f" WHERE crossed_ms > 0"
        f" GROUP BY week ORDER BY week",
        cparams,
    )
    new_by_week = {r["week"]: int(r["persons"]) for r in crossed}
    series: dict[str, dict[str, Any]] = {
        r["week"]: {"week": r["week"], "events": int(r["events"]), "persons": int(r["persons"])}
        for r in weekly
    }
    for week in new_by_week:
        series.setdefault(week, {"week": week, "events": 0, "persons": 0})
    running = 0
    points = []
    for week in sorted(series):
        running += new_by_week.get(week, 0)
        point = series[week]
        point["newly_reached"] = new_by_week.get(week, 0)
        point["reached"] = running
        points.append(point)
    return {
        "metric": name,
        "event": event,
        "threshold": {"count": count, "window_days": window_days},
        "weeks": points,
        **_range(scope),
    }


def activation_rates(
    store: AnalyticsStore, scope: Scope, thresholds: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """For each activation threshold: persons seen in the scope, how many crossed it, and the rate."""
    params: dict[str, Any] = {}
    seen_rows = store.engine.rows(
        f"SELECT uniqExact(customer_id, person) AS n FROM {store.events}"
        f" WHERE person != '' AND {scope.where(params)}",
        params,
    )
    seen = int(seen_rows[0]["n"]) if seen_rows else 0
    out = []
    for threshold in thresholds:
        cparams: dict[str, Any] = {}
        sql = _crossings_sql(
            store.events,
            cparams,
            scope,
            threshold["event"],
            int(threshold["count"]),
            threshold.get("window_days"),
        )
        rows = store.engine.rows(f"SELECT countIf(crossed_ms > 0) AS n FROM ({sql})", cparams)
        activated = int(rows[0]["n"]) if rows else 0
        out.append(
            {
                "name": threshold["name"],
                "event": threshold["event"],
                "count": int(threshold["count"]),
                "window_days": threshold.get("window_days"),
                "persons": seen,
                "activated": activated,
                "rate": round(activated / seen, 4) if seen else 0.0,
            }
        )
    return {"thresholds": out, **_range(scope)}


def timeline(
    store: AnalyticsStore, customer: str, person: str | None, limit: int, scope: Scope
) -> dict[str, Any]:
    """A customer's (or one of its persons') events, newest first."""
    params: dict[str, Any] = {"limit": limit}
    who = ""
    if person is not None:
        params["person"] = person
        who = " AND (person = {person:String} OR user_id = {person:String} OR anonymous_id = {person:String})"
    rows = store.engine.rows(
        f"SELECT event_id, name, toUnixTimestamp64Milli(ts) AS timestamp, person, plan, properties,"
        f" historical"
        f" FROM {store.events} WHERE {Scope(scope.since_ms, scope.until_ms, customer).where(params)}{who}"
        f" ORDER BY ts DESC, event_id LIMIT {{limit:UInt32}}",
        params,
    )
    events = [
        {
            "event_id": r["event_id"],
            "name": r["name"],
            "timestamp": int(r["timestamp"]),
            "person": r["person"] or None,
            "plan": r["plan"] or None,
            "properties": r["properties"],
            "historical": bool(r["historical"]),
        }
        for r in rows
    ]
    return {**_range(scope), "customer_id": customer, "person": person, "events": events}


def _step(step: FunnelStep) -> dict[str, Any]:
    return {"name": step.name, "count": step.count}


def _range(scope: Scope) -> dict[str, Any]:
    return {"since": scope.since_ms, "until": scope.until_ms, "customer_id": scope.customer}


def accounts_for_suggestion(
    store: AnalyticsStore,
    scope: Scope,
    within_days: int,
    retained_after_days: int,
    churn_events: Sequence[str] = (),
) -> list[Account]:
    """One row per account (customer) whose first event lies in the scope and at least
    ``retained_after_days`` before its end: retained when it was still active that many days after its
    first event and did none of ``churn_events``; with its event counts in its first ``within_days``."""
    params: dict[str, Any] = {
        "within_ms": within_days * DAY_MS,
        "after_ms": retained_after_days * DAY_MS,
        "churn": list(churn_events),
    }
    where = scope.where(params, "e")
    rows = store.engine.rows(
        f"WITH firsts AS (SELECT customer_id, toUnixTimestamp64Milli(min(ts)) AS first_ms,"
        f" toUnixTimestamp64Milli(max(ts)) AS last_ms, countIf(name IN {{churn:Array(String)}}) AS churned"
        f" FROM {store.events} GROUP BY customer_id"
        f" HAVING first_ms >= {{since:Int64}} AND first_ms + {{after_ms:Int64}} <= {{until:Int64}})"
        f" SELECT f.customer_id AS customer_id,"
        f" f.last_ms - f.first_ms >= {{after_ms:Int64}} AND f.churned = 0 AS retained, e.name AS name,"
        f" countIf(toUnixTimestamp64Milli(e.ts) < f.first_ms + {{within_ms:Int64}}) AS n"
        f" FROM {store.events} AS e INNER JOIN firsts AS f ON e.customer_id = f.customer_id"
        f" WHERE {where}"
        f" GROUP BY customer_id, retained, name",
        params,
    )
    by_account: dict[str, tuple[bool, dict[str, int]]] = {}
    for row in rows:
        counts = by_account.setdefault(str(row["customer_id"]), (bool(row["retained"]), {}))[1]
        if int(row["n"]):
            counts[str(row["name"])] = int(row["n"])
    return [Account(retained, counts) for retained, counts in by_account.values()]


def activity_days(store: AnalyticsStore, scope: Scope) -> dict[str, Any]:
    """Per customer, the days (since the epoch, UTC) it had any event in the scope, ascending; and the last
    day the store has events of (beyond it nothing is known yet)."""
    params: dict[str, Any] = {}
    rows = store.engine.rows(
        f"SELECT customer_id, arraySort(groupUniqArray(toUInt32(toDate(ts)))) AS days FROM {store.events}"
        f" WHERE {scope.where(params)} GROUP BY customer_id",
        params,
    )
    customers = {str(r["customer_id"]): [int(d) for d in r["days"]] for r in rows}
    last = max((days[-1] for days in customers.values() if days), default=None)
    return {"customers": customers, "last_day": last, **_range(scope)}


def pql_signals(
    store: AnalyticsStore,
    customers: Sequence[str],
    now_ms: int,
    window_days: int,
    thresholds: Sequence[Mapping[str, Any]],
    activation_days: int = 365,
) -> dict[str, Signals]:
    """The product-qualified-lead signals of these accounts as of ``now_ms``: activation thresholds the
    account crossed as a whole (``count`` events within ``window_days`` of each other, over the last
    ``activation_days``), events and active persons in the last ``window_days`` and in the window before,
    and the highest share of each plan limit hit (entitlement-events) in the last ``window_days``."""
    if not customers:
        return {}
    window_ms = window_days * DAY_MS
    params: dict[str, Any] = {
        "customers": sorted(set(customers)),
        "now": now_ms,
        "recent": now_ms - window_ms,
        "previous": now_ms - 2 * window_ms,
    }
    in_range = (
        "customer_id IN {customers:Array(String)} AND ts < fromUnixTimestamp64Milli({now:Int64}, 'UTC')"
    )
    usage = store.engine.rows(
        f"SELECT customer_id,"
        f" countIf(ts >= fromUnixTimestamp64Milli({{recent:Int64}}, 'UTC')) AS recent_events,"
        f" countIf(ts < fromUnixTimestamp64Milli({{recent:Int64}}, 'UTC')) AS previous_events,"
        f" uniqExactIf(person, person != '' AND ts >= fromUnixTimestamp64Milli({{recent:Int64}}, 'UTC'))"
        f" AS recent_persons,"
        f" uniqExactIf(person, person != '' AND ts < fromUnixTimestamp64Milli({{recent:Int64}}, 'UTC'))"
        f" AS previous_persons"
        f" FROM {store.events} WHERE {in_range}"
        f" AND ts >= fromUnixTimestamp64Milli({{previous:Int64}}, 'UTC') GROUP BY customer_id",
        params,
    )
    found: dict[str, dict[str, Any]] = {
        str(r["customer_id"]): {
            "recent_events": int(r["recent_events"]),
            "previous_events": int(r["previous_events"]),
            "recent_persons": int(r["recent_persons"]),
            "previous_persons": int(r["previous_persons"]),
            "crossed": [],
            "limits": {},
        }
        for r in usage
    }

    def entry(customer: str) -> dict[str, Any]:
        return found.setdefault(
            customer,
            {
                "recent_events": 0,
                "previous_events": 0,
                "recent_persons": 0,
                "previous_persons": 0,
                "crossed": [],
                "limits": {},
            },
        )

    for threshold in thresholds:
        window = threshold.get("window_days")
        tparams = {
            **params,
            "since": now_ms - activation_days * DAY_MS,
            "event": threshold["event"],
            "count": int(threshold["count"]),
            "window": (int(window) * DAY_MS) if window else 2**62,
        }
        rows = store.engine.rows(
            f"SELECT customer_id FROM (SELECT customer_id,"
            f" arraySort(groupArray(toUnixTimestamp64Milli(ts))) AS t FROM {store.events}"
            f" WHERE name = {{event:String}} AND {in_range}"
            f" AND ts >= fromUnixTimestamp64Milli({{since:Int64}}, 'UTC') GROUP BY customer_id)"
            f" WHERE arrayExists(i -> i >= {{count:UInt32}} AND t[i] - t[i - {{count:UInt32}} + 1]"
            f" <= {{window:Int64}}, arrayEnumerate(t))",
            tparams,
        )
        for row in rows:
            entry(str(row["customer_id"]))["crossed"].append(str(threshold["name"]))
    hits = store.engine.rows(
        f"SELECT customer_id, meter, max(threshold_percent) AS percent, max(hard_limit) AS hard_limit,"
        f" toString(argMax(usage, threshold_percent)) AS usage,"
        f" toString(argMax(limit_value, threshold_percent)) AS limit,"
        f" toUnixTimestamp64Milli(max(occurred_at)) AS last_at"
        f" FROM {store.limit_hits} WHERE customer_id IN {{customers:Array(String)}}"
        f" AND occurred_at >= fromUnixTimestamp64Milli({{recent:Int64}}, 'UTC')"
        f" AND occurred_at < fromUnixTimestamp64Milli({{now:Int64}}, 'UTC')"
        f" GROUP BY customer_id, meter",
        params,
    )
    for row in hits:
        entry(str(row["customer_id"]))["limits"][str(row["meter"])] = {
            "percent": int(row["percent"]),
            "hard_limit": bool(row["hard_limit"]),
            "usage": str(row["usage"]),
            "limit": str(row["limit"]),
            "last_at": int(row["last_at"]),
        }
    return {
        customer: Signals(
            crossed=tuple(e["crossed"]),
            recent_events=e["recent_events"],
            previous_events=e["previous_events"],
            recent_persons=e["recent_persons"],
            previous_persons=e["previous_persons"],
            limits=e["limits"],
        )
        for customer, e in found.items()
    }


def daily_facts(store: AnalyticsStore, scope: Scope) -> dict[str, Any]:
    """What the health score's batch path needs to rescore past days from the store, per customer and day
    (days since the epoch, UTC): events per name and person (person '' for account-level events), the
    values of ``score`` properties per name and person (NPS, CSAT), the customer's context that day (its
    newest plan, billing status, open tickets, and seats from ``seats_changed``), and plan-limit hits."""
    params: dict[str, Any] = {}
    where = scope.where(params)
    counts = store.engine.rows(
        f"SELECT customer_id, toUInt32(toDate(ts)) AS day, name, person, count() AS n FROM {store.events}"
        f" WHERE {where} GROUP BY customer_id, day, name, person ORDER BY customer_id, day, name, person",
        params,
    )
    scored = store.engine.rows(
        f"SELECT customer_id, toUInt32(toDate(ts)) AS day, name, person, properties['score'] AS value,"
        f" count() AS n FROM {store.events} WHERE {where} AND mapContains(properties, 'score')"
        f" GROUP BY customer_id, day, name, person, value ORDER BY customer_id, day, name, person, value",
        params,
    )
    context = store.engine.rows(
        f"SELECT customer_id, toUInt32(toDate(ts)) AS day, argMax(plan, ts) AS plan,"
        f" argMax(billing_status, ts) AS billing_status, argMax(open_tickets, ts) AS open_tickets,"
        f" argMaxIf(properties['seats'], ts, name = 'seats_changed') AS seats"
        f" FROM {store.events} WHERE {where} GROUP BY customer_id, day ORDER BY customer_id, day",
        params,
    )
    hparams: dict[str, Any] = {"since": scope.since_ms, "until": scope.until_ms}
    only = ""
    if scope.customer is not None:
        hparams["customer"] = scope.customer
        only = " AND customer_id = {customer:String}"
    hits = store.engine.rows(
        f"SELECT customer_id, toUInt32(toDate(occurred_at)) AS day, threshold_percent,"
        f" max(hard_limit) AS hard_limit FROM {store.limit_hits}"
        f" WHERE occurred_at >= fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')"
        f" AND occurred_at < fromUnixTimestamp64Milli({{until:Int64}}, 'UTC'){only}"
        f" GROUP BY customer_id, day, threshold_percent ORDER BY customer_id, day, threshold_percent",
        hparams,
    )

    def seats(text: str) -> int | None:
        try:
            value = float(text)
        except ValueError:
            return None
        return int(value) if value >= 1 else None

    return {
        "counts": [[r["customer_id"], int(r["day"]), r["name"], r["person"], int(r["n"])] for r in counts],
        "scores": [
            [r["customer_id"], int(r["day"]), r["name"], r["person"], r["value"], int(r["n"])] for r in scored
        ],
        "context": [
            [
                r["customer_id"],
                int(r["day"]),
                r["plan"] or None,
                r["billing_status"] or None,
                int(r["open_tickets"]),
                seats(r["seats"]),
            ]
            for r in context
        ],
        "limit_hits": [
            [r["customer_id"], int(r["day"]), int(r["threshold_percent"]), bool(r["hard_limit"])]
            for r in hits
        ],
        **_range(scope),
    }
