-- Top-ups (docs/billing.md "Top-ups"): units of a meter a customer bought, one row per paid Checkout
-- Session. The grant's id is the payment's (the session id): a redelivered or retried webhook grants once.
CREATE TABLE IF NOT EXISTS billing_credit_grants (
    grant_id    text           PRIMARY KEY,
    customer_id text           NOT NULL REFERENCES customers (customer_id),
    meter       text           NOT NULL,
    units       numeric(38, 9) NOT NULL CHECK (units > 0),
    amount      numeric(38, 9) NOT NULL,
    currency    text           NOT NULL,
    pack        text           NOT NULL,
    granted_at  timestamptz    NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX IF NOT EXISTS billing_credit_grants_customer_idx ON billing_credit_grants (customer_id, granted_at);
