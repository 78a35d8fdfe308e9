-- Product-qualified leads (services/analytics, docs/analytics.md "Product-qualified leads"): one row per
-- account when it first qualifies, written before anything is sent (an outbox), so a qualification is
-- claimed once across replicas (the primary key) and published to the pql topic and the webhooks at least
-- once, whatever crashes in between.
CREATE TABLE IF NOT EXISTS pql_leads (
    customer_id      text        PRIMARY KEY,
    pql_id           text        NOT NULL UNIQUE,
    record           jsonb       NOT NULL,
    qualified_at     timestamptz NOT NULL,
    published_at     timestamptz,
    webhooks_done    text[]      NOT NULL DEFAULT '{}',
    webhook_attempts integer     NOT NULL DEFAULT 0,
    webhook_next_at  timestamptz NOT NULL DEFAULT now(),
    webhooks_settled boolean     NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS pql_leads_unpublished_idx ON pql_leads (qualified_at) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS pql_leads_webhooks_idx ON pql_leads (webhook_next_at) WHERE NOT webhooks_settled;
