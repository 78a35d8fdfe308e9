-- Customers (tenants) of plg: their plan, billing anchor and Stripe id. Shared by ingest (API keys),
-- metering (plan limits, billing periods) and billing.
CREATE TABLE IF NOT EXISTS customers (
    customer_id        text PRIMARY KEY CHECK (customer_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    name               text,
    plan               text        NOT NULL,
    billing_anchor_day smallint    NOT NULL DEFAULT 1 CHECK (billing_anchor_day BETWEEN 1 AND 31),
    stripe_customer_id text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
