-- Billing (services/billing_reporter, docs/billing.md): usage consumed from usage-aggregates, the ledger of
-- reports to Stripe (the outbox its sender drains), the consumed offsets stored with them, Stripe meters,
-- subscriptions and their webhooks, plan changes for the entitlement view, final invoices.

-- Grandfathering: the price version a customer subscribed under (NULL: the version in effect), and the
-- tax region (ISO 3166-2, e.g. US-DE) exemptions are judged by.
ALTER TABLE customers ADD COLUMN IF NOT EXISTS price_version text;
ALTER TABLE customers ADD COLUMN IF NOT EXISTS tax_region text;

-- The latest running total the reporter consumed per customer, meter, granularity and window (the
-- aggregate's ungrouped series). `dirty`: changed since the planner last looked at it.
CREATE TABLE IF NOT EXISTS billing_usage (
    customer_id  text        NOT NULL,
    meter        text        NOT NULL,
    granularity  text        NOT NULL CHECK (granularity IN ('MINUTE', 'HOUR', 'DAY', 'BILLING_PERIOD')),
    window_start bigint      NOT NULL,  -- epoch ms, UTC, inclusive
    window_end   bigint      NOT NULL,  -- exclusive
    value        numeric(38, 9) NOT NULL,
    event_count  bigint      NOT NULL,
    updated_at   bigint      NOT NULL,  -- the aggregate's updated_at (epoch ms)
    dirty        boolean     NOT NULL DEFAULT true,
    PRIMARY KEY (customer_id, meter, granularity, window_start)
);
CREATE INDEX IF NOT EXISTS billing_usage_dirty_idx ON billing_usage (window_end) WHERE dirty;

-- The ledger: one row per report (revision) of a customer's meter in a reporting window. Revision 0 is
-- the window's total when it closed; a later revision is a late correction's difference, never a second
-- copy. `identifier` (deterministic from customer/meter/window/revision) is Stripe's meter-event
-- identifier and the Idempotency-Key. The sender moves pending rows to delivered or rejected.
CREATE TABLE IF NOT EXISTS billing_reports (
    customer_id        text          NOT NULL,
    meter              text          NOT NULL,
    window_start       bigint        NOT NULL,
    window_end         bigint        NOT NULL,
    revision           integer       NOT NULL CHECK (revision >= 0),
    quantity           numeric(38, 0) NOT NULL CHECK (quantity > 0),
    window_total       numeric(38, 9) NOT NULL,
    identifier         text          NOT NULL UNIQUE,
    stripe_customer_id text          NOT NULL,
    status             text          NOT NULL DEFAULT 'pending'
                                     CHECK (status IN ('pending', 'delivered', 'rejected')),
    attempts           integer       NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz   NOT NULL DEFAULT now(),
    last_error         text,
    created_at         timestamptz   NOT NULL DEFAULT now(),
    delivered_at       timestamptz,
    published_at       timestamptz,
    PRIMARY KEY (customer_id, meter, window_start, revision)
);
CREATE INDEX IF NOT EXISTS billing_reports_due_idx ON billing_reports (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS billing_reports_unpublished_idx
    ON billing_reports (delivered_at) WHERE status = 'delivered' AND published_at IS NULL;

-- Offsets of usage-aggregates consumed, written in the same transaction as billing_usage and the ledger.
CREATE TABLE IF NOT EXISTS billing_offsets (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint  NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);

-- The Stripe meter of each plg meter (`plg billing sync-meters`).
CREATE TABLE IF NOT EXISTS billing_stripe_meters (
    meter           text        PRIMARY KEY,
    event_name      text        NOT NULL,
    stripe_meter_id text        NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now()
);

-- Stripe webhook events applied, by Stripe event id: a redelivered event changes nothing.
CREATE TABLE IF NOT EXISTS stripe_webhook_events (
    event_id    text        PRIMARY KEY,
    type        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Subscription state per customer: active, past_due (access kept until grace_until), canceled (free).
CREATE TABLE IF NOT EXISTS subscriptions (
    customer_id            text        PRIMARY KEY REFERENCES customers (customer_id),
    plan                   text        NOT NULL,
    status                 text        NOT NULL CHECK (status IN ('active', 'past_due', 'canceled')),
    stripe_customer_id     text,
    stripe_subscription_id text,
    past_due_since         timestamptz,
    grace_until            timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Every plan change billing makes, in order: the record the entitlement view (and enrichment) follow.
CREATE TABLE IF NOT EXISTS customer_changes (
    seq         bigserial   PRIMARY KEY,
    customer_id text        NOT NULL,
    plan        text        NOT NULL,
    reason      text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

-- Final invoices, one per customer and billing period (period close).
CREATE TABLE IF NOT EXISTS billing_invoices (
    customer_id   text          NOT NULL,
    period_start  bigint        NOT NULL,
    period_end    bigint        NOT NULL,
    plan          text          NOT NULL,
    price_version text          NOT NULL,
    currency      text          NOT NULL,
    total         numeric(38, 9) NOT NULL,
    invoice       jsonb         NOT NULL,
    finalized_at  timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, period_start)
);
