"""Learned activation thresholds (seed 002: "use statistical analysis of retained vs churned users to
dynamically update thresholds"): for each candidate event, the count within an account's first days that
best separates accounts that stayed from those that left.

Pure: it takes one row per account — whether it was retained, and how many times it did each event in its
first ``within_days`` — and answers, per event, the best threshold with its evidence:

* the **split**: accounts that reached ``count`` in the window against those that did not;
* **retention** of each side, their **difference** with a 95 % confidence interval (normal approximation of
  the difference of two proportions, the textbook test a reviewer can redo by hand) and the **lift**
  (ratio of the two retention rates);
* the **sample sizes**, and a refusal (``too_few``) when either side is smaller than ``min_group`` or the
  whole sample smaller than ``min_accounts`` — a threshold learned from a handful of accounts is noise.

The best count is the one with the largest lower confidence bound of the difference: it prefers a split
that is both large and certain over one that is large on three accounts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

Z95 = 1.959963984540054
MAX_COUNT = 100


@dataclass(frozen=True, slots=True)
class Account:
    retained: bool
    #: event name → times done within the account's first ``within_days``
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Suggestion:
    event: str
    count: int | None
    accounts: int
    reached: int
    not_reached: int
    retention_reached: float
    retention_not_reached: float
    difference: float
    ci_low: float
    ci_high: float
    lift: float | None
    verdict: str  # "suggested" | "too_few" | "no_signal"
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {field: getattr(self, field) for field in self.__slots__}


def _split(accounts: Sequence[Account], event: str, count: int) -> tuple[int, int, int, int]:
    """(reached, retained among them, not reached, retained among those)."""
    n1 = r1 = n0 = r0 = 0
    for account in accounts:
        if account.counts.get(event, 0) >= count:
            n1 += 1
            r1 += account.retained
        else:
            n0 += 1
            r0 += account.retained
    return n1, r1, n0, r0


def _interval(n1: int, r1: int, n0: int, r0: int) -> tuple[float, float, float, float, float]:
    p1, p0 = r1 / n1, r0 / n0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    diff = p1 - p0
    return p1, p0, diff, diff - Z95 * se, diff + Z95 * se


def suggest_for_event(
    accounts: Sequence[Account], event: str, *, min_accounts: int = 50, min_group: int = 10
) -> Suggestion:
    """The best threshold of ``event``, or why there is none."""
    total = len(accounts)
    if total < min_accounts:
        return _refusal(event, total, "too_few", f"{total} accounts; at least {min_accounts} are needed")
    counts = sorted(a.counts.get(event, 0) for a in accounts)
    top = min(counts[-1], MAX_COUNT)
    best: Suggestion | None = None
    for count in range(1, top + 1):
        n1, r1, n0, r0 = _split(accounts, event, count)
        if n1 < min_group or n0 < min_group:
            continue
        p1, p0, diff, low, high = _interval(n1, r1, n0, r0)
        candidate = Suggestion(
            event,
            count,
            total,
            n1,
            n0,
            round(p1, 4),
            round(p0, 4),
            round(diff, 4),
            round(low, 4),
            round(high, 4),
            round(p1 / p0, 3) if p0 > 0 else None,
            "suggested",
            "",
        )
        if best is None or candidate.ci_low > best.ci_low:
            best = candidate
    if best is None:
        return _refusal(
            event, total, "too_few", f"no count splits the accounts into two groups of at least {min_group}"
        )
    if best.ci_low <= 0:
        return replace(
            best,
            verdict="no_signal",
            reason="the best split's 95 % interval includes no difference: this event does not tell "
            "retained from churned accounts",
        )
    return replace(
        best,
        reason=f"accounts doing it {best.count}+ times stayed {100 * best.retention_reached:.0f} % "
        f"against {100 * best.retention_not_reached:.0f} %",
    )


def suggest(
    accounts: Sequence[Account], events: Sequence[str], *, min_accounts: int = 50, min_group: int = 10
) -> list[Suggestion]:
    """Every candidate event's suggestion, strongest evidence first."""
    found = [suggest_for_event(accounts, e, min_accounts=min_accounts, min_group=min_group) for e in events]
    rank = {"suggested": 0, "no_signal": 1, "too_few": 2}
    return sorted(found, key=lambda s: (rank[s.verdict], -s.ci_low, s.event))


def _refusal(event: str, total: int, verdict: str, reason: str) -> Suggestion:
    return Suggestion(event, None, total, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, None, verdict, reason)


def proposed_yaml(text: str, event: str, count: int, window_days: int) -> str:
    """activation.yaml's text with the threshold counting ``event`` set to ``count`` within ``window_days``
    (or a new threshold appended), every other line untouched so that the diff shows only the change."""
    lines = text.splitlines(keepends=True)
    start = None
    for i, line in enumerate(lines):
        if line.strip() == f"event: {event}":
            start = i
            break
    if start is None:
        block = (
            f"  - name: {event}_learned\n"
            f"    event: {event}\n"
            f"    count: {count}\n"
            f"    window_days: {window_days}\n"
            f"    # learned by `plg activation suggest`: review before applying\n"
        )
        if text and not text.endswith("\n"):
            text += "\n"
        return text + block
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    end = start
    while (
        end + 1 < len(lines)
        and lines[end + 1].startswith(indent)
        and not lines[end + 1].lstrip().startswith("- ")
    ):
        end += 1
    # the block starts at the "- name:" line before "event:"
    first = start
    while first > 0 and not lines[first].lstrip().startswith("- "):
        first -= 1
    block_lines = lines[first : end + 1]
    out: list[str] = []
    has_window = False
    for line in block_lines:
        stripped = line.lstrip()
        pad = line[: len(line) - len(stripped)]
        if stripped.startswith("count:"):
            out.append(f"{pad}count: {count}\n")
        elif stripped.startswith("window_days:"):
            has_window = True
            out.append(f"{pad}window_days: {window_days}\n")
        else:
            out.append(line)
    if not has_window:
        at = next(i for i, line in enumerate(out) if line.lstrip().startswith("count:"))
        out.insert(at + 1, f"{indent}window_days: {window_days}\n")
    return "".join(lines[:first] + out + lines[end + 1 :])
