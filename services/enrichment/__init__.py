"""Enrichment (issue 8): tracking plan, identity resolution, PII scrubbing and tenant context for
usage-events → usage-events-enriched. See docs/enrichment.md."""
