-- Erasure requests (`plg privacy forget`, docs/privacy.md): who asked, when, for which customer, and what
-- was erased where. Deliberately without the person's ids: the audit of an erasure must not keep what it
-- erased (the request on privacy-erasures names the person by salted hashes only).
CREATE TABLE IF NOT EXISTS privacy_erasures (
    erasure_id   uuid        PRIMARY KEY,
    customer_id  text        NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 200),
    requested_by text        CHECK (length(requested_by) BETWEEN 1 AND 200),
    requested_at timestamptz NOT NULL DEFAULT now(),
    ids_erased   integer     NOT NULL CHECK (ids_erased >= 1),
    report       jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS privacy_erasures_customer_idx ON privacy_erasures (customer_id, requested_at DESC);
