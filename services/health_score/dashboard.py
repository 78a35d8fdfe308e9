"""The CS dashboard: server-rendered HTML (customers by band with score, trend arrow and sparkline; a
customer page with components, explanation, alerts, plan usage and live events) and one small script that
applies the SSE stream to the page without reloading it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

ARROWS = {"up": "▲", "down": "▼", "flat": "▬", None: "·"}
BANDS = ("red", "yellow", "green")

STATIC = Path(__file__).resolve().parent / "static"
# Inlined into every page: one request per page, nothing to cache-bust.
STYLE = (STATIC / "dashboard.css").read_text()
SCRIPT = (STATIC / "dashboard.js").read_text()


def _spark_range(values: Sequence[int]) -> tuple[float, float]:
    """The y range: the values' own (so a 5-point slide is visible), at least 20 points tall, within 0-100."""
    lo, hi = float(min(values)), float(max(values))
    pad = max(0.0, (20 - (hi - lo)) / 2)
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    return (lo, hi) if hi > lo else (0.0, 100.0)


def sparkline(values: Sequence[int], width: int = 120, height: int = 24) -> str:
    if not values:
        return ""
    if len(values) == 1:  # one day of history: a dot, not an invisible line
        y = height - values[0] / 100 * height
        dot = f'<circle cx="{width}" cy="{y:.1f}" r="2" fill="#4a67d6"/>'
        return f'<svg width="{width}" height="{height}">{dot}</svg>'
    step = width / (len(values) - 1) if len(values) > 1 else 0
    lo, hi = _spark_range(values)
    points = " ".join(
        f"{i * step:.1f},{height - (v - lo) / (hi - lo) * height:.1f}" for i, v in enumerate(values)
    )
    line = f'<polyline fill="none" stroke="#4a67d6" points="{points}"/>'
    return f'<svg width="{width}" height="{height}">{line}</svg>'


def _page(title: str, body: str, customer: str | None = None, who: str = "", filtered: bool = False) -> str:
    data = f' data-customer="{escape(customer)}"' if customer else ""
    # A filtered list takes live score updates for the customers it shows, never adds others.
    data += ' data-filtered="1"' if filtered else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
        f'<body{data}><header><a href="/"><b>plg</b> customer health</a>{who}</header><main>{body}</main>'
        f"<script>{SCRIPT}</script></body></html>"
    )


def _row(s: Mapping[str, Any]) -> str:
    cid = escape(s["customer_id"])
    direction = s.get("trend_direction")
    badge = ' <span class="tag">suspended</span>' if s.get("suspended") else ""
    return (
        f'<tr id="c-{cid}"><td><a href="/customers/{cid}">{cid}</a>{badge}</td>'
        f'<td class="score {escape(s.get("band") or "")}">{s["score"]}</td>'
        f'<td class="trend {escape(direction or "")}">{ARROWS.get(direction, "·")} {s.get("trend", 0)}</td>'
        f'<td class="spark">{sparkline(s.get("sparkline") or [])}</td>'
        f'<td class="plan">{escape(s.get("plan") or "")}</td>'
        f'<td class="csm">{escape(s.get("csm_owner") or "-")}</td>'
        f'<td class="mrr">{escape(str(s.get("mrr") or ""))}</td></tr>'
    )


def _filter_form(filters: Any, plans: Sequence[str]) -> str:
    """Search and filters of the customer list (a GET form: the filtered list is a link to share)."""

    def options(name: str, values: Sequence[tuple[str, str]], chosen: str | None) -> str:
        opts = "".join(
            f'<option value="{escape(v)}"{" selected" if v == (chosen or "") else ""}>'
            f"{escape(label)}</option>"
            for v, label in values
        )
        return f'<select name="{name}" id="f-{name}">{opts}</select>'

    suspended = {True: "yes", False: "no", None: ""}[getattr(filters, "suspended", None)]
    return (
        '<form id="filters" method="get" action="/" class="filters">'
        f'<input name="q" id="f-q" placeholder="search customers" value="{escape(filters.q or "")}">'
        + options("band", [("", "any band"), *((b, b) for b in BANDS)], filters.band)
        + options("plan", [("", "any plan"), *((p, p) for p in plans)], filters.plan)
        + '<input name="csm" id="f-csm" placeholder="CSM (none: unowned)"'
        + f' value="{escape(filters.csm or "")}">'
        + options(
            "suspended", [("", "suspended or not"), ("yes", "suspended"), ("no", "not suspended")], suspended
        )
        + '<button type="submit">Filter</button> <a href="/">clear</a></form>'
    )


