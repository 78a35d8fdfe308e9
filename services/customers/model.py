"""One row of the ``customers`` table (migration 0001), as every service sees it (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# In the order of the dataclass's fields, so ``Customer(*row)`` builds one from a plain row.
COLUMNS = "customer_id, plan, billing_anchor_day, name, stripe_customer_id, created_at"


@dataclass(frozen=True, slots=True)
class Customer:
    """A tenant: its plan and the day of the month its billing periods start on (1-31; a shorter month's
    period starts on its last day). ``name``, ``stripe_customer_id`` and ``created_at`` are optional so
    tests and callers that only know the plan can build one."""

    customer_id: str
    plan: str
    billing_anchor_day: int = 1
    name: str | None = None
    stripe_customer_id: str | None = None
    created_at: datetime | None = None
