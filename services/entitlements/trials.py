"""Trial features per customer (``feature_trials``, services/plans/trials.py), as the entitlement API
needs them: cached per customer until a grant touches the customer's row, as for credit grants
(:class:`~services.entitlements.customer_cache.CustomerCache`); expiry is judged at each check."""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from services.entitlements.customer_cache import CustomerCache
from services.plans import trials
from services.plans.trials import Trial


class TrialCache(CustomerCache[list[Trial]]):
    def __init__(
        self, pool: ConnectionPool, max_age_seconds: float = 30.0, max_entries: int = 100_000
    ) -> None:
        super().__init__(pool, trials.active, max_age_seconds, name="trials", max_entries=max_entries)
