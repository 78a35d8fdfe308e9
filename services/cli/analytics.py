"""``plg analytics funnel|retention|north-star|activation|timeline|pql`` and ``plg activation suggest``:
questions to the analytics service.

The CLI asks the running service over HTTP (the embedded store belongs to that one process): the URL from
``--url`` or ``PLG_ANALYTICS_URL`` (default ``http://127.0.0.1:8086``), the operator token from
``PLG_OPERATOR_TOKEN`` (``plg operators create NAME --role viewer``) — never from a flag, which would land
in shell history and ``ps``.

``plg analytics funnel --steps a,b,c [--customer C] [--window 7d] --format json`` prints exactly
``{"steps": [{"name": "a", "count": N}, ...]}`` (plus ``"breakdown"`` when asked): a contract other tools
read.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from services.activation import activation_path, load_activation
from services.analytics.backtest import Point, evaluate, label
from services.analytics.model import parse_duration
from services.analytics.suggest import proposed_yaml

DEFAULT_URL = "http://127.0.0.1:8086"


class AnalyticsCliError(Exception):
    """A problem the user can fix; the CLI prints it and exits 1."""


def add_parser(groups: Any) -> None:
    analytics = groups.add_parser("analytics", help="funnels, retention, north star (the analytics service)")
    analytics.add_argument(
        "--url", default=None, help=f"analytics service (default $PLG_ANALYTICS_URL or {DEFAULT_URL})"
    )
    commands = analytics.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, customer: bool = True) -> None:
        if customer:
            p.add_argument("--customer", help="only this customer")
        p.add_argument("--since", help="ISO date/time or a duration back from now (90d); default 90d")
        p.add_argument("--until", help="ISO date/time, exclusive; default now")
        p.add_argument("--format", choices=("table", "json"), default="table")

    funnel = commands.add_parser("funnel", help="ordered funnel: distinct persons per step")
    funnel.add_argument("--steps", required=True, help="comma-separated event names, in order")
    funnel.add_argument("--window", default="7d", help="conversion window (default 7d)")
    funnel.add_argument("--breakdown", help="plan, or property:<name>")
    common(funnel)
    retention = commands.add_parser("retention", help="weekly retention cohorts")
    retention.add_argument("--weeks", type=int, default=8)
    retention.add_argument("--event", help="the activity that counts as retained (default: any event)")
    common(retention)
    common(commands.add_parser("north-star", help="the north-star metric per week (activation.yaml)"))
    common(commands.add_parser("activation", help="activation rate per threshold (activation.yaml)"))
    timeline = commands.add_parser("timeline", help="a customer's or a person's events, newest first")
    timeline.add_argument("customer_id")
    timeline.add_argument("--person")
    timeline.add_argument("--limit", type=int, default=50)
    common(timeline, customer=False)
    pql = commands.add_parser(
        "pql", help="product-qualified leads: free/trialing accounts worth a sales call, with evidence"
    )
    pql.add_argument("--window", help="the signals' window (default: the service's, 14d)")
    pql.add_argument("--format", choices=("table", "json"), default="table")


def add_activation_parser(groups: Any) -> None:
    activation = groups.add_parser(
        "activation", help="activation thresholds learned from the analytics store"
    )
    activation.add_argument(
        "--url", default=None, help=f"analytics service (default $PLG_ANALYTICS_URL or {DEFAULT_URL})"
    )
    commands = activation.add_subparsers(dest="command", required=True)
    sug = commands.add_parser(
        "suggest",
        help="thresholds that separate retained from churned accounts, as a diff of activation.yaml",
    )
    sug.add_argument("--since", default="90d", help="accounts whose first event is this recent (default 90d)")
    sug.add_argument("--until", help="ISO date/time, exclusive; default now")
    sug.add_argument(
        "--within", default="14d", help="an account's first days whose events count (default 14d)"
    )
    sug.add_argument("--retained-after", default="30d", help="retained: still active this long after (30d)")
    sug.add_argument(
        "--churn-event", action="append", default=[], help="an event that means churned (repeat)"
    )
    sug.add_argument("--min-accounts", type=int, default=50)
    sug.add_argument("--min-group", type=int, default=10)
    sug.add_argument(
        "--file", default=None, help="activation.yaml to diff against (default $PLG_ACTIVATION_CONFIG)"
    )
    sug.add_argument("--format", choices=("table", "json"), default="table")


def add_health_parser(groups: Any) -> None:
    health = groups.add_parser("health", help="the health score against what happened (analytics store)")
    health.add_argument(
        "--url", default=None, help=f"analytics service (default $PLG_ANALYTICS_URL or {DEFAULT_URL})"
    )
    commands = health.add_subparsers(dest="command", required=True)
    bt = commands.add_parser(
        "backtest", help="how well past daily scores predicted churn: ROC AUC, precision of the red band"
    )
    bt.add_argument("--since", default="180d", help="scores from this long ago (default 180d)")
    bt.add_argument("--horizon", default="30d", help="churned: no event in this long after the day (30d)")
    bt.add_argument(
        "--rescore",
        action="store_true",
        help="score past weeks from the analytics store with --config instead of reading the recorded scores",
    )
    bt.add_argument(
        "--config",
        default=None,
        help="with --rescore: the health.yaml to score with (default: the one in use)",
    )
    bt.add_argument("--every", default="7d", help="with --rescore: one scored day per this period (7d)")
    bt.add_argument("--format", choices=("table", "json"), default="table")


def backtest(args: argparse.Namespace, conn: Any) -> dict[str, Any]:
    """The health score's daily history (PostgreSQL) against activity in the analytics store."""
    horizon_days = max(1, parse_duration(args.horizon) // 86400)
    since_days = max(1, parse_duration(args.since) // 86400)
    args.customer, args.until = None, None
    args.since = f"{since_days + horizon_days + 1}d"
    if getattr(args, "rescore", False):
        points = rescored_points(args, since_days)
    else:
        rows = conn.execute(
            "SELECT customer_id, (day - DATE '1970-01-01') AS day, score, band FROM health_scores_daily"
            " WHERE day >= CURRENT_DATE - %s::int",
            (since_days,),
        ).fetchall()
        points = [Point(str(c), int(d), float(s), str(b)) for c, d, s, b in rows]
    body = ask(args)
    active = {c: list(days) for c, days in body["customers"].items()}
    last_day = body["last_day"]
    if last_day is None:
        raise AnalyticsCliError("the analytics store has no events in that range: nothing to compare with")
    report = evaluate(label(points, active, horizon_days, int(last_day)))
    source = "store" if getattr(args, "rescore", False) else "recorded"
    return {**report, "horizon_days": horizon_days, "scored_days": since_days, "scores": source}


def rescored_points(args: argparse.Namespace, since_days: int) -> list[Point]:
    """The batch health path over the store: each customer's score every ``--every`` days of the last
    ``--since``, recomputed with ``--config`` from the store's daily facts (services/health_score/rescore)."""
    import time

    from services.health_score.processor import FactsBuilder
    from services.health_score.registry import load_config
    from services.health_score.rescore import rebuild, weekly_scores
    from services.plans.loader import load_config as load_plans

    config = load_config(Path(args.config) if args.config else None)
    seats = {
        plan.slug: int(plan.meters["seats"].limit)
        for plan in load_plans().plans
        if "seats" in plan.meters and plan.meters["seats"].limit is not None
    }
    every = max(1, parse_duration(args.every) // 86400)
    # The facts from long enough before the first scored day for its windows (history_days back).
    reach = since_days + config.history_days + 1
    body = ask(args, ("/v1/analytics/daily-facts", {"since": f"{reach}d"}))
    today = int(time.time() * 1000) // 86_400_000
    days = range(today - since_days, today, every)
    states = rebuild(body, FactsBuilder(config, seats))
    return [Point(c, day, float(s.score), s.band) for c, day, s in weekly_scores(config, states, days)]


def request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The route and query parameters of the command."""
    if args.group == "analytics" and args.command == "pql":
        return "/v1/analytics/pql", _clean({"window": args.window})
    params: dict[str, Any] = {"since": args.since, "until": args.until}
    if args.group == "health":
        return "/v1/analytics/activity", _clean(params)
    if args.group == "activation":
        params |= {
            "within": args.within,
            "retained_after": args.retained_after,
            "churn_event": args.churn_event or None,
            "min_accounts": args.min_accounts,
            "min_group": args.min_group,
        }
        return "/v1/analytics/activation/suggest", _clean(params)
    if args.command == "funnel":
        params |= {"steps": args.steps, "window": args.window, "breakdown": args.breakdown}
        path = "/v1/analytics/funnel"
    elif args.command == "retention":
        params |= {"weeks": args.weeks, "event": args.event}
        path = "/v1/analytics/retention"
    elif args.command == "north-star":
        path = "/v1/analytics/north-star"
    elif args.command == "activation":
        path = "/v1/analytics/activation"
    else:
        params |= {"person": args.person, "limit": args.limit}
        return f"/v1/analytics/customers/{quote(args.customer_id, safe='')}/timeline", _clean(params)
    params["customer"] = args.customer
    return path, _clean(params)


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def ask(args: argparse.Namespace, route: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    token = os.environ.get("PLG_OPERATOR_TOKEN", "").strip()
    if not token:
        raise AnalyticsCliError(
            "set PLG_OPERATOR_TOKEN to an operator token (`plg operators create NAME --role viewer`)"
        )
    base = (args.url or os.environ.get("PLG_ANALYTICS_URL") or DEFAULT_URL).rstrip("/")
    path, params = route or request(args)
    try:
        response = httpx.get(
            base + path, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
    except httpx.HTTPError as exc:
        raise AnalyticsCliError(f"cannot reach the analytics service at {base}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        raise AnalyticsCliError(f"{base} answered {response.status_code} without JSON") from None
    if response.status_code != 200:
        raise AnalyticsCliError(f"{response.status_code} {body.get('code')}: {body.get('message')}")
    return body  # type: ignore[no-any-return]


def contract(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """What ``--format json`` prints: for a funnel exactly its steps (and breakdown when asked)."""
    if args.command == "funnel":
        out: dict[str, Any] = {"steps": body["steps"]}
        if "breakdown" in body:
            out["breakdown"] = body["breakdown"]
        return out
    return body


def run(args: argparse.Namespace) -> int:
    body = ask(args)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(contract(args, body)).decode() + "\n")
        return 0
    if args.group == "activation":
        for line in suggestion_report(body, args.file):
            print(line)
        return 0
    for line in table(args.command, body):
        print(line)
    return 0


def table(command: str, body: dict[str, Any]) -> list[str]:
    """A human reading of each answer."""
    lines: list[str] = []
    if command == "funnel":
        first = body["steps"][0]["count"] if body["steps"] else 0
        for step in body["steps"]:
            share = f"{100 * step['count'] / first:5.1f} %" if first else "    -"
            lines.append(f"{step['name']:40} {step['count']:>10}  {share}")
        for group in body.get("breakdown") or []:
            counts = " → ".join(str(s["count"]) for s in group["steps"])
            lines.append(f"  {group['value'] or '(none)':38} {counts}")
    elif command == "retention":
        for cohort in body["cohorts"]:
            shown = cohort["weeks"][: cohort["observed_weeks"]]
            lines.append(f"{cohort['cohort']}  {cohort['size']:>7}  " + " ".join(f"{n:>6}" for n in shown))
    elif command == "north-star":
        lines.append(f"{body['metric']}: {body['event']} x {body['threshold']['count']}")
        for week in body["weeks"]:
            lines.append(
                f"{week['week']}  events {week['events']:>8}  persons {week['persons']:>6}  "
                f"reached {week['reached']:>6} (+{week['newly_reached']})"
            )
    elif command == "pql":
        lines.append(f"{'account':32} {'score':>5}  {'plan':10} {'events':>7} {'growth':>6}  why")
        for lead in body["leads"]:
            usage = lead["evidence"]["usage"]
            growth = f"x{usage['growth']:g}" if usage["growth"] is not None else "new"
            lines.append(
                f"{lead['customer_id']:32} {lead['score']:>5}  {lead['plan']:10} {usage['events']:>7} "
                f"{growth:>6}  {', '.join(lead['reasons'])}"
            )
            for hit in lead["evidence"]["limit_hits"]:
                lines.append(f"{'':40}{hit['meter']} at {hit['percent']} % ({hit['usage']} / {hit['limit']})")
        if not body["leads"]:
            lines.append("no account qualifies right now")
    elif command == "activation":
        for t in body["thresholds"]:
            lines.append(f"{t['name']:30} {t['activated']:>7} / {t['persons']:<7} {100 * t['rate']:5.1f} %")
    else:
        for event in body["events"]:
            lines.append(f"{event['timestamp']}  {event['name']:32} {event['person'] or '-'}")
    return lines


def suggestion_report(body: dict[str, Any], file: str | None) -> list[str]:
    """The evidence per event, then the proposed change to activation.yaml as a unified diff (never
    applied: a person reviews and commits it)."""
    path = Path(file) if file else activation_path()
    lines = [
        f"{body['accounts']} accounts ({body['retained']} retained after "
        f"{body['retained_after_days']} days); counts within their first {body['within_days']} days",
        "",
        f"{'event':32} {'count':>5} {'reached':>8} {'others':>7} {'kept':>6} {'vs':>6} {'lift':>6}  "
        "95 % CI      verdict",
    ]
    for s in body["suggestions"]:
        if s["verdict"] == "too_few":
            lines.append(f"{s['event']:32} {'-':>5}{'':56}too few: {s['reason']}")
            continue
        lift = f"{s['lift']:.2f}" if s["lift"] is not None else "-"
        lines.append(
            f"{s['event']:32} {s['count']:>5} {s['reached']:>8} {s['not_reached']:>7} "
            f"{100 * s['retention_reached']:5.1f}% {100 * s['retention_not_reached']:5.1f}% {lift:>6}  "
            f"[{s['ci_low']:+.2f},{s['ci_high']:+.2f}] {s['verdict']}"
        )
    text = path.read_text()
    config = load_activation(path)
    current = {t.event for t in config.thresholds}
    proposed = text
    suggested = [s for s in body["suggestions"] if s["verdict"] == "suggested"]
    chosen = [s for s in suggested if s["event"] in current] + [
        s for s in suggested if s["event"] not in current
    ][:1]
    for s in chosen:
        proposed = proposed_yaml(proposed, s["event"], int(s["count"]), int(body["within_days"]))
    lines.append("")
    if proposed == text:
        lines.append("no change to propose: the data support no threshold (see the verdicts above)")
        return lines
    diff = difflib.unified_diff(
        text.splitlines(), proposed.splitlines(), f"a/{path}", f"b/{path}", lineterm=""
    )
    lines.extend(diff)
    lines.append("")
    lines.append("Review it, then apply it yourself (this command never changes the file).")
    return lines


def run_backtest(args: argparse.Namespace, conn: Any) -> int:
    report = backtest(args, conn)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return 0
    auc = report["roc_auc"]
    red = report["red_precision"]
    print(
        f"{report['points']} daily scores of {report['customers']} customers "
        f"(last {report['scored_days']} days), churned = no event in the {report['horizon_days']} days after"
    )
    if report.get("scores") == "store":
        print("  scores: rescored from the analytics store with the health.yaml given (batch path)")
    print(f"  churned: {report['churned']} (base rate {report['base_rate']})")
    print(
        f"  ROC AUC: {auc if auc is not None else 'n/a (needs churned and retained points)'}   (0.5 = a coin)"
    )
    print(f"  red band: {report['red_points']} points, precision {red if red is not None else 'n/a'}")
    return 0
