-- The free-tier abuse guard (docs/metering.md#abuse-guard): a suspended customer is refused every feature
-- by the entitlement API (code "suspended") until `plg customers unsuspend` or the end of its cool-down
-- (suspended_until; null = until unsuspended by hand). Written only through services/customers. The
-- customers trigger (0030) NOTIFYs plg_customer_changed, so every directory reloads it within a second.
ALTER TABLE customers
    ADD COLUMN IF NOT EXISTS suspended_at     timestamptz,
    ADD COLUMN IF NOT EXISTS suspended_until  timestamptz,
    ADD COLUMN IF NOT EXISTS suspended_reason text,
    ADD COLUMN IF NOT EXISTS suspended_by     text,
    -- After an unsuspension by hand the guard does not suspend again automatically before this time
    -- (its signals still flow): support's decision is not undone by the next minute's evidence.
    ADD COLUMN IF NOT EXISTS suspension_exempt_until timestamptz;

-- Abuse signals seen (from abuse-signals), for customer success: suspected and suspended customers on the
-- dashboard, and the evidence behind a suspension. Idempotent by signal_id.
CREATE TABLE IF NOT EXISTS abuse_signals (
    signal_id    text PRIMARY KEY,
    customer_id  text        NOT NULL,
    kind         text        NOT NULL,
    action       text        NOT NULL,
    reason       text        NOT NULL,
    evidence     jsonb       NOT NULL,
    minute_start timestamptz NOT NULL,
    detected_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS abuse_signals_customer_idx ON abuse_signals (customer_id, detected_at DESC);
