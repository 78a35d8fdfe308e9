-- Late usage after an invoice (docs/billing.md "Adjustments"): a period whose final invoice is written
-- never changes; a later correction of its usage becomes one row here per (customer, corrected period,
-- meter, sequence) — the money difference of the re-rated line — billed on the customer's next invoice
-- (target_period_start) and mirrored at Stripe once: an invoice item (positive) or a credit note on the
-- corrected period's Stripe invoice (negative), created under `idempotency_key`.
CREATE TABLE IF NOT EXISTS billing_adjustments (
    ledger              text           NOT NULL,
    customer_id         text           NOT NULL,
    period_start        bigint         NOT NULL,  -- the corrected (closed) period
    meter               text           NOT NULL,
    seq                 integer        NOT NULL,  -- 0, 1, ... per corrected line
    usage_before        numeric(38, 9) NOT NULL,  -- what the invoice (and earlier adjustments) billed
    usage_after         numeric(38, 9) NOT NULL,
    amount              numeric(38, 9) NOT NULL,  -- rounded line after - rounded line before (exact)
    currency            text           NOT NULL,
    target_period_start bigint         NOT NULL,  -- the invoice that carries it
    idempotency_key     text           NOT NULL UNIQUE,
    stripe_status       text           NOT NULL DEFAULT 'pending'
        CHECK (stripe_status IN ('pending', 'sent', 'not_at_stripe')),
    stripe_kind         text,                     -- invoiceitem | credit_note
    stripe_id           text,
    stripe_error        text,
    created_at          timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (ledger, customer_id, period_start, meter, seq)
);
CREATE INDEX IF NOT EXISTS billing_adjustments_target_idx
    ON billing_adjustments (ledger, customer_id, target_period_start);
CREATE INDEX IF NOT EXISTS billing_adjustments_pending_idx
    ON billing_adjustments (ledger, stripe_status) WHERE stripe_status = 'pending';
