-- The billing terms a customer had before each plan change, and when Stripe made the change (docs/billing.md
-- "Which plan a period is billed on"). The period closer closes a period 2 h after it ended
-- (BILLING_CLOSE_GRACE_SECONDS) and read the plan the customer has *then*: an upgrade, a downgrade, a cancel
-- or a new checkout inside those 2 h priced the ended period on the new plan, while Stripe had invoiced it
-- at its end on the old one. A period is billed on the terms in force at its end: those of the customer
-- row, unless a change took effect at or after the end — then the `from_*` of the earliest such change.
-- `effective_at`: Stripe's time of the change (the event's `created`; a cancel's `ended_at`; a grace's
-- end), not the webhook's arrival (Stripe retries for days). NULL (rows before 0163): not history.
ALTER TABLE customer_changes ADD COLUMN IF NOT EXISTS effective_at timestamptz;
ALTER TABLE customer_changes ADD COLUMN IF NOT EXISTS from_plan text;
ALTER TABLE customer_changes ADD COLUMN IF NOT EXISTS from_price_version text;
ALTER TABLE customer_changes ADD COLUMN IF NOT EXISTS from_cycle_month integer;
CREATE INDEX IF NOT EXISTS customer_changes_effective ON customer_changes (effective_at)
    WHERE effective_at IS NOT NULL;
