-- The ledger of `plg dlq replay`: which dead letters were re-produced to their source topic, so a second
-- replay skips them (the replay is idempotent; metering's dedup by event_id is the second safety net).
-- A row is written only after the broker acknowledged the re-produced record.
CREATE TABLE IF NOT EXISTS dlq_replays (
    dlq_topic     text        NOT NULL,
    dlq_partition integer     NOT NULL,
    dlq_offset    bigint      NOT NULL,
    event_id      text,
    error_code    text        NOT NULL,
    target_topic  text        NOT NULL,
    replayed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
