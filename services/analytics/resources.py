"""What the analytics service holds while it runs: the store, its sink loop and the activation config."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from services.activation import ActivationConfig, Threshold
from services.analytics.leads import PqlWatcher
from services.analytics.pql import PqlRules
from services.analytics.store import AnalyticsStore
from services.kernel.login import BrowserLogin
from services.kernel.privacy import ErasureFollower
from services.kernel.processing import AtLeastOnceLoop
from services.kernel.workers import Workers


@dataclass
class AnalyticsResources:
    store: AnalyticsStore
    activation: ActivationConfig
    default_days: int
    health_url: str = "/"
    loop: AtLeastOnceLoop | None = None
    workers: Workers | None = None
    erasures: ErasureFollower | None = None
    # PostgreSQL (the customers table and pql_leads) and the product-qualified-lead rules and watcher.
    connect: Callable[[], AbstractContextManager[Any]] | None = None
    pql_rules: PqlRules = field(default_factory=PqlRules)
    pql: PqlWatcher | None = None
    browser_login: BrowserLogin | None = None

    def north_star(self) -> Threshold | None:
        name = self.activation.north_star
        return next((t for t in self.activation.thresholds if t.name == name), None)

    def ready(self) -> bool:
        """Queries can run once the store is open; /readyz also wants the sink alive and caught up."""
        return (
            self.erasures is not None
            and self.erasures.healthy()
            and self.erasures.ready.is_set()
            and self.loop is not None
            and self.workers is not None
            and self.workers.alive("sink")
            and self.loop.ready()
        )
