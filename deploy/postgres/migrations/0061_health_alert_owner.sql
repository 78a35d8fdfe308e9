-- The alert outbox belongs to one deployment of the health-score service (its consumer group, which
-- carries the topic prefix): a second deployment on the same database (tests, a staging prefix) must not
-- publish another's alerts to its own topic or mark their webhooks done.
ALTER TABLE health_alerts ADD COLUMN IF NOT EXISTS consumer_group text NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS health_alerts_unpublished_idx ON health_alerts (consumer_group, fired_at)
    WHERE published_at IS NULL;