def _revenue(listed: Mapping[str, Any]) -> str:
    """Recurring revenue per band among the listed customers: red is the money at risk."""
    per_band = listed.get("revenue_at_risk") or {}
    if not per_band:
        return ""
    currency = escape(str(listed.get("currency") or "").upper())
    cells = "".join(
        f'<div class="rev b-{b}" id="rev-{b}" data-mrr="{escape(str(per_band[b]["mrr"]))}">'
        f'<span class="{b}">{b.title()}</span> <b>{escape(str(per_band[b]["mrr"]))} {currency}</b>'
        f'<span class="muted"> / month · {per_band[b]["customers"]} customers</span></div>'
        for b in BANDS
        if b in per_band
    )
    return (
        '<section id="revenue"><h2>Recurring revenue by health band</h2>'
        f'<div class="revs">{cells}</div></section>'
    )


def _abuse(rows: Sequence[Mapping[str, Any]]) -> str:
    """The abuse guard's customers: suspended now, or suspected (signals in the last day, not suspended)."""
    if not rows:
        return ""
    body = "".join(
        f'<tr class="{escape(r["state"])}"><td><a href="/customers/{escape(r["customer_id"])}">'
        f"{escape(r['customer_id'])}</a></td><td>{escape(r['state'])}</td><td>{escape(r['plan'])}</td>"
        f"<td>{r['signals']}</td><td>{escape(r['reason'] or '')}</td>"
        f"<td>{escape(r['until'] or ('until lifted' if r['state'] == 'suspended' else ''))}</td></tr>"
        for r in rows
    )
    return (
        '<section id="abuse"><h2>Abuse guard: suspended and suspected</h2><table><thead><tr><th>customer</th>'
        "<th>state</th><th>plan</th><th>signals (24 h)</th><th>reason</th><th>until</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


def overview(
    listed: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    who: str = "",
    abuse: Sequence[Mapping[str, Any]] = (),
    filters: Any = None,
    plans: Sequence[str] = (),
) -> str:
    """The customers by band (searched and filtered), the recurring revenue in each band, and the abuse
    guard's suspended and suspected ones first; ``who`` is the signed-in operator's strip."""
    if not isinstance(listed, Mapping):  # plain summaries: no revenue strip
        listed = {"customers": list(listed)}
    by_band: dict[str, list[str]] = {b: [] for b in BANDS}
    for s in listed["customers"]:
        by_band.setdefault(s.get("band") or "red", []).append(_row(s))
    columns = "".join(
        f'<section id="band-{b}" class="b-{b}"><h2 class="{b}">{b.title()} ({len(by_band[b])})</h2>'
        f"<table><thead><tr><th>customer</th><th>score</th><th>trend</th><th>last weeks</th><th>plan</th>"
        f"<th>CSM</th><th>MRR</th></tr></thead><tbody>{''.join(by_band[b])}</tbody></table></section>"
        for b in BANDS
    )
    active = filters is not None and any(
        getattr(filters, f) not in (None, "") for f in ("q", "band", "plan", "csm", "suspended")
    )
    form = _filter_form(filters, plans) if filters is not None else ""
    body = f'{_abuse(abuse)}{form}{_revenue(listed)}<div class="cols">{columns}</div>'
    return _page("Customer health", body, who=who, filtered=active)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _head(record: Mapping[str, Any] | None, cid: str, history: Sequence[Mapping[str, Any]]) -> str:
    if record is None:
        return (
            f'<section><h2>{cid}</h2><div id="score" class="big">-</div><span id="band">no score yet</span>'
            '<span id="trend"></span><span id="meta"></span><div id="spark"></div></section>'
        )
    band = escape(record.get("band") or "")
    direction = record.get("trend_direction")
    arrow = f"{ARROWS.get(direction, '·')} {record.get('trend', 0)}"
    where = f"{escape(record.get('segment') or '')} · {escape(record.get('plan') or 'no plan')}"
    return (
        f'<section><h2>{cid} <span class="muted">{where}</span></h2>'
        f'<div id="score" class="big {band}">{record["score"]}</div> band <b id="band">{band}</b>'
        f' · trend <b id="trend" class="{escape(direction or "")}">{arrow}</b>'
        f'<span id="meta"> · churn risk {record.get("churn_risk_probability")}'
        f" · {record.get('active_users')} active of {record.get('seats')} seats</span>"
        f'<div id="spark">{sparkline([h["score"] for h in history])}</div>'
        f'<p class="muted">computed {_when(record["computed_at"])} UTC'
        f" ({escape(record.get('path') or '')})</p>"
        "</section>"
    )


def _factor_row(f: Mapping[str, Any]) -> str:
    filled = f["points"] / f["max_points"] * 100 if f["max_points"] else 0
    moved = "up" if f["change"] > 0 else "down" if f["change"] < 0 else "flat"
    return (
        f"<tr><td>{escape(f['name'])}</td><td>{f['value']:.2f}</td>"
        f'<td><div class="bar"><i style="width:{filled:.0f}%"></i></div></td>'
        f"<td>{f['points']:.1f} / {f['max_points']:.1f}</td>"
        f'<td class="{moved}">{f["change"]:+.1f}</td>'
        f'<td class="muted">{escape(f.get("detail") or "")}</td></tr>'
    )


def _explanation(record: Mapping[str, Any] | None) -> str:
    record = record or {}
    contributions = "".join(
        f"<tr><td>{escape(k)}</td><td>{v:.1f}</td></tr>"
        for k, v in (record.get("contributions") or {}).items()
    )
    factors = "".join(_factor_row(f) for f in record.get("factors") or [])
    top = ", ".join(escape(t) for t in record.get("top_factors") or []) or "none"
    return (
        "<section><h2>Components (points of 100)</h2>"
        f'<table><tbody id="contributions">{contributions}</tbody></table>'
        f'<p>Top factors: <b id="top">{top}</b></p><table><thead><tr><th>factor</th><th>value</th>'
        "<th></th><th>points</th><th>vs previous</th><th></th></tr></thead>"
        f'<tbody id="factors">{factors}</tbody></table></section>'
    )


def _table(title: str, head: Sequence[str], rows: str, tbody_id: str = "") -> str:
    ths = "".join(f"<th>{h}</th>" for h in head)
    body_id = f' id="{tbody_id}"' if tbody_id else ""
    table = f"<table><thead><tr>{ths}</tr></thead><tbody{body_id}>{rows}</tbody></table>"
    return f"<section><h2>{title}</h2>{table}</section>"


def customer_page(
    record: Mapping[str, Any] | None,
    customer_id: str,
    history: Sequence[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
    alerts: Iterable[Mapping[str, Any]],
    usage: Sequence[Mapping[str, Any]],
    who: str = "",
) -> str:
    cid = escape(customer_id)
    usage_rows = (
        "".join(
            "<tr>"
            + "".join(f"<td>{escape(str(u.get(k, '')))}</td>" for k in ("meter", "usage", "limit", "percent"))
            + "</tr>"
            for u in usage
        )
        or '<tr><td colspan="4" class="muted">no plan limit crossed this period</td></tr>'
    )
    alert_items = "".join(
        f"<li>{_when(a['fired_at'])} {escape(a['rule'])}: {escape(a['message'])}</li>" for a in alerts
    )
    event_rows = "".join(
        f"<tr><td>{_when(e['timestamp'])}</td><td>{escape(e['name'])}</td>"
        f'<td class="muted">{escape(e.get("person_id") or "")}</td></tr>'
        for e in events
    )
    body = (
        _head(record, cid, history)
        + _explanation(record)
        + _table("Plan usage against limits", ("meter", "usage", "limit", "%"), usage_rows)
        + f'<section><h2>Alerts</h2><ul id="alerts">{alert_items}</ul></section>'
        + _table("Recent events (live)", ("time (UTC)", "event", "person"), event_rows, "events")
    )
    return _page(f"{customer_id} - health", body, customer=customer_id, who=who)
