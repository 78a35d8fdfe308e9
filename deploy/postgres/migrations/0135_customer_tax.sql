-- Tax per customer (seed 003: "store tax exemptions per customer entity"; docs/billing.md "Tax per
-- customer"), set with `plg customers update C --tax-region R [--tax-exempt yes|no] [--tax-id ID]` through
-- services/customers/tax.py. tax_region (0040) is the ISO 3166 region plg's invoice judges the price book's
-- exempt_regions by; tax_exempt exempts the customer itself (Stripe: customer tax_exempt=exempt); the tax
-- id (a VAT number, an EIN, ...) goes on plg's invoice and to Stripe as a customer tax id of tax_id_type
-- (Stripe's type names, e.g. eu_vat); stripe_tax_id is the id of the tax id object plg created at Stripe,
-- so a changed number replaces that object and nothing a person added in Stripe's dashboard.
ALTER TABLE customers
    ADD COLUMN IF NOT EXISTS tax_exempt    boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS tax_id        text,
    ADD COLUMN IF NOT EXISTS tax_id_type   text,
    ADD COLUMN IF NOT EXISTS stripe_tax_id text;

DO $$
BEGIN
    -- NOT VALID: rows written by hand before this migration are not re-judged; every new write is.
    ALTER TABLE customers ADD CONSTRAINT customers_tax_region_iso
        CHECK (tax_region ~ '^[A-Z]{2}(-[A-Z0-9]{1,3})?$') NOT VALID;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

DO $$
BEGIN
    ALTER TABLE customers ADD CONSTRAINT customers_tax_id_shape
        CHECK ((tax_id IS NULL) = (tax_id_type IS NULL)
               AND (tax_id IS NULL OR length(tax_id) BETWEEN 1 AND 64)
               AND (tax_id_type IS NULL OR tax_id_type ~ '^[a-z]{2}_[a-z_]{2,12}$'));
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
