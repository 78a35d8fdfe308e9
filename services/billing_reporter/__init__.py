"""The billing reporter: usage-aggregates → a PostgreSQL ledger → Stripe meter events, invoices, checkout
and subscriptions (HTTP :8083). See docs/billing.md."""
