"""What the billing reporter holds while it runs (:class:`BillingResources`, opened by the app's lifespan
off the event loop) and the dependency its routes receive it through (:data:`Resources`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, NoReturn

from fastapi import Depends
from psycopg_pool import ConnectionPool

from services.billing_reporter.config import BillingSettings
from services.billing_reporter.ledger import Ledger
from services.billing_reporter.stripe_gateway import StripeGateway
from services.kernel.http import HttpError, resources_dependency
from services.kernel.processing import AtLeastOnceLoop
from services.kernel.workers import Workers
from services.plans.model import PlansConfig

if TYPE_CHECKING:  # they import this module for their routes
    from services.billing_reporter.closing import PeriodCloser
    from services.billing_reporter.sender import OutboxSender
    from services.billing_reporter.subscriptions import SubscriptionStore


@dataclass
class BillingResources:
    """What the routes and workers use, opened by the app's lifespan (``app.state.resources``)."""

    settings: BillingSettings
    config: PlansConfig
    pool: ConnectionPool
    gateway: StripeGateway
    ledger: Ledger
    sync_catalog: Callable[[], None]
    subscriptions: SubscriptionStore
    closer: PeriodCloser
    sender: OutboxSender
    loop: AtLeastOnceLoop
    workers: Workers


resources = resources_dependency(BillingResources, "the billing reporter is starting or stopping")


Resources = Annotated[BillingResources, Depends(resources)]


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> NoReturn:
    """Refuse the request: the kernel's error discipline answers it in plg's shape, with the request id
    (``return error(...)`` reads as the answer it is)."""
    raise HttpError(status, code, message, headers)
