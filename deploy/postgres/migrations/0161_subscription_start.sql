-- When a subscription began at Stripe, and the start of the plg period it began in (docs/billing.md
-- "Windows"): Stripe bills a meter's usage only from the subscription's start, plg the whole period. The
-- sender moves the meter events of that period's earlier windows to the start, so Stripe's first invoice
-- bills the period's usage as plg's does (before: usage between the period's start and the checkout was
-- on plg's invoice and never charged at Stripe).
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS started_at timestamptz;
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS usage_from bigint;  -- epoch ms
