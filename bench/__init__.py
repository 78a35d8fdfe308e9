"""Benchmarks run by `make bench` (one module per bench-* target)."""
