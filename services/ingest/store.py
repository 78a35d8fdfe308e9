"""Where the ``plg`` CLI's tenant functions used to live, kept as names for the callers (tests, scripts)
that import them from here. The ``customers`` table belongs to ``services/customers/store.py`` and the
``api_keys`` and ``operators`` tables to ``services/kernel/apikeys.py``; nothing here writes SQL.
"""

from __future__ import annotations

from services.customers.store import create_customer, get_customer, list_customers
from services.kernel.apikeys import (
    ApiKey,
    StoreError,
    create_key,
    list_keys,
    lookup_key,
    revoke_key,
)

__all__ = [
    "ApiKey",
    "StoreError",
    "create_customer",
    "create_key",
    "get_customer",
    "list_customers",
    "list_keys",
    "lookup_key",
    "revoke_key",
]
