-- Sticky assignments get an owner and an age (issue 14, docs/growth.md#sticky-assignments): each row is one
-- customer's (two customers' users with the same id no longer share a variant, nor can one customer's key
-- pick another's), and rows unused for GROWTH_STICKY_RETENTION_DAYS are deleted by growth. Rows written
-- before this migration keep customer_id '' and are still read (then copied to the customer's own).
ALTER TABLE growth_sticky_assignments ADD COLUMN IF NOT EXISTS customer_id text NOT NULL DEFAULT '';
ALTER TABLE growth_sticky_assignments ADD COLUMN IF NOT EXISTS last_used_at timestamptz NOT NULL DEFAULT now();
UPDATE growth_sticky_assignments SET last_used_at = assigned_at;
ALTER TABLE growth_sticky_assignments DROP CONSTRAINT IF EXISTS growth_sticky_assignments_pkey;
ALTER TABLE growth_sticky_assignments ADD PRIMARY KEY (customer_id, sticky_key);
CREATE INDEX IF NOT EXISTS growth_sticky_assignments_used_idx ON growth_sticky_assignments (last_used_at);
