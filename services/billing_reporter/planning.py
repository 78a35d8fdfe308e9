"""What to report to Stripe for one window, and under which identifier (pure; the ledger applies it).

A window is reported once it closed (its end plus a settle delay has passed): revision 0 carries its
whole-unit total; a late correction (the total grew after that) is a new revision carrying only the
difference. Stripe meter events take whole numbers, so a window's reported total is ``floor(total)``:
fractions of a unit stay in plg's own invoice (exact) and never reach Stripe (docs/billing.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

# Stripe's identifier is at most 100 characters; customer ids alone may be 128.
IDENTIFIER_PREFIX = "plg_"


def report_identifier(customer_id: str, meter: str, window_start_ms: int, revision: int) -> str:
    """The meter event's ``identifier`` (and ``Idempotency-Key``): the same for every retry of a revision,
    different for every revision. 160 bits of SHA-256 over an unambiguous encoding of the four parts."""
    material = "\x1f".join((customer_id, meter, str(window_start_ms), str(revision))).encode()
    return IDENTIFIER_PREFIX + hashlib.sha256(material).hexdigest()[:40]


def whole_units(total: Decimal) -> Decimal:
    return total.to_integral_value(rounding=ROUND_FLOOR)


@dataclass(frozen=True, slots=True)
class Revision:
    revision: int
    quantity: Decimal  # whole units, > 0
    window_total: Decimal  # whole units Stripe has for the window once this revision counts


def next_revision(total: Decimal, reported: Decimal, revisions_so_far: int) -> Revision | None:
    """The report a window with ``total`` needs when ``reported`` whole units were sent in
    ``revisions_so_far`` reports before, or None when Stripe already has it all. A total below what was
    reported (a meter whose values went negative) sends nothing: reconciliation shows the difference."""
    whole = whole_units(total)
    missing = whole - reported
    if missing <= 0:
        return None
    return Revision(revisions_so_far, missing, whole)


def event_time(window_start_ms: int, subscription: tuple[int, float] | None) -> int:
    """The meter event's timestamp (epoch s) for a window: its start, so it lands in the Stripe billing
    period of all of its usage — unless the window is in the plg period the customer's subscription began
    in (``subscription`` = (that period's start, ms; the start, epoch s)) and from before the start: Stripe
    bills a metered price only from the subscription's start, plg the whole period on the plan at its end,
    so it is dated one second after the start, where Stripe's first invoice bills it."""
    start_s = window_start_ms // 1000
    if subscription is None:
        return start_s
    usage_from, started_s = subscription
    if usage_from <= window_start_ms < started_s * 1000:
        return max(start_s, int(started_s) + 1)
    return start_s


def window_closed(window_end_ms: int, now_ms: int, settle_ms: int) -> bool:
    """A window is reported once ``settle_ms`` have passed after its end (late events of the window that
    the aggregator still counts arrive as corrections, later revisions)."""
    return window_end_ms + settle_ms <= now_ms
