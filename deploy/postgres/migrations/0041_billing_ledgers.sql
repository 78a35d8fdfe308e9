-- One database may hold the ledgers of several reporters: deployments with their own topic prefix (a
-- test run on a shared cluster, a staging copy). Each ledger is its consumer group's, and each sender
-- drains only its own; without this a second reporter would deliver the first's reports to its Stripe.
-- Rows from before belong to the default deployment's group.
ALTER TABLE billing_usage ADD COLUMN IF NOT EXISTS ledger text NOT NULL DEFAULT 'billing-reporter';
ALTER TABLE billing_usage ALTER COLUMN ledger DROP DEFAULT;
ALTER TABLE billing_usage DROP CONSTRAINT IF EXISTS billing_usage_pkey;
ALTER TABLE billing_usage ADD PRIMARY KEY (ledger, customer_id, meter, granularity, window_start);
DROP INDEX IF EXISTS billing_usage_dirty_idx;
CREATE INDEX IF NOT EXISTS billing_usage_dirty_idx ON billing_usage (ledger, window_end) WHERE dirty;

ALTER TABLE billing_reports ADD COLUMN IF NOT EXISTS ledger text NOT NULL DEFAULT 'billing-reporter';
ALTER TABLE billing_reports ALTER COLUMN ledger DROP DEFAULT;
ALTER TABLE billing_reports DROP CONSTRAINT IF EXISTS billing_reports_pkey;
ALTER TABLE billing_reports ADD PRIMARY KEY (ledger, customer_id, meter, window_start, revision);
DROP INDEX IF EXISTS billing_reports_due_idx;
CREATE INDEX IF NOT EXISTS billing_reports_due_idx ON billing_reports (ledger, next_attempt_at) WHERE status = 'pending';
DROP INDEX IF EXISTS billing_reports_unpublished_idx;
CREATE INDEX IF NOT EXISTS billing_reports_unpublished_idx
    ON billing_reports (ledger, delivered_at) WHERE status = 'delivered' AND published_at IS NULL;
