"""Health-score backtest (`plg health backtest`): did the score a customer had on a day predict that it
churned in the following days? Pure: daily scores in, verdicts out.

* a **point** is one customer's score on one day (the health score's daily history);
* it is **churned** when the customer had no activity (no event in the analytics store) in the
  ``horizon_days`` after that day; points whose horizon has not passed yet are left out (their outcome is
  unknown);
* **ROC AUC**: the probability that a churned point scored lower than a retained one (ties count half) —
  0.5 is a coin, 1.0 a perfect ranking; computed exactly from ranks (Mann-Whitney U);
* **precision of the red band**: of the points the score put in red, the share that churned — what a CS
  team acting on red alerts would find.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Point:
    customer_id: str
    day: int  # days since the epoch, UTC
    score: float
    band: str


def roc_auc(scores: Sequence[float], churned: Sequence[bool]) -> float | None:
    """P(score of a churned point < score of a retained one), ties half; None without both kinds."""
    pairs = sorted(zip(scores, churned, strict=True), key=lambda p: p[0])
    n_churned = sum(1 for _, c in pairs if c)
    n_kept = len(pairs) - n_churned
    if not n_churned or not n_kept:
        return None
    # Ranks from the top: a churned point should score low, i.e. rank below retained ones.
    wins = 0.0
    kept_above = n_kept
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        group = pairs[i:j]
        churned_here = sum(1 for _, c in group if c)
        kept_here = len(group) - churned_here
        kept_above -= kept_here
        wins += churned_here * (kept_above + kept_here / 2)
        i = j
    return wins / (n_churned * n_kept)


def label(
    points: Iterable[Point], active_days: Mapping[str, Sequence[int]], horizon_days: int, last_day: int
) -> list[tuple[Point, bool]]:
    """Each point whose horizon has passed (``day + horizon_days <= last_day``) with its outcome; customers
    the store has no event of at all are left out (their activity is not known there, which is not churn)."""
    out = []
    for point in points:
        if point.day + horizon_days > last_day or point.customer_id not in active_days:
            continue
        days = active_days.get(point.customer_id, ())
        at = bisect.bisect_right(days, point.day)
        active_after = at < len(days) and days[at] <= point.day + horizon_days
        out.append((point, not active_after))
    return out


def evaluate(labelled: Sequence[tuple[Point, bool]]) -> dict[str, object]:
    scores = [p.score for p, _ in labelled]
    churned = [c for _, c in labelled]
    red = [c for p, c in labelled if p.band == "red"]
    auc = roc_auc(scores, churned)
    return {
        "points": len(labelled),
        "customers": len({p.customer_id for p, _ in labelled}),
        "churned": sum(churned),
        "roc_auc": None if auc is None else round(auc, 4),
        "red_points": len(red),
        "red_precision": round(sum(red) / len(red), 4) if red else None,
        "base_rate": round(sum(churned) / len(churned), 4) if churned else None,
    }
