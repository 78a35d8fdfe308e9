-- Top-ups at Stripe (docs/billing.md "Top-ups"): each grant is mirrored once as a Stripe billing credit
-- grant scoped to the meter's metered price, worth what the granted units cost there, so Stripe's invoice
-- uses it before charging overage exactly as plg's does. Created under an Idempotency-Key from grant_id.
ALTER TABLE billing_credit_grants ADD COLUMN IF NOT EXISTS stripe_status text NOT NULL DEFAULT 'pending'
    CHECK (stripe_status IN ('pending', 'sent', 'not_at_stripe'));
ALTER TABLE billing_credit_grants ADD COLUMN IF NOT EXISTS stripe_credit_grant_id text;
ALTER TABLE billing_credit_grants ADD COLUMN IF NOT EXISTS stripe_value numeric(38, 9);
ALTER TABLE billing_credit_grants ADD COLUMN IF NOT EXISTS stripe_error text;
CREATE INDEX IF NOT EXISTS billing_credit_grants_pending_idx ON billing_credit_grants (stripe_status)
    WHERE stripe_status = 'pending';
