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


def _page(title: str, body: str, customer: str | None = None, who: str = "") -> str:
    data = f' data-customer="{escape(customer)}"' if customer else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
        f'<body{data}><header><a href="/"><b>plg</b> customer health</a>{who}</header><main>{body}</main>'
        f"<script>{SCRIPT}</script></body></html>"
    )


def _row(s: Mapping[str, Any]) -> str:
    cid = escape(s["customer_id"])
    direction = s.get("trend_direction")
    return (
        f'<tr id="c-{cid}"><td><a href="/customers/{cid}">{cid}</a></td>'
        f'<td class="score {escape(s.get("band") or "")}">{s["score"]}</td>'
        f'<td class="trend {escape(direction or "")}">{ARROWS.get(direction, "·")} {s.get("trend", 0)}</td>'
        f'<td class="spark">{sparkline(s.get("sparkline") or [])}</td></tr>'
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
    ranked: Iterable[Mapping[str, Any]], who: str = "", abuse: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The customers by band, the abuse guard's suspended and suspected ones first; ``who`` is the
    signed-in operator's strip (name, role, logout)."""
    by_band: dict[str, list[str]] = {b: [] for b in BANDS}
    for s in ranked:
        by_band.setdefault(s.get("band") or "red", []).append(_row(s))
    columns = "".join(
        f'<section id="band-{b}" class="b-{b}"><h2 class="{b}">{b.title()} ({len(by_band[b])})</h2>'
        f"<table><thead><tr><th>customer</th><th>score</th><th>trend</th><th>last weeks</th></tr></thead>"
        f"<tbody>{''.join(by_band[b])}</tbody></table></section>"
        for b in BANDS
    )
    return _page("Customer health", f'{_abuse(abuse)}<div class="cols">{columns}</div>', who=who)


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
