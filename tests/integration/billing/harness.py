"""Helpers for the billing tests: the metering world plus a Stripe double, the billing reporter run
in-process under uvicorn, aggregates produced straight onto usage-aggregates, the ledger read back."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from services.billing_reporter.adjustments import Adjuster
from services.billing_reporter.app import build_app
from services.billing_reporter.catalog import version_prices
from services.billing_reporter.closing import PeriodCloser
from services.billing_reporter.config import BillingSettings, StripeSettings
from services.billing_reporter.stripe_gateway import StripeGateway
from services.cli.__main__ import main as plg
from services.devstack.config import free_port
from services.ingest import store
from services.kernel.settings import PlatformSettings
from services.kernel.topics import BILLING_REPORTS, USAGE_AGGREGATES, topic
from services.plans.invoice import Invoice
from services.plans.loader import load_config
from services.plans.model import PlansConfig
from services.plans.periods import Period
from tests.auth_support import operator_token
from tests.integration.metering.harness import Metering, RunningApi, now_ms, serve, wait_for
from tests.stripe_double import StripeDouble

WEBHOOK_SECRET = "whsec_test_billing"
MINUTE = 60_000
HOUR = 3_600_000


@dataclass
class Billing:
    metering: Metering
    double: StripeDouble
    reporters: list[RunningApi] = field(default_factory=list)

    def __post_init__(self) -> None:
        spec = topic(USAGE_AGGREGATES, self.metering.prefix)
        assert spec.schema_path is not None
        self.aggregate_encoder = self.metering.sr.encoder(
            spec.value_subject, spec.schema_path, auto_register=False
        )

    @property
    def db_url(self) -> str:
        return self.metering.database.url.get_secret_value()

    def customer(
        self, plan: str = "pro", *, stripe: bool = True, anchor_day: int = 1, subscribed: bool = False
    ) -> str:
        """A new plg customer; ``stripe``: linked to a Stripe customer id; ``subscribed``: with a Stripe
        subscription too (only then is its usage reported: ledger._BILLED_CUSTOMER)."""
        customer_id = f"c-{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            store.create_customer(
                conn, customer_id, plan, billing_anchor_day=anchor_day,
                stripe_customer_id=f"cus_{customer_id}" if stripe else None,
            )  # fmt: skip
            if subscribed:
                assert stripe, "a subscription needs a Stripe customer"
                conn.execute(
                    "INSERT INTO subscriptions (customer_id, plan, status, stripe_customer_id,"
                    " stripe_subscription_id) VALUES (%s, %s, 'active', %s, %s)",
                    (customer_id, plan, f"cus_{customer_id}", f"sub_{customer_id}"),
                )
        return customer_id

    def subscribe(
        self, customer_id: str, plan: str, version: str, period: Period, billing_mode: str = "classic"
    ) -> tuple[str, str]:
        """A Stripe customer and a subscription to ``version``'s synced prices, made at the emulator
        directly (what checkout and its webhook do, tested elsewhere) and linked in plg, with Stripe's
        periods set to plg's from ``period`` on (``flexible``: an annual base with monthly usage).
        Returns (Stripe customer id, subscription id)."""
        key = {"authorization": "Bearer sk_test_harness"}
        status, customer, _, _ = self.double.handle(
            "POST", "/v1/customers", {}, {"metadata": {"plg_customer_id": customer_id}}, key
        )
        assert status == 200, customer
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            prices = version_prices(conn, version, self.stripe_account())
            status, sub, _, _ = self.double.handle(
                "POST", "/v1/subscriptions", {},
                {"customer": customer["id"], "items": [{"price": p} for p in prices.values()],
                 "billing_mode": {"type": billing_mode}}, key,
            )  # fmt: skip
            assert status == 200, sub
            conn.execute(
                "UPDATE customers SET stripe_customer_id = %s WHERE customer_id = %s",
                (customer["id"], customer_id),
            )
            conn.execute(
                "INSERT INTO subscriptions (customer_id, plan, status, stripe_customer_id,"
                " stripe_subscription_id) VALUES (%s, %s, 'active', %s, %s)",
                (customer_id, plan, customer["id"], sub["id"]),
            )
        state = self.double.billing.subscriptions[sub["id"]]
        state.update(billing_cycle_anchor=period.start_ms // 1000, _cycle=1)
        state["_period"] = (period.start_ms // 1000, period.end_ms // 1000)
        self.double.billing._sync_periods(state)
        return str(customer["id"]), str(sub["id"])

    def stripe_account(self) -> str:
        """The account (and mode) plg keys its Stripe ids by for this world's Stripe double."""
        return StripeGateway(self.double.url, SecretStr("sk_test_harness")).account()

    def subscriber(
        self, plan: str, version: str, period: Period, billing_mode: str = "classic"
    ) -> tuple[str, str, str]:
        """A new customer of ``plan`` subscribed at Stripe (:meth:`subscribe`): (plg id, Stripe customer
        id, subscription id)."""
        customer_id = self.customer(plan, stripe=False)
        return (customer_id, *self.subscribe(customer_id, plan, version, period, billing_mode))

    def period_usage(
        self, customer_id: str, value: int | Decimal, period: Period, *, meter: str = "api_requests",
        aggregation: str = "COUNT", count: int | None = None,
    ) -> int:  # fmt: skip
        """The customer's usage so far in ``period`` as the aggregator writes it — a closed minute window
        and the period's total — waited for until the period total is in the ledger (its own aggregate,
        which the ledger may take in a later batch than the window's) and the meter's report is delivered
        at Stripe (a sum meter's window; a level meter's period level). Returns the window's start."""
        window = now_ms() - now_ms() % MINUTE - 3 * MINUTE
        self.aggregate(
            customer_id, value, window_start=window, meter=meter, aggregation=aggregation, count=count
        )
        self.aggregate(
            customer_id, value, window_start=period.start_ms, meter=meter, granularity="BILLING_PERIOD",
            width=period.end_ms - period.start_ms, aggregation=aggregation, count=count,
        )  # fmt: skip
        wait_for(
            lambda: self.period_total(customer_id, meter) == Decimal(value),
            60,
            what="the period total in the ledger",
        )

        def delivered() -> bool:
            rows = self.ledger(customer_id)
            return any(r[0] == meter for r in rows) and all(r[5] == "delivered" for r in rows)

        wait_for(delivered, 60, what=f"{meter} at Stripe")  # a window, or a level meter's period level
        return window

    def aggregate(
        self, customer_id: str, value: int | Decimal, *, window_start: int, meter: str = "api_requests",
        granularity: str = "MINUTE", width: int = MINUTE, count: int | None = None,
        group: dict[str, str] | None = None, aggregation: str = "COUNT",
    ) -> None:  # fmt: skip
        record = {
            "customer_id": customer_id,
            "meter": meter,
            "aggregation": aggregation,
            "group": group or {},
            "granularity": granularity,
            "window_start": window_start,
            "window_end": window_start + width,
            "value": Decimal(value),
            "event_count": int(value) if count is None else count,
            "updated_at": now_ms(),
        }
        key = f"{customer_id}|{meter}|{granularity}|{window_start}|"
        self.metering.producer.produce(
            self.metering.topic(USAGE_AGGREGATES), self.aggregate_encoder.encode(record), key
        )
        assert self.metering.producer.flush(30) == 0

    def settings(self, **overrides: Any) -> BillingSettings:
        stripe_overrides = overrides.pop("stripe", {})
        values: dict[str, Any] = {
            "port": free_port(),
            "kafka": self.metering.kafka,
            "registry": self.metering.registry,
            "database": self.metering.database,
            "platform": PlatformSettings(topic_prefix=self.metering.prefix, log_format="text"),
            "report_granularity": "MINUTE",
            "settle_seconds": 0.0,
            "correction_interval_seconds": 0.0,
            "level_interval_seconds": 0.0,
            "plan_interval_seconds": 0.2,
            "requests_per_second": 200.0,
            "backoff_base_seconds": 0.05,
            "backoff_cap_seconds": 1.0,
            "breaker_cooldown_seconds": 0.2,
            "stripe": StripeSettings(
                **{
                    "api_base": self.double.url,
                    "api_key": SecretStr("sk_test_billing"),
                    "webhook_secret": SecretStr(WEBHOOK_SECRET),
                    "timeout_seconds": 1.0,
                    **stripe_overrides,
                }
            ),
        }
        values.update(overrides)
        return BillingSettings(**values)

    def start_reporter(self, **overrides: Any) -> RunningApi:
        settings = self.settings(**overrides)
        api = serve(build_app(settings), settings.port, "billing-reporter", operator_token(self.db_url))
        self.reporters.append(api)
        return api

    def start_reporter_with_webhooks(self, **overrides: Any) -> RunningApi:
        """A reporter that the emulator's webhooks reach, signed with ``WEBHOOK_SECRET`` as Stripe's are."""
        reporter = self.start_reporter(**overrides)
        self.double.webhooks.url = f"{reporter.url}/v1/stripe/webhooks"
        self.double.webhooks.secret = WEBHOOK_SECRET
        self.double.webhooks.start()
        return reporter

    def complete_checkout(
        self, reporter: RunningApi, customer_id: str, plan: str, key: dict[str, str]
    ) -> dict[str, Any]:
        """plg's checkout route for ``plan``, then the customer paying on the emulator's page (``key``: the
        emulator's API key header): the completed Checkout Session."""
        with reporter.client() as rep:
            answer = rep.post(f"/v1/checkout/{customer_id}", json={"plan": plan})
        assert answer.status_code == 200, answer.text
        session = self.double.billing.sessions[answer.json()["session_id"]]
        status, done, _, _ = self.double.handle(
            "POST", f"/_emulator/checkout/sessions/{session['id']}/complete", {}, {}, key
        )
        assert status == 200, done
        return done

    def cli_env(self, monkeypatch: pytest.MonkeyPatch, **more: str) -> None:
        """The environment ``plg billing ...`` runs with against this world (its database, topics and
        Stripe) and the harness reporter's timing, so reconciliation knows what is due at Stripe."""
        m = self.metering
        for name, value in {
            "DATABASE_URL": self.db_url, "KAFKA_BOOTSTRAP_SERVERS": m.kafka.bootstrap_servers,
            "SCHEMA_REGISTRY_URL": m.registry.url, "PLG_TOPIC_PREFIX": m.prefix,
            "STRIPE_API_BASE": self.double.url, "STRIPE_API_KEY": "sk_test_reconcile",
            "BILLING_REPORT_GRANULARITY": "MINUTE", "BILLING_SETTLE_SECONDS": "0",
            "BILLING_CORRECTION_INTERVAL_SECONDS": "0", "BILLING_LEVEL_INTERVAL_SECONDS": "0",
            "BILLING_PLAN_INTERVAL_SECONDS": "0.2", **more,
        }.items():  # fmt: skip
            monkeypatch.setenv(name, value)

    def reconcile(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
    ) -> tuple[int, list[dict[str, Any]]]:
        """``plg --json billing reconcile ARGS`` here: its exit code and rows."""
        self.cli_env(monkeypatch)
        capsys.readouterr()
        code = plg(["--json", "billing", "reconcile", *args])
        return code, list(json.loads(capsys.readouterr().out))

    def closer(self, pool: ConnectionPool, config: PlansConfig | None = None) -> PeriodCloser:
        """The reporter's period closer and adjuster over this world's ledger, for a test that closes
        periods on its own clock (the close grace: 2 h)."""
        ledger = f"{self.metering.prefix}billing-reporter"
        config = config or load_config()
        gateway = StripeGateway(self.double.url, self.settings().stripe.api_key)
        return PeriodCloser(
            pool, config, ledger=ledger, report_granularity="MINUTE", grace_ms=2 * HOUR,
            adjuster=Adjuster(pool, config, ledger=ledger, grace_ms=2 * HOUR, gateway=gateway),
        )  # fmt: skip

    def close_periods(
        self, at_ms: int, customers: set[str], config: PlansConfig | None = None
    ) -> dict[str, Invoice]:
        """plg's final invoices of ``customers`` at ``at_ms`` (:meth:`closer`'s round, repeated until each
        customer's ledger is complete and its invoice written; closing is idempotent)."""
        closed: dict[str, Invoice] = {}
        pool = ConnectionPool(self.db_url, min_size=1, max_size=2, open=True)
        try:
            closer = self.closer(pool, config)

            def close() -> bool:
                closed.update({i.customer_id: i for i in closer.close_due(at_ms)})
                return customers <= set(closed)

            wait_for(close, 60, interval=1.0, what="plg's final invoices")
        finally:
            pool.close()
        return closed

    def stop_reporters(self) -> None:
        for api in reversed(self.reporters):
            api.close()
        self.reporters.clear()

    # -- reading back ---------------------------------------------------------------------------------------
    def ledger(self, customer_id: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url) as conn:
            return conn.execute(
                "SELECT meter, window_start, revision, quantity, window_total, status, identifier"
                " FROM billing_reports WHERE customer_id = %s ORDER BY window_start, revision",
                (customer_id,),
            ).fetchall()

    def period_total(self, customer_id: str, meter: str = "api_requests") -> Decimal | None:
        """The ledger's total of the customer's meter for a billing period (the latest one it holds)."""
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute(
                "SELECT value FROM billing_usage WHERE customer_id = %s AND meter = %s"
                " AND granularity = 'BILLING_PERIOD' ORDER BY window_start DESC LIMIT 1",
                (customer_id, meter),
            ).fetchone()
        return None if row is None else Decimal(row[0])

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """A query's rows on this world's database (what the reporter wrote, read back)."""
        with psycopg.connect(self.db_url) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def adjustments(self, customer_id: str) -> list[tuple[Any, ...]]:
        """The customer's adjustments of closed periods, in order (migration 0092)."""
        return self.rows(
            "SELECT seq, usage_before, usage_after, amount, stripe_status, stripe_kind, stripe_id"
            " FROM billing_adjustments WHERE customer_id = %s ORDER BY seq",
            customer_id,
        )

    def credit_grants(self, customer_id: str) -> list[tuple[Any, ...]]:
        """The customer's top-up grants as mirrored at Stripe (migration 0093)."""
        return self.rows(
            "SELECT stripe_status, stripe_credit_grant_id, stripe_value, stripe_error"
            " FROM billing_credit_grants WHERE customer_id = %s",
            customer_id,
        )

    def published(self) -> list[dict[str, Any]]:
        return [
            self.metering.decoder.decode(v)
            for _, v in self.metering.read_all(BILLING_REPORTS)
            if v is not None
        ]

    def stripe_total(self, customer_id: str, meter: str = "api_requests") -> int:
        return self.double.summed(f"cus_{customer_id}", meter)

    def close(self) -> None:
        self.stop_reporters()


def signed(
    event: dict[str, Any], secret: str = WEBHOOK_SECRET, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A webhook body and its ``Stripe-Signature`` header, signed the way Stripe signs (v1: HMAC-SHA256
    of ``"<t>.<body>"``)."""
    body = json.dumps(event).encode()
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


def stripe_event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"evt_{uuid.uuid4().hex[:16]}", "object": "event", "type": kind, "data": {"object": obj}}


def stripe_invoice(double: StripeDouble, customer: str, period_end_ms: int) -> dict[str, Any] | None:
    """Stripe's invoice of the period ending at ``period_end_ms`` (None until the emulator wrote it)."""
    return next(
        (
            i
            for i in list(double.billing.invoices.values())
            if i["customer"] == customer and i["period_end"] == period_end_ms // 1000
        ),
        None,
    )
