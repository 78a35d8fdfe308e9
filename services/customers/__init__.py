"""Customers (tenants): the one model of a ``customers`` row and the cached directory services read it
through. Shared by the CLI and ingest (which write and look up rows), the metering aggregator and the
entitlement API (which need each customer's plan and billing anchor)."""

from services.customers.directory import CustomerDirectory
from services.customers.model import COLUMNS, Customer

__all__ = ["COLUMNS", "Customer", "CustomerDirectory"]
