-- Health scorer scale-out (docs/health-score.md#scaling-out-several-scorer-instances).
-- A customer's home is the partition of usage-events-enriched its key hashes to; whoever owns that
-- partition is the only writer of the customer's facts, context and alert state.
--
-- Ownership with a fencing epoch: an instance claims a home partition when Kafka assigns it (epoch + 1),
-- and every transaction that writes a customer's state first checks, under a share lock, that the epochs
-- it claimed are still current. A stalled instance whose partition moved on (a zombie) fails that check
-- and rolls back instead of overwriting the new owner's facts with its stale cache.
CREATE TABLE IF NOT EXISTS health_partition_owners (
    consumer_group text        NOT NULL,
    partition      int         NOT NULL,
    epoch          bigint      NOT NULL,
    owner          text        NOT NULL,
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, partition)
);

-- Inputs read on an instance that is not the customer's home: entitlement-events (3 partitions, not
-- co-partitioned with usage-events-enriched's 6) and enriched events keyed off their customer. Written in
-- the transaction that stores the source partition's offsets (so once), folded and deleted by the home in
-- the transaction that stores the customer's facts (so once).
CREATE TABLE IF NOT EXISTS health_inbox (
    id             bigserial   PRIMARY KEY,
    consumer_group text        NOT NULL,
    home_partition int         NOT NULL,
    customer_id    text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('event', 'entitlement')),
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS health_inbox_home_idx ON health_inbox (consumer_group, home_partition, id);
