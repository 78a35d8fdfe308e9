-- Billing windows (seed 003 `meteringWindow: monthly | annual | custom`; docs/billing.md "Billing
-- windows"): a price billed every 12 (annual) or N (custom) months counts its periods from the month one
-- of the customer's billing periods started in, as a month index (year * 12 + month - 1); the anchor day
-- stays billing_anchor_day. NULL: the month the customer was created in. A plan change starts a new cycle
-- at the current monthly period (services/customers/windows.py), so an upgrade from monthly to annual
-- mid-period makes that month the annual period's first.
ALTER TABLE customers ADD COLUMN IF NOT EXISTS billing_cycle_month integer
    CHECK (billing_cycle_month BETWEEN 0 AND 12 * 10000);
