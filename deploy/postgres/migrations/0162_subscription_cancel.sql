-- A customer who cancels and subscribes again within one billing period (docs/billing.md "Windows").
-- `canceled_at`: when the customer's latest canceled Stripe subscription stopped covering usage (Stripe's
-- `ended_at`, else `canceled_at`). Windows from then until a new subscription's first plg period are
-- covered by no subscription: the ledger holds them (Stripe would bill them on no invoice) and a new
-- subscription in the same period reports them at its start. Kept when a new subscription begins: windows
-- before it belong to the old subscription, windows between it and the new one's `usage_from` to none.
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS canceled_at timestamptz;
-- The meter event's timestamp (epoch s), decided when the report is planned, so that every attempt of a
-- report carries the same one (its identifier is the Idempotency-Key) and the ledger knows which
-- subscription's period it fell in. NULL for reports planned before 0162 and for level reports (dated
-- at their planning time, `created_at`): the sender dates them as before.
ALTER TABLE billing_reports ADD COLUMN IF NOT EXISTS event_at bigint;
