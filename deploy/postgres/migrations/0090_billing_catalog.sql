-- Billing's catalog in Stripe, the sessions plg created, and webhook ordering (docs/billing.md).

-- One Stripe Price per (price version, base | meter), found again by its lookup key
-- (plg_<version>_<base|meter>). Prices are immutable at Stripe: a new version makes new rows, old rows
-- stay for the customers grandfathered on them.
CREATE TABLE IF NOT EXISTS billing_stripe_prices (
    lookup_key      text        PRIMARY KEY,
    plan            text        NOT NULL,
    price_version   text        NOT NULL,
    meter           text,                 -- NULL: the base (licensed) price
    stripe_price_id text        NOT NULL,
    exact           boolean     NOT NULL DEFAULT true,  -- false: Stripe's amount can differ (docs)
    synced_at       timestamptz NOT NULL DEFAULT now()
);

-- Every Checkout Session and subscription change plg asked Stripe for: a checkout completes only what
-- plg started (a contract plan is never granted by a session plg did not create).
CREATE TABLE IF NOT EXISTS billing_stripe_sessions (
    session_id    text        PRIMARY KEY,  -- cs_... or the subscription change's idempotency key
    customer_id   text        NOT NULL,
    plan          text        NOT NULL,
    price_version text,
    kind          text        NOT NULL CHECK (kind IN ('checkout', 'plan_change', 'top_up')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS billing_stripe_sessions_customer_idx ON billing_stripe_sessions (customer_id);

-- The newest Stripe `created` applied per Stripe object (subscription, invoice, checkout session): an
-- older event never undoes a newer one.
CREATE TABLE IF NOT EXISTS stripe_object_versions (
    object_id  text        PRIMARY KEY,
    created    bigint      NOT NULL,      -- the applied event's `created` (epoch seconds)
    event_id   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
