"""Confluent-compatible schema registry backed by PostgreSQL (see docs/schema-registry.md)."""
