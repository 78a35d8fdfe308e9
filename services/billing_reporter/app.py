"""Composition root of the billing reporter: ``build_app(settings)`` returns the FastAPI app (HTTP :8083)
whose lifespan runs the two workers:

* the **ledger writer**: the kernel's at-least-once loop over ``usage-aggregates`` (read_committed) into
  :class:`~services.billing_reporter.sink.AggregateSink` (usage, offsets and reports in one transaction);
* the **outbox sender**: :class:`~services.billing_reporter.sender.OutboxSender`, reports to Stripe and
  then to ``billing-reports``.

Routes: ``GET /v1/invoices/{customer}/upcoming``, ``POST /v1/checkout/{customer}``,
``POST /v1/stripe/webhooks``, the public price list ``GET /v1/plans`` (``pricelist.py``), and the ops
endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

import stripe
from fastapi import FastAPI
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from services.billing_reporter import api, pricelist, subscriptions, topups
from services.billing_reporter.adjustments import Adjuster
from services.billing_reporter.catalog import CatalogError, package_meters, sync_catalog
from services.billing_reporter.closing import FinalInvoice, PeriodCloser
from services.billing_reporter.config import BillingSettings
from services.billing_reporter.ledger import Ledger, ReportRow
from services.billing_reporter.meters import sync_meters
from services.billing_reporter.publish import InvoicePublisher, ReportPublisher
from services.billing_reporter.resources import BillingResources
from services.billing_reporter.sender import OutboxSender, SenderOptions
from services.billing_reporter.sink import AggregateSink
from services.billing_reporter.stripe_gateway import StripeGateway
from services.kernel import auth, db
from services.kernel.cors import CorsMiddleware, any_origin
from services.kernel.http import install_error_handlers
from services.kernel.kafka import Producer
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.kernel.processing import AtLeastOnceLoop, at_least_once
from services.kernel.serde import SchemaRegistry
from services.kernel.service import LoadedFiles
from services.kernel.topics import USAGE_AGGREGATES
from services.kernel.workers import Workers
from services.plans.loader import plans_file
from services.plans.model import Aggregation, PlansConfig

log = logging.getLogger(__name__)

SERVICE = "billing-reporter"
PLANS_FILE = plans_file()  # the one file it reads (__main__ declares it)
WINDOW_SECONDS = {"MINUTE": 60.0, "HOUR": 3600.0, "DAY": 86_400.0}
_JSON = "application/json"


def reportable_meters(config: PlansConfig) -> dict[str, str]:
    """plg meter → Stripe event name, for every meter (the event name is the meter's slug), and every
    derived package meter (catalog.package_meters)."""
    return {m.slug: m.slug for m in config.meters} | {d: d for d in package_meters(config)}


def level_meters(config: PlansConfig) -> set[str]:
    """Meters whose windows do not add up (MAX, LATEST, UNIQUE_COUNT): reported as the period-to-date level
    to a Stripe ``last`` meter; SUM and COUNT meters send per-window differences to a ``sum`` meter. A
    derived package meter is a level too (the packages the period has started so far)."""
    levels = {m.slug for m in config.meters if m.aggregation not in (Aggregation.SUM, Aggregation.COUNT)}
    return levels | set(package_meters(config))


def _sync_catalog(
    gateway: StripeGateway,
    pool: ConnectionPool,
    config: PlansConfig,
    event_names: dict[str, str],
    levels: set[str],
) -> None:
    """Create missing Stripe meters, products and prices at start; Stripe being away must not keep the
    ledger from filling (the sender retries what it cannot deliver, checkout syncs again when it needs
    prices, and `plg billing sync-catalog` does the same by hand)."""
    try:
        with pool.connection() as conn:
            synced = sync_catalog(gateway, conn, config, event_names, levels)
        log.info("Stripe catalog", extra={"prices": {s.lookup_key: s.action for s in synced}})
    except CatalogError as exc:
        log.warning("the price book has prices Stripe cannot hold: %s", exc)
        with pool.connection() as conn:
            sync_meters(gateway, conn, event_names, levels)
    except stripe.StripeError as exc:
        log.warning("could not sync the Stripe catalog at start: %s", exc.user_message or type(exc).__name__)


def open_resources(
    settings: BillingSettings, life: Lifecycle, config: PlansConfig, app: FastAPI, readiness: dict[str, Any]
) -> BillingResources:
    """Everything the service runs, opened on a worker thread (never the event loop), each piece on
    ``life`` as it opens (a failure closes the rest, newest first); the workers started."""
    prefix = settings.platform.topic_prefix
    event_names = reportable_meters(config)
    levels = level_meters(config)
    if settings.migrate:
        db.migrate(settings.database.url.get_secret_value())
    registry = life.push(SchemaRegistry(settings.registry), "schema registry")
    pool = life.push(db.open_pool(settings.database, name=SERVICE), "database pool")
    auth.install(app, auth.open_authenticator(pool, settings.auth))
    gateway = StripeGateway(
        settings.stripe.api_base, settings.stripe.api_key, timeout=settings.stripe.timeout_seconds
    )
    ledger = Ledger(
        pool,
        consumer_group=f"{prefix}{settings.group_id}",
        report_granularity=settings.report_granularity,
        reportable_meters=event_names,
        level_meters=levels,
        package_meters=package_meters(config),
        level_interval=(
            WINDOW_SECONDS[settings.report_granularity]
            if settings.level_interval_seconds is None
            else settings.level_interval_seconds
        ),
        settle_ms=int(settings.settle_seconds * 1000),
        correction_interval=settings.correction_interval_seconds,
    )
    sync = partial(_sync_catalog, gateway, pool, config, event_names, levels)
    sync()
    loop: AtLeastOnceLoop = at_least_once(
        service=SERVICE,
        kafka=settings.kafka,
        registry=registry,
        lifecycle=life,
        handler=AggregateSink(ledger, settings.plan_interval_seconds),
        inputs=[USAGE_AGGREGATES],
        group_id=settings.group_id,
        instance_id=settings.instance_id,
        topic_prefix=prefix,
        consumer_config={"session.timeout.ms": settings.session_timeout_ms},
        tombstones=True,
    )
    workers = Workers(readiness)  # each thread it starts gets its /readyz check
    publisher: Callable[[list[ReportRow]], None] | None = None
    invoice_publisher: Callable[[list[FinalInvoice]], None] | None = None
    if settings.send:
        producer = life.push(
            Producer(settings.kafka, client_id=f"{SERVICE}-{settings.instance_id}"), "producer"
        )
        publisher = ReportPublisher(producer, registry, prefix, config).publish
        invoice_publisher = InvoicePublisher(producer, registry, prefix).publish
    sender = OutboxSender(
        ledger,
        gateway,
        event_names,
        SenderOptions(
            level_meters=frozenset(levels),
            requests_per_second=settings.requests_per_second,
            batch_size=settings.send_batch,
            lease_seconds=settings.lease_seconds,
            backoff_base=settings.backoff_base_seconds,
            backoff_cap=settings.backoff_cap_seconds,
            failure_threshold=settings.breaker_failures,
            breaker_cooldown=settings.breaker_cooldown_seconds,
        ),
        publish=publisher,
    )
    # Pushed last: stopped (and joined) first, before the clients they use are closed.
    life.push(workers, "workers")
    subs = subscriptions.SubscriptionStore(
        pool, config, timedelta(seconds=settings.past_due_grace_seconds), settings.free_plan,
        on_subscribed=ledger.mark_customer_dirty,
    )  # fmt: skip
    closer = PeriodCloser(
        pool,
        config,
        ledger=ledger.ledger,
        report_granularity=settings.report_granularity,
        grace_ms=int(settings.close_grace_seconds * 1000),
        publish=invoice_publisher,
        adjuster=Adjuster(
            pool,
            config,
            ledger=ledger.ledger,
            grace_ms=int(settings.close_grace_seconds * 1000),
            gateway=gateway if settings.send else None,
        ),
        mirrors=[topups.GrantMirror(pool, config, gateway).send_pending] if settings.send else [],
    )
    workers.start("ledger-writer", loop.run, ready=loop.ready)
    workers.start("period-closer", partial(closer.run, settings.close_check_seconds))
    if settings.send:
        workers.start("outbox-sender", sender.run)
    workers.start("grace-keeper", partial(subscriptions.keep_grace, subs, settings.grace_check_seconds))
    log.info(
        "billing reporter starting",
        extra={
            "granularity": settings.report_granularity,
            "meters": sorted(event_names),
            "stripe": settings.stripe.api_base,
        },
    )
    return BillingResources(
        settings, config, pool, gateway, ledger, sync, subs, closer, sender, loop, workers
    )


def build_app(
    settings: BillingSettings, lifecycle: Lifecycle | None = None, files: LoadedFiles | None = None
) -> FastAPI:
    config: PlansConfig = PLANS_FILE.of(settings, files)  # as run_service loaded it, not read again
    life = lifecycle or Lifecycle(SERVICE)

    @asynccontextmanager
    async def lifespan(fastapi_app: FastAPI) -> AsyncIterator[None]:
        try:
            res = await run_in_threadpool(open_resources, settings, life, config, fastapi_app, readiness)
            fastapi_app.state.resources = res
            yield
        finally:
            fastapi_app.state.resources = None
            auth.install(fastapi_app, None)
            # Joining the workers takes up to 30 s each: off the event loop, which still serves meanwhile.
            await run_in_threadpool(life.close)

    app = FastAPI(title="plg billing reporter", version="1", lifespan=lifespan)
    # ledger_writer, period_closer, outbox_sender, grace_keeper: registered by Workers as it starts them.
    readiness: dict[str, Callable[[], bool]] = {}
    ops_routes(app, readiness=readiness)

    app.include_router(api.router)  # the invoice routes (api.py)
    app.include_router(subscriptions.router)  # checkout and Stripe webhooks
    app.include_router(topups.router)  # top-up checkout
    price_list_policy = auth.public("the price list a pricing page shows to anyone (no tenant data)")
    app.include_router(pricelist.router(config, price_list_policy))
    # The price list is read by pricing pages in browsers on any origin: it carries no credential and no
    # tenant data, so every origin may read it (and its ETag).
    app.add_middleware(CorsMiddleware, prefixes=("/v1/plans",), methods=("GET",), origin_allowed=any_origin)
    # Last, so it wraps everything: no user error becomes a 500, and a 500 carries its request id.
    install_error_handlers(app, service=SERVICE)
    return app
