"""Product-qualified leads (seed "PLG core + sales assist"): which free or trialing accounts are worth a
sales conversation, and the evidence for each. Pure: the signals come from the store and the customers
table (:func:`services.analytics.queries.pql_signals`), the decision is here.

An account **qualifies** when it is on a plan sales looks at (``free`` by default, or ``trialing``), is not
suspended, has **activated** (crossed at least one of activation.yaml's thresholds as an account), and shows
a **buying signal** in the last ``window_days``: its **usage grew** (events at least ``min_growth`` times
those of the window before, with at least ``min_events`` of them — 3 → 6 events is noise) or it **hit a plan
limit** (an entitlement event at ``limit_percent`` % or more). The score orders the list: 40 points for
activation, up to 30 for growth (10 per doubling), up to 30 for the highest limit share hit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PqlRules:
    plans: frozenset[str] = frozenset({"free"})
    trialing: bool = True
    window_days: int = 14
    min_growth: float = 1.5
    min_events: int = 20
    limit_percent: int = 80


@dataclass(frozen=True)
class Account:
    """What the customers table says of an account."""

    customer_id: str
    plan: str
    billing_status: str
    csm_owner: str | None = None
    suspended: bool = False


@dataclass(frozen=True)
class Signals:
    """What the store says of an account: thresholds crossed, events in the window and the one before it,
    persons active in each, and the highest share of each plan limit hit in the window."""

    crossed: Sequence[str] = ()
    recent_events: int = 0
    previous_events: int = 0
    recent_persons: int = 0
    previous_persons: int = 0
    limits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def eligible(account: Account, rules: PqlRules) -> bool:
    """A free (or other sales-assisted plan) or trialing account, not suspended by the abuse guard."""
    on_plan = account.plan in rules.plans or (rules.trialing and account.billing_status == "trialing")
    return on_plan and not account.suspended


def growth(signals: Signals) -> float | None:
    """Events in the window over events in the window before; None when there were none before (a new
    account's first weeks are not growth, they are a start)."""
    if signals.previous_events <= 0:
        return None
    return signals.recent_events / signals.previous_events


def evaluate(account: Account, signals: Signals, rules: PqlRules) -> dict[str, Any] | None:
    """The lead (reasons, score, evidence) when the account qualifies, else None."""
    if not eligible(account, rules) or not signals.crossed:
        return None
    reasons = ["activated"]
    score = 40.0
    ratio = growth(signals)
    grew = ratio is not None and ratio >= rules.min_growth and signals.recent_events >= rules.min_events
    if grew:
        assert ratio is not None
        reasons.append("usage_growth")
        score += min(30.0, 10.0 * math.log2(ratio))
    hits = {m: h for m, h in signals.limits.items() if int(h["percent"]) >= rules.limit_percent}
    if hits:
        reasons.append("limit_hit")
        top = max(int(h["percent"]) for h in hits.values())
        score += 30.0 if top >= 100 else 20.0 if top >= 90 else 10.0
    if len(reasons) == 1:
        return None  # activated but no buying signal: a happy free user, not a lead (yet)
    evidence = {
        "activation": {"thresholds_crossed": sorted(signals.crossed)},
        "usage": {
            "window_days": rules.window_days,
            "events": signals.recent_events,
            "events_previous_window": signals.previous_events,
            "growth": None if ratio is None else round(ratio, 2),
            "active_persons": signals.recent_persons,
            "active_persons_previous_window": signals.previous_persons,
        },
        "limit_hits": [{"meter": meter, **hit} for meter, hit in sorted(hits.items())],
    }
    return {
        "pql_id": f"pql:{account.customer_id}",
        "customer_id": account.customer_id,
        "plan": account.plan,
        "billing_status": account.billing_status,
        "csm_owner": account.csm_owner,
        "score": round(min(100.0, score)),
        "reasons": reasons,
        "evidence": evidence,
    }


def rank(leads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest score first, then the most events, then by id (a stable order to read and to test)."""
    return sorted(
        leads, key=lambda lead: (-lead["score"], -lead["evidence"]["usage"]["events"], lead["customer_id"])
    )
