-- Period close (docs/billing.md): a final invoice belongs to one ledger (deployment) and is published on
-- billing-invoices once, through this outbox column.
ALTER TABLE billing_invoices ADD COLUMN IF NOT EXISTS ledger text NOT NULL DEFAULT 'billing-reporter';
ALTER TABLE billing_invoices ALTER COLUMN ledger DROP DEFAULT;
ALTER TABLE billing_invoices ADD COLUMN IF NOT EXISTS published_at timestamptz;
ALTER TABLE billing_invoices DROP CONSTRAINT IF EXISTS billing_invoices_pkey;
ALTER TABLE billing_invoices ADD PRIMARY KEY (ledger, customer_id, period_start);
