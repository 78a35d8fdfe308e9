"""The analytics pages of the operator console: a funnel chart, a retention heat map and the north-star
trend, server-rendered (SVG and tables, no script, nothing fetched from elsewhere) from the same answers
the API gives. Every value shown is escaped: event names and property values come from tenants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7fb}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center}
header a{color:#cfd6ff;text-decoration:none}header a.on{color:#fff;font-weight:600}
main{padding:20px;max-width:1100px}h1{font-size:20px;margin:0 0 12px}
form{display:flex;gap:8px;flex-wrap:wrap;margin:0 0 16px}input,select{padding:4px 6px}
.card{background:#fff;border:1px solid #e3e6ef;border-radius:6px;padding:16px;margin:0 0 16px}
table.heat{border-collapse:collapse}table.heat td,table.heat th{padding:4px 8px;text-align:right;
border:1px solid #eef0f6}.muted{color:#7a8193}.error{color:#b3261e}
"""

PAGES = (
    ("funnel", "Funnel"),
    ("retention", "Retention"),
    ("north-star", "North star"),
    ("pql", "Qualified leads"),
)


def page(title: str, active: str, body: str, health_url: str) -> str:
    nav = "".join(
        f'<a href="/analytics/{slug}"{" class=on" if slug == active else ""}>{label}</a>'
        for slug, label in PAGES
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · plg</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
        f'<body><header><b>plg</b><a href="{escape(health_url)}">Customer health</a>{nav}</header>'
        f"<main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def _field(name: str, value: str | int | None, label: str, size: int = 18) -> str:
    shown = "" if value is None else escape(str(value))
    return f'<label>{label} <input name="{name}" value="{shown}" size="{size}"></label>'


def error(message: str) -> str:
    return f'<p class="error" role="alert">{escape(message)}</p>'


def funnel_form(steps: str, window: str, customer: str | None, breakdown: str | None) -> str:
    return (
        '<form method="get">'
        + _field("steps", steps, "steps", 50)
        + _field("window", window, "window", 5)
        + _field("customer", customer, "customer")
        + _field("breakdown", breakdown, "breakdown (plan, property:x)")
        + "<button>Show</button></form>"
    )


def funnel_chart(answer: Mapping[str, Any]) -> str:
    steps: Sequence[Mapping[str, Any]] = answer["steps"]
    first = steps[0]["count"] if steps else 0
    width, bar_h, gap, label_w = 760, 28, 10, 260
    rows = []
    for i, step in enumerate(steps):
        share = step["count"] / first if first else 0.0
        y = i * (bar_h + gap)
        w = max(1.0, (width - label_w - 140) * share)
        prev = steps[i - 1]["count"] if i else step["count"]
        conv = f"{100 * step['count'] / prev:.0f} % of previous" if i and prev else ""
        rows.append(
            f'<g class="step" data-step="{escape(step["name"])}" data-count="{step["count"]}">'
            f'<text x="0" y="{y + 19}">{escape(step["name"])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4a67d6" rx="3"/>'
            f'<text x="{label_w + w + 8:.1f}" y="{y + 19}">{step["count"]} ({100 * share:.0f} %) '
            f'<tspan class="muted">{conv}</tspan></text></g>'
        )
    height = max(1, len(steps)) * (bar_h + gap)
    chart = (
        f'<svg id="funnel" width="{width}" height="{height}" role="img" aria-label="funnel">'
        f"{''.join(rows)}</svg>"
    )
    breakdown = ""
    if answer.get("breakdown"):
        head = "".join(f"<th>{escape(s['name'])}</th>" for s in steps)
        body = "".join(
            f"<tr><th>{escape(group['value'] or '(none)')}</th>"
            + "".join(f"<td>{s['count']}</td>" for s in group["steps"])
            + "</tr>"
            for group in answer["breakdown"]
        )
        breakdown = (
            f"<h2>By {escape(answer.get('breakdown_by') or '')}</h2>"
            f'<table class="heat"><tr><th></th>{head}</tr>{body}</table>'
        )
    window_h = answer["window_seconds"] / 3600
    return (
        f'<div class="card">{chart}<p class="muted">distinct persons, each step after the previous one, '
        f"all within {window_h:g} h of the first</p>{breakdown}</div>"
    )


def retention_heatmap(answer: Mapping[str, Any]) -> str:
    weeks = int(answer["weeks"])
    head = "".join(f"<th>week {i}</th>" for i in range(weeks))
    rows = []
    for cohort in answer["cohorts"]:
        cells = []
        for i in range(weeks):
            if i >= cohort["observed_weeks"]:
                cells.append('<td class="muted">·</td>')
                continue
            rate = cohort["rates"][i]
            # Darker blue for a higher share; white text once the cell is dark enough to need it.
            colour = f"rgba(74,103,214,{0.08 + 0.92 * rate:.2f})"
            text = "#fff" if rate > 0.5 else "#1d2330"
            cells.append(
                f'<td style="background:{colour};color:{text}" title="{cohort["weeks"][i]} persons">'
                f"{100 * rate:.0f} %</td>"
            )
        rows.append(f"<tr><th>{escape(cohort['cohort'])}</th><td>{cohort['size']}</td>{''.join(cells)}</tr>")
    if not rows:
        return '<div class="card"><p class="muted">no persons in this range yet</p></div>'
    return (
        f'<div class="card"><table id="retention" class="heat"><tr><th>cohort (week of first event)</th>'
        f"<th>persons</th>{head}</tr>{''.join(rows)}</table></div>"
    )


def north_star_chart(answer: Mapping[str, Any]) -> str:
    weeks: Sequence[Mapping[str, Any]] = answer["weeks"]
    threshold = answer["threshold"]
    window = f" within {threshold['window_days']} days" if threshold.get("window_days") else ""
    title = (
        f"<p><b>{escape(answer['metric'])}</b>: persons who did {escape(answer['event'])} "
        f"{threshold['count']}+ times{window}</p>"
    )
    if not weeks:
        return f'<div class="card">{title}<p class="muted">no events of it yet</p></div>'
    width, height, pad = 760, 220, 30
    top = float(max(max(w["reached"] for w in weeks), max(w["persons"] for w in weeks), 1))
    step = (width - 2 * pad) / max(1, len(weeks) - 1)

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    points = " ".join(f"{pad + i * step:.1f},{y(w['reached']):.1f}" for i, w in enumerate(weeks))
    bars = "".join(
        f'<rect x="{pad + i * step - 6:.1f}" y="{y(w["persons"]):.1f}" width="12" '
        f'height="{height - pad - y(w["persons"]):.1f}" fill="#cfd6ff"><title>{escape(w["week"])}: '
        f"{w['persons']} persons did it</title></rect>"
        for i, w in enumerate(weeks)
    )
    labels = "".join(
        f'<text x="{pad + i * step:.1f}" y="{height - 8}" font-size="10" text-anchor="middle">'
        f"{escape(w['week'][5:])}</text>"
        for i, w in enumerate(weeks)
    )
    line = f'<polyline fill="none" stroke="#4a67d6" stroke-width="2" points="{points}"/>'
    last = weeks[-1]
    svg = (
        f'<svg id="north-star" width="{width}" height="{height}" role="img" aria-label="north star trend" '
        f'data-reached="{last["reached"]}">{bars}{line}{labels}</svg>'
    )
    return (
        f'<div class="card">{title}{svg}<p>{last["reached"]} persons reached it so far '
        f"(line); bars: persons doing it each week</p></div>"
    )


def _evidence(lead: Mapping[str, Any]) -> str:
    """The numbers behind a lead, in words a salesperson reads."""
    evidence = lead["evidence"]
    usage = evidence["usage"]
    parts = [f"activated: {escape(', '.join(evidence['activation']['thresholds_crossed']))}"]
    growth = usage.get("growth")
    grew = f" (x{growth:g})" if growth is not None else " (new)"
    parts.append(
        f"{usage['events']} events in {usage['window_days']} days vs {usage['events_previous_window']} before"
        f"{grew}; {usage['active_persons']} active persons"
    )
    for hit in evidence["limit_hits"]:
        hard = "hard" if hit.get("hard_limit") else "soft"
        parts.append(
            f"{escape(hit['meter'])} at {hit['percent']} % of its {hard} limit "
            f"({escape(str(hit['usage']))} / {escape(str(hit['limit']))})"
        )
    return "<br>".join(parts)


def pql_table(answer: Mapping[str, Any]) -> str:
    rules = answer["rules"]
    who = ", ".join(rules["plans"]) + (" or trialing" if rules["trialing"] else "")
    intro = (
        f'<p class="muted">{escape(who)} accounts that activated and, in the last '
        f"{rules['window_days']} days, "
        f"grew their usage x{rules['min_growth']:g} (at least {rules['min_events']} events) or hit "
        f"{rules['limit_percent']} % of a plan limit</p>"
    )
    leads: Sequence[Mapping[str, Any]] = answer["leads"]
    if not leads:
        return f'<div class="card">{intro}<p class="muted">no account qualifies right now</p></div>'
    rows = "".join(
        f'<tr class="lead" data-customer="{escape(lead["customer_id"])}" data-score="{lead["score"]}">'
        f"<th>{escape(lead['customer_id'])}</th><td>{lead['score']}</td>"
        f"<td>{escape(lead['plan'])}{' (trial)' if lead['billing_status'] == 'trialing' else ''}</td>"
        f"<td>{escape(lead.get('csm_owner') or '-')}</td>"
        f"<td>{escape(', '.join(lead['reasons']))}</td><td>{_evidence(lead)}</td></tr>"
        for lead in leads
    )
    return (
        f'<div class="card">{intro}<table id="pql" class="heat"><tr><th>account</th><th>score</th>'
        f"<th>plan</th><th>CSM</th><th>why</th><th>evidence</th></tr>{rows}</table></div>"
    )
