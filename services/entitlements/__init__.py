"""The entitlement API: may customer X use feature Y now? Answered from a materialised view of usage.

Runs as its own process (``python -m services.entitlements``, port 8082) so request latency never queues
behind the aggregator's CPU-bound batches; any number of replicas, each holding the current-period usage
of every customer (read from ``usage-periods`` by the kernel's view reader). See docs/entitlements.md.
"""
