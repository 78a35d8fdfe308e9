"""Customers (tenants): the owner of the ``customers`` table (``store``: every write of it; ``suspension``:
the abuse guard's columns), the one model of a row, and the cached directory services read it through.
Shared by the CLI, billing and enrichment (which write through ``store``), ingest, the metering aggregator
and the entitlement API (which need each customer's plan and billing anchor)."""

from services.customers.directory import CustomerDirectory
from services.customers.model import COLUMNS, Customer

__all__ = ["COLUMNS", "Customer", "CustomerDirectory"]
