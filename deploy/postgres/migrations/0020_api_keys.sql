-- API keys of the ingest service. Only SHA-256 of the 256-bit random secret is stored (see
-- services/ingest/apikeys.py for why not bcrypt/argon2); the key id is public and appears in the key
-- itself (plg_<key_id>_<secret>). Revoked keys are kept, with the time, for audit.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id        text        PRIMARY KEY CHECK (key_id ~ '^[a-z0-9]{1,64}$'),
    customer_id   text        NOT NULL REFERENCES customers (customer_id),
    secret_sha256 bytea       NOT NULL CHECK (octet_length(secret_sha256) = 32),
    description   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE INDEX IF NOT EXISTS api_keys_customer_id_idx ON api_keys (customer_id);
