-- Health score (services/health_score, docs/health-score.md). The daily facts are the history both paths
-- score from: the real-time path keeps them in memory and writes the days a batch touched, with the
-- consumed offsets, in one transaction; the batch path recomputes from them. Scores are kept per day.
CREATE TABLE IF NOT EXISTS health_daily_facts (
    customer_id text   NOT NULL,
    day         date   NOT NULL,
    facts       jsonb  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, day)
);
CREATE INDEX IF NOT EXISTS health_daily_facts_day_idx ON health_daily_facts (day);

-- The customer's latest context by event time (plan, billing status, open tickets, seats).
CREATE TABLE IF NOT EXISTS health_context (
    customer_id text   PRIMARY KEY,
    context     jsonb  NOT NULL,
    alert_state jsonb  NOT NULL DEFAULT '{}'::jsonb
);

-- Daily history: the last score computed on each day (real-time or batch).
CREATE TABLE IF NOT EXISTS health_scores_daily (
    customer_id    text        NOT NULL,
    day            date        NOT NULL,
    score          smallint    NOT NULL CHECK (score BETWEEN 0 AND 100),
    band           text        NOT NULL CHECK (band IN ('red', 'yellow', 'green')),
    segment        text        NOT NULL,
    components     jsonb       NOT NULL,
    record         jsonb       NOT NULL,
    computed_at    bigint      NOT NULL,
    path           text        NOT NULL CHECK (path IN ('realtime', 'batch')),
    config_version int         NOT NULL,
    PRIMARY KEY (customer_id, day)
);

-- Consumed offsets, stored with the facts they produced (the at-least-once loop skips what is below).
CREATE TABLE IF NOT EXISTS health_offsets (
    consumer_group text   NOT NULL,
    topic          text   NOT NULL,
    partition      int    NOT NULL,
    next_offset    bigint NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Alerts that fired, written with the state that fired them; the sender publishes them to customer-alerts
-- and POSTs them to the webhooks, each at least once (alert_id deduplicates).
CREATE TABLE IF NOT EXISTS health_alerts (
    alert_id        text        PRIMARY KEY,
    customer_id     text        NOT NULL,
    rule            text        NOT NULL,
    payload         jsonb       NOT NULL,
    fired_at        bigint      NOT NULL,
    published_at    timestamptz,
    webhooks_done   text[]      NOT NULL DEFAULT '{}',
    webhook_attempts int        NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    webhooks_finished_at      timestamptz
);
CREATE INDEX IF NOT EXISTS health_alerts_customer_idx ON health_alerts (customer_id, fired_at DESC);
CREATE INDEX IF NOT EXISTS health_alerts_due_idx ON health_alerts (next_attempt_at)
    WHERE webhooks_finished_at IS NULL;
