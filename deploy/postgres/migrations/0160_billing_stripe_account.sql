-- plg's caches of Stripe ids are per Stripe account (docs/billing.md "The catalog in Stripe"): a meter or
-- price id exists only in the account (and mode: test/live) that made it, so switching keys, or a second
-- Stripe (the bench's double) against the same database, must not send one account's ids to the other
-- ("No such billing meter"). `stripe_account` is StripeGateway.account(): `acct_...:test|live`, or a key
-- fingerprint `key_...` for a key that may not read its account.
--
-- Rows from before have the account '' ("the one in use before the upgrade"): the first account that
-- reads the cache adopts them (services/billing_reporter/meters.py adopt_legacy_ids), so an upgraded
-- deployment keeps working before its next sync; any other account syncs its own rows.
ALTER TABLE billing_stripe_meters ADD COLUMN IF NOT EXISTS stripe_account text NOT NULL DEFAULT '';
ALTER TABLE billing_stripe_meters ALTER COLUMN stripe_account DROP DEFAULT;
ALTER TABLE billing_stripe_meters DROP CONSTRAINT IF EXISTS billing_stripe_meters_pkey;
ALTER TABLE billing_stripe_meters ADD PRIMARY KEY (stripe_account, meter);

ALTER TABLE billing_stripe_prices ADD COLUMN IF NOT EXISTS stripe_account text NOT NULL DEFAULT '';
ALTER TABLE billing_stripe_prices ALTER COLUMN stripe_account DROP DEFAULT;
ALTER TABLE billing_stripe_prices DROP CONSTRAINT IF EXISTS billing_stripe_prices_pkey;
ALTER TABLE billing_stripe_prices ADD PRIMARY KEY (stripe_account, lookup_key);
