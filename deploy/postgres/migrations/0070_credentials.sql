-- Credentials (services/kernel/apikeys.py owns both tables; docs/security.md).
-- Customer keys get a kind: 'secret' (server side; every key made before this migration is one) or
-- 'publishable' (safe in a browser: it may only send events, evaluate flags, check its own entitlements
-- and read/complete its own persons' onboarding). Publishable keys may list the browser origins allowed to
-- use them (CORS in ingest); NULL means none configured.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'secret'
    CHECK (kind IN ('secret', 'publishable'));
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS allowed_origins text[];

-- Operators: the CS team, admins and internal callers. Like API keys, only SHA-256 of the token's 256-bit
-- random secret is stored; the id is public (plgop_<operator_id>_<secret>). A name has at most one active
-- token, so audit rows that name the operator are unambiguous; revoked tokens stay for audit.
CREATE TABLE IF NOT EXISTS operators (
    operator_id   text        PRIMARY KEY CHECK (operator_id ~ '^[a-z0-9]{1,64}$'),
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 128 AND name !~ '[[:cntrl:]]'),
    role          text        NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    secret_sha256 bytea       NOT NULL CHECK (octet_length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE UNIQUE INDEX IF NOT EXISTS operators_active_name_idx ON operators (name) WHERE revoked_at IS NULL;
