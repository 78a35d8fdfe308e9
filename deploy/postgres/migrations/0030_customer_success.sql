-- Customer-success context the enrichment service stamps on every enriched event: support tier, CSM
-- owner, billing status and support tickets. Changed with `plg customers update` / `plg tickets`; any
-- change NOTIFYs plg_customer_changed with the customer id so enrichment drops its cached context
-- (services/enrichment/tenants.py) and the next events carry the new one without a restart.
ALTER TABLE customers
    ADD COLUMN IF NOT EXISTS support_tier   text NOT NULL DEFAULT 'standard'
        CHECK (support_tier ~ '^[a-z][a-z0-9_-]{0,39}$'),
    ADD COLUMN IF NOT EXISTS csm_owner      text CHECK (length(csm_owner) BETWEEN 1 AND 200),
    ADD COLUMN IF NOT EXISTS billing_status text NOT NULL DEFAULT 'active'
        CHECK (billing_status IN ('active', 'trialing', 'past_due', 'unpaid', 'canceled'));

CREATE TABLE IF NOT EXISTS support_tickets (
    ticket_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id text        NOT NULL REFERENCES customers (customer_id),
    subject     text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 500),
    priority    text        NOT NULL DEFAULT 'normal' CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    opened_at   timestamptz NOT NULL DEFAULT now(),
    closed_at   timestamptz,
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

CREATE INDEX IF NOT EXISTS support_tickets_open_idx ON support_tickets (customer_id) WHERE status = 'open';

CREATE OR REPLACE FUNCTION plg_notify_customer_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('plg_customer_changed', OLD.customer_id);
    ELSE
        PERFORM pg_notify('plg_customer_changed', NEW.customer_id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS customers_changed ON customers;
CREATE TRIGGER customers_changed AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION plg_notify_customer_changed();

DROP TRIGGER IF EXISTS support_tickets_changed ON support_tickets;
CREATE TRIGGER support_tickets_changed AFTER INSERT OR UPDATE OR DELETE ON support_tickets
    FOR EACH ROW EXECUTE FUNCTION plg_notify_customer_changed();
