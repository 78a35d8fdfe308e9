"""One row of the ``customers`` table (migration 0001), as every service sees it (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.customers.windows import CYCLE_MONTH_SQL

# In the order of the dataclass's fields, so ``Customer(*row)`` builds one from a plain row.
COLUMNS = (
    "customer_id, plan, billing_anchor_day, name, stripe_customer_id, created_at,"
    " suspended_at, suspended_until, suspended_reason, suspended_by, suspension_exempt_until,"
    f" price_version, {CYCLE_MONTH_SQL} AS billing_cycle_month"
)


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
    # The abuse guard's suspension (migration 0100, services/customers/suspension.py): set while suspended;
    # it ends at ``suspended_until`` (the cool-down; None: only by hand).
    suspended_at: datetime | None = None
    suspended_until: datetime | None = None
    suspended_reason: str | None = None
    suspended_by: str | None = None
    suspension_exempt_until: datetime | None = None
    # What the customer's billing window is (docs/billing.md "Billing windows"): the price version it is
    # pinned to (None: the one in effect) and the month its annual/custom periods count from (migration
    # 0136; the creation month when unset). The entitlement API enforces limits over the same usage
    # period the invoice prices (a whole annual period for ``usage_billing: per_period``).
    price_version: str | None = None
    billing_cycle_month: int | None = None

    def suspended(self, now: datetime) -> bool:
        """Suspended at ``now`` (timezone-aware): since ``suspended_at``, until the cool-down ends."""
        return self.suspended_at is not None and (self.suspended_until is None or now < self.suspended_until)
