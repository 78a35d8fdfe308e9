-- Operators' browser sessions and OIDC logins in flight (services/kernel/sessions.py owns both tables;
-- docs/security.md "Browser sessions and single sign-on").
--
-- A session id is 256 random bits that live only in the operator's cookie; the table keeps SHA-256 of it,
-- so a read of this table (a backup, a replica) cannot be replayed as a cookie. The role is fixed when the
-- session starts (from the IdP's claim, or the operator token's role); a session made from an operator
-- token names that token's operator_id, and ends when the token is revoked.
CREATE TABLE IF NOT EXISTS operator_sessions (
    session_sha256 bytea       PRIMARY KEY CHECK (octet_length(session_sha256) = 32),
    operator_name  text        NOT NULL CHECK (length(operator_name) BETWEEN 1 AND 256),
    role           text        NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    via            text        NOT NULL CHECK (via IN ('oidc', 'token')),
    -- oidc: "<issuer> <sub>" (sub is only unique per issuer); token: the operator id.
    subject        text        NOT NULL,
    operator_id    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz
);

CREATE INDEX IF NOT EXISTS operator_sessions_expires_idx ON operator_sessions (expires_at);

-- One row per "Sign in with SSO" click, consumed (deleted) by the IdP's redirect back: the state (stored
-- hashed, the browser holds it in a cookie too), the nonce the ID token must carry, and the PKCE verifier.
-- A second use of the same state, or one after expires_at, finds nothing.
CREATE TABLE IF NOT EXISTS oidc_login_attempts (
    state_sha256  bytea       PRIMARY KEY CHECK (octet_length(state_sha256) = 32),
    nonce         text        NOT NULL,
    code_verifier text        NOT NULL,
    return_to     text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
