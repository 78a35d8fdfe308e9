"""Metering aggregator: exactly-once usage aggregation on Kafka transactions, and the entitlement API.

See docs/metering.md (the aggregator) and docs/entitlements.md (the API in ``entitlements/``).
"""
