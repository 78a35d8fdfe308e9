"""The one place billing talks to Stripe, through Stripe's own SDK (``stripe`` 16.1.0).

Every call turns Stripe's answer into an :class:`Outcome` the sender can act on without knowing the SDK:
delivered, already there (a repeated identifier is Stripe's proof the first copy landed), retry (429,
5xx, timeouts, connection errors; with ``Retry-After`` when given) or rejected (a request Stripe will
never accept, e.g. a timestamp older than 35 days). The SDK's own retries are off: its keys are new on
every call, ours are deterministic, and it does not retry 429s; the sender retries with our key.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

import stripe
from pydantic import SecretStr

log = logging.getLogger(__name__)
# The SDK logs every request and response at INFO: a line per meter event is noise at our volume.
logging.getLogger("stripe").setLevel(logging.WARNING)

OutcomeKind = Literal["delivered", "duplicate", "retry", "rejected"]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    detail: str = ""
    retry_after: float | None = None  # seconds, from Stripe's Retry-After
    # A failure of Stripe (5xx, timeout, connection) rather than of the request or its rate: what the
    # circuit breaker counts.
    stripe_failing: bool = False

    @property
    def done(self) -> bool:
        return self.kind in ("delivered", "duplicate")


def _retry_after(exc: stripe.StripeError) -> float | None:
    headers = exc.headers or {}
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def classify(exc: stripe.StripeError) -> Outcome:
    """What a failed call means for the report it carried."""
    status = exc.http_status
    message = (exc.user_message or str(exc))[:500]
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return Outcome("retry", f"429: {message}", _retry_after(exc))
    if isinstance(exc, stripe.APIConnectionError):
        return Outcome("retry", f"connection: {message}", None, stripe_failing=True)
    if isinstance(exc, stripe.IdempotencyError):
        if status == 409:  # our key's first request is still running at Stripe: ask again later
            return Outcome("retry", f"409: {message}", _retry_after(exc))
        return Outcome("rejected", f"idempotency: {message}")
    if status is not None and status >= 500:
        return Outcome("retry", f"{status}: {message}", _retry_after(exc), stripe_failing=True)
    if status == 409:
        return Outcome("retry", f"409: {message}", _retry_after(exc))
    if status in (401, 403):
        # Our key, not the report: keep it pending (and let the breaker stop hammering Stripe).
        return Outcome("retry", f"{status}: {message}", None, stripe_failing=True)
    if status == 400 and "already exists with identifier" in message:
        return Outcome("duplicate", message)
    return Outcome("rejected", f"{status}: {message}")


class StripeGateway:
    """Stripe's API at ``api_base`` with ``api_key`` (never logged), each call bounded by ``timeout``."""

    def __init__(self, api_base: str, api_key: SecretStr, *, timeout: float = 10.0) -> None:
        self.api_base = api_base.rstrip("/")
        self._api_key = api_key
        self._account: str | None = None
        self._account_lock = threading.Lock()
        self._client = stripe.StripeClient(
            api_key.get_secret_value(),
            base_addresses={"api": self.api_base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout),
        )

    # -- the account ------------------------------------------------------------------------------------
    def account(self) -> str:
        """Which Stripe account (and mode) this key acts for: what plg's caches of Stripe ids (meters,
        prices) are keyed by, so switching keys — test to live, or another Stripe (double) against the
        same database — never sends an id the other account does not have. ``acct_...:test`` /
        ``acct_...:live`` from ``GET /v1/account`` (test and live mode of one account share its id but not
        its objects, so the key's mode is part of it); a key that may not read its account (a restricted
        key: 403, or a Stripe without the route: 404) is told apart by a fingerprint of the key instead
        (``key_`` + 24 hex of SHA-256: the key itself never leaves this object). Asked once per gateway;
        a connection failure raises (``stripe.StripeError``), as any call would."""
        with self._account_lock:
            if self._account is None:
                self._account = self._resolve_account()
                log.info("Stripe account", extra={"stripe_account": self._account})
            return self._account

    def _resolve_account(self) -> str:
        secret = self._api_key.get_secret_value()
        mode = "live" if "_live_" in secret else "test"
        try:
            found = self._client.v1.accounts.retrieve_current()
        except (stripe.PermissionError, stripe.InvalidRequestError) as exc:
            if exc.http_status not in (403, 404):
                raise
            return "key_" + hashlib.sha256(f"{self.api_base}\x1f{secret}".encode()).hexdigest()[:24]
        return f"{found['id']}:{mode}"

    # -- meter events ---------------------------------------------------------------------------------
    def send_meter_event(
        self, *, event_name: str, stripe_customer_id: str, value: int, timestamp: int, identifier: str
    ) -> Outcome:
        """One meter event, keyed by ``identifier`` both as Stripe's dedup identifier and as the
        Idempotency-Key, so a retry after a timeout is either replayed or refused as a duplicate."""
        try:
            self._client.v1.billing.meter_events.create(
                {
                    "event_name": event_name,
                    "payload": {"stripe_customer_id": stripe_customer_id, "value": str(value)},
                    "timestamp": timestamp,
                    "identifier": identifier,
                },
                {"idempotency_key": identifier},
            )
        except stripe.StripeError as exc:
            return classify(exc)
        return Outcome("delivered")

    # -- meters ---------------------------------------------------------------------------------------
    def list_meters(self) -> list[dict[str, Any]]:
        meters = self._client.v1.billing.meters.list({"limit": 100})
        return [m.to_dict() for m in meters.auto_paging_iter()]

    def create_meter(
        self, *, display_name: str, event_name: str, formula: str, idempotency_key: str
    ) -> dict[str, Any]:
        meter = self._client.v1.billing.meters.create(
            {
                "display_name": display_name,
                "event_name": event_name,
                "default_aggregation": {"formula": formula},
                "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                "value_settings": {"event_payload_key": "value"},
            },
            {"idempotency_key": idempotency_key},
        )
        return meter.to_dict()

    def meter_event_total(self, stripe_meter_id: str, stripe_customer_id: str, start: int, end: int) -> int:
        """Stripe's summed value of a meter for a customer over ``[start, end)`` (epoch seconds)."""
        summaries = self._client.v1.billing.meters.event_summaries.list(
            stripe_meter_id, {"customer": stripe_customer_id, "start_time": start, "end_time": end}
        )
        return int(sum(s.aggregated_value for s in summaries.auto_paging_iter()))

    # -- customers and checkout -----------------------------------------------------------------------
    def create_customer(self, *, customer_id: str, name: str | None, idempotency_key: str) -> str:
        params: dict[str, Any] = {"metadata": {"plg_customer_id": customer_id}}
        if name:
            params["name"] = name
        customer = self._client.v1.customers.create(params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        return str(customer.id)

    def update_customer(
        self, stripe_customer_id: str, params: dict[str, Any], *, idempotency_key: str
    ) -> dict[str, Any]:
        customer = self._client.v1.customers.update(
            stripe_customer_id,
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )
        return customer.to_dict()

    def list_tax_ids(self, stripe_customer_id: str) -> list[dict[str, Any]]:
        found = self._client.v1.customers.tax_ids.list(stripe_customer_id, {"limit": 100})
        return [t.to_dict() for t in found.auto_paging_iter()]

    def create_tax_id(
        self, stripe_customer_id: str, *, kind: str, value: str, idempotency_key: str
    ) -> dict[str, Any]:
        tax_id = self._client.v1.customers.tax_ids.create(
            stripe_customer_id,
            {"type": kind, "value": value},
            {"idempotency_key": idempotency_key},
        )
        return tax_id.to_dict()

    def delete_tax_id(self, stripe_customer_id: str, tax_id: str) -> None:
        self._client.v1.customers.tax_ids.delete(stripe_customer_id, tax_id)

    def create_checkout_session(self, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        session = self._client.v1.checkout.sessions.create(params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        return session.to_dict()

    # -- catalog --------------------------------------------------------------------------------------
    def ensure_product(self, product_id: str, *, name: str, metadata: dict[str, str]) -> str:
        """The product with our id, created if missing (ids are ours: no lookup needed)."""
        try:
            return str(self._client.v1.products.retrieve(product_id).id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status != 404:
                raise
        product = self._client.v1.products.create(
            {"id": product_id, "name": name, "metadata": metadata},
            {"idempotency_key": f"plg_product_{product_id}"},
        )
        return str(product.id)

    def prices_by_lookup_key(self, keys: list[str]) -> dict[str, str]:
        """lookup key → price id of the active prices carrying one of ``keys`` (Stripe takes 10 a call)."""
        out: dict[str, str] = {}
        for i in range(0, len(keys), 10):
            found = self._client.v1.prices.list(
                {"lookup_keys": keys[i : i + 10], "active": True, "limit": 100}
            )
            out.update({str(p.lookup_key): str(p.id) for p in found.data if p.lookup_key})
        return out

    def create_price(self, params: dict[str, Any], *, idempotency_key: str) -> str:
        price = self._client.v1.prices.create(params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        return str(price.id)

    # -- subscriptions and invoices -------------------------------------------------------------------
    def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        return self._client.v1.subscriptions.retrieve(subscription_id).to_dict()

    def update_subscription(
        self, subscription_id: str, params: dict[str, Any], *, idempotency_key: str
    ) -> dict[str, Any]:
        sub = self._client.v1.subscriptions.update(
            subscription_id,
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )
        return sub.to_dict()

    def migrate_subscription(self, subscription_id: str, *, idempotency_key: str) -> dict[str, Any]:
        """Move a subscription to flexible billing mode (items on different intervals need it)."""
        sub = self._client.v1.subscriptions.migrate(
            subscription_id,
            {"billing_mode": {"type": "flexible"}},
            {"idempotency_key": idempotency_key},
        )
        return sub.to_dict()

    def preview_invoice(self, stripe_customer_id: str, subscription_id: str) -> dict[str, Any]:
        """Stripe's invoice for the subscription's running period (usage so far)."""
        invoice = self._client.v1.invoices.create_preview(
            {"customer": stripe_customer_id, "subscription": subscription_id}
        )
        return invoice.to_dict()

    def list_invoices(
        self, stripe_customer_id: str, subscription_id: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"customer": stripe_customer_id, "limit": 100}
        if subscription_id:
            params["subscription"] = subscription_id
        return [i.to_dict() for i in self._client.v1.invoices.list(params).auto_paging_iter()]  # type: ignore[arg-type]

    def create_invoice_item(self, params: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        item = self._client.v1.invoice_items.create(params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        return item.to_dict()

    def retrieve_invoice_item(self, item_id: str) -> dict[str, Any]:
        return self._client.v1.invoice_items.retrieve(item_id).to_dict()

    def create_credit_note(self, params: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        note = self._client.v1.credit_notes.create(params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        return note.to_dict()

    def list_credit_notes(self, invoice_id: str) -> list[dict[str, Any]]:
        """The credit notes of one invoice (what it has left to credit is its total less theirs)."""
        notes = self._client.v1.credit_notes.list({"invoice": invoice_id, "limit": 100})
        return [n.to_dict() for n in notes.auto_paging_iter()]

    def retrieve_credit_note(self, note_id: str) -> dict[str, Any]:
        return self._client.v1.credit_notes.retrieve(note_id).to_dict()

    def create_credit_grant(self, params: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        grant = self._client.v1.billing.credit_grants.create(params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        return grant.to_dict()
