"""The Stripe emulator: a stateful Stripe of the subset plg uses, served over real HTTP — as a process on
the local stack (``python -m services.stripe_emulator``) and in the test process (tests, the bench).

stripe-mock checks request shapes but keeps no state, so dedup, idempotency, "the sums add up" and the
invoices are tested here instead. The billing objects (customers, products, prices, checkout,
subscriptions, invoices) are in :mod:`services.stripe_emulator.billing`; the meter-events part, as Stripe
documents it:

- ``POST/GET /v1/billing/meters``, ``GET /v1/billing/meters/{id}``: meters by ``event_name``, formula
  ``sum`` | ``count`` | ``last``.
- ``POST /v1/billing/meter_events``: ``identifier`` unique over a rolling 24 h (a repeat is refused with
  400 ``invalid_request_error`` "An event already exists with identifier ..." and
  ``Stripe-Should-Retry: false``); ``timestamp`` at most 35 days old and 5 minutes ahead; ``value`` a
  whole number (non-negative: plg never sends less than nothing); ``payload[stripe_customer_id]``.
- ``GET /v1/billing/meters/{id}/event_summaries``: ``aggregated_value`` over ``[start_time, end_time)``
  for a customer, optionally per ``value_grouping_window`` (hour, day).
- ``Idempotency-Key`` on POSTs: the first response is saved for 24 h and replayed for the same key and
  parameters (``Idempotent-Replayed: true``); the same key with other parameters is a 400
  ``idempotency_error``; a key whose first request is still running is a 409. Requests that never began
  (refused by validation, auth, a rate limit or an injected 429/5xx) save nothing, as Stripe documents.
- Fault injection (``faults(rate=0.2, ...)``): 429 with ``Retry-After``, 500, 503 (nothing recorded),
  and ``timeout``: the event *is* recorded and its response saved, then the answer comes too late.

The emulator answers the shapes stripe-mock does (status, keys, JSON types): ``tests/integration/billing/
test_stripe_contract.py`` sends both the same requests so the two cannot drift.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from services.stripe_emulator.billing import BillingObjects
from services.stripe_emulator.common import StripeApiError, nest
from services.stripe_emulator.webhooks import API_VERSION, WebhookSender

DEDUP_WINDOW_S = 24 * 3600
MAX_AGE_S = 35 * 24 * 3600
MAX_FUTURE_S = 5 * 60
# The local stack's documented webhook secret (docs/billing.md), not a secret.
LOCAL_WEBHOOK_SECRET = "whsec_plg_local"  # noqa: S105
_WHOLE = re.compile(r"^\d+$")
_KEY = re.compile(r"^Bearer sk_test_[A-Za-z0-9]+$")


@dataclass
class Faults:
    rate: float = 0.0
    kinds: tuple[str, ...] = ("429", "500", "503", "timeout")
    retry_after_s: float = 1.0
    timeout_s: float = 3.0
    paths: tuple[str, ...] = ("/v1/billing/meter_events",)
    rng: random.Random = field(default_factory=lambda: random.Random(0))


@dataclass
class Stats:
    requests: int = 0
    accepted_events: int = 0
    duplicate_identifiers_refused: int = 0
    idempotent_replays: int = 0
    rate_limited: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    by_path: dict[str, int] = field(default_factory=dict)  # requests per "METHOD /path" (ids kept)


class StripeEmulator:
    """The double's state and rules; ``serve()`` puts it on a real HTTP port."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, rate_limit_per_s: float | None = None,
        webhook_url: str | None = None, webhook_secret: str = LOCAL_WEBHOOK_SECRET,
    ) -> None:  # fmt: skip
        self.clock = clock
        self.rate_limit_per_s = rate_limit_per_s
        # Re-entrant: billing requests hold it while they read meter values.
        self._lock = threading.RLock()
        self.meters: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._identifiers: dict[str, float] = {}
        self._idempotency: dict[str, tuple[str, int, dict[str, Any], float]] = {}
        self._in_flight: set[str] = set()
        self._bucket = (0.0, 0.0)  # tokens, last refill
        self.fault_plan = Faults()
        self.stats = Stats()
        self.accepted_identifiers: list[str] = []
        # identifier -> wall-clock time it was accepted (benchmarks measure report latency from it).
        self.accepted_at: dict[str, float] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Billing objects (customers, products, prices, checkout, subscriptions, invoices) and the events
        # they emit, delivered signed to ``webhook_url`` when one is set.
        self.billing = BillingObjects(clock, self.meters, self.meter_value, self._emit)
        self.webhooks = WebhookSender(webhook_url, webhook_secret)
        self.event_log: list[dict[str, Any]] = []
        # The account the keys act for (``GET /v1/account``): each emulator is an account of its own, so a
        # second double against the same database (the bench's) is told apart from the stack's, as two
        # Stripe accounts are. Kept in the state file: the stack's account survives `make down`/`make up`.
        self.account: dict[str, Any] = {
            "id": f"acct_{secrets.token_hex(8)}", "object": "account", "country": "US",
            "default_currency": "usd", "created": int(clock()), "charges_enabled": True,
            "payouts_enabled": True, "details_submitted": True, "type": "standard", "metadata": {},
        }  # fmt: skip

    # -- test-facing API ---------------------------------------------------------------------------
    def faults(self, rate: float, **kwargs: Any) -> None:
        seed = kwargs.pop("seed", 0)
        self.fault_plan = Faults(rate=rate, rng=random.Random(seed), **kwargs)

    def summed(self, stripe_customer_id: str, event_name: str) -> int:
        with self._lock:
            return sum(
                int(e["payload"]["value"])
                for e in self.events
                if e["event_name"] == event_name and e["payload"]["stripe_customer_id"] == stripe_customer_id
            )

    def totals(self) -> dict[tuple[str, str], int]:
        """Summed values per (stripe customer, event name)."""
        out: dict[tuple[str, str], int] = {}
        with self._lock:
            for e in self.events:
                key = (e["payload"]["stripe_customer_id"], e["event_name"])
                out[key] = out.get(key, 0) + int(e["payload"]["value"])
        return out

    # -- persistence (the local stack keeps its Stripe account across `make down` / `make up`) -------------
    _PERSISTED = ("meters", "events", "_identifiers", "accepted_identifiers", "event_log", "account")
    _PERSISTED_BILLING = (
        "customers", "products", "prices", "sessions", "subscriptions", "invoices", "invoice_items",
        "credit_notes", "credit_grants",
    )  # fmt: skip

    def save(self, path: Path) -> None:
        """Write the account's state to ``path`` atomically (a pickle: a local tool's own file)."""
        with self._lock:
            state = {
                "core": {name: getattr(self, name) for name in self._PERSISTED},
                "billing": {name: getattr(self.billing, name) for name in self._PERSISTED_BILLING},
            }
            data = pickle.dumps(state)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)

    def load(self, path: Path) -> None:
        """Restore what :meth:`save` wrote (nothing when the file does not exist)."""
        if not path.exists():
            return
        state = pickle.loads(path.read_bytes())  # noqa: S301 - our own file, written by save()
        with self._lock:
            for name, value in state["core"].items():
                if name == "meters":
                    self.meters.clear()
                    self.meters.update(value)  # the billing objects hold this very dict
                else:
                    setattr(self, name, value)
            for name, value in state["billing"].items():
                setattr(self.billing, name, value)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> StripeEmulator:
        double = self

        class Handler(_Handler):
            pass

        Handler.double = double
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-double",
            daemon=True,
        )
        self._thread.start()
        self._ticker = threading.Thread(target=self._tick_forever, name="stripe-emulator-clock", daemon=True)
        self._ticker.start()
        self.webhooks.start()
        return self

    def _tick_forever(self) -> None:
        """Periods end with time, not only when a request comes: once a second, close ended periods."""
        while self._server is not None:
            with self._lock:
                self.billing.tick()
            time.sleep(1.0)

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": API_VERSION,
            "created": int(self.clock()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1 if self.webhooks.url else 0,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }
        with self._lock:
            self.event_log.append(event)
        self.webhooks.send(event)

    def meter_value(self, meter_id: str, customer: str, start: int, end: int) -> Decimal:
        """The meter's aggregated value for ``customer`` over ``[start, end)``: what a metered price bills."""
        meter = self.meters[meter_id]
        summary = self._summaries(
            meter, {"customer": customer, "start_time": str(start), "end_time": str(end)}
        )
        return Decimal(sum(s["aggregated_value"] for s in summary["data"]))

    def close(self) -> None:
        self.webhooks.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- request handling ------------------------------------------------------------------------------
    def handle(
        self, method: str, path: str, query: dict[str, Any], form: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str], float]:
        """(status, body, extra headers, seconds to wait before answering)."""
        with self._lock:
            self.stats.requests += 1
            where = f"{method} {path}"
            self.stats.by_path[where] = self.stats.by_path.get(where, 0) + 1
        try:
            if not _KEY.match(headers.get("authorization", "")):
                raise StripeApiError(401, "Invalid API Key provided.", type_="invalid_request_error")
            self._rate_limit()
            key = headers.get("idempotency-key") if method == "POST" else None
            if key is not None:
                replay = self._replay(key, method, path, form)
                if replay is not None:
                    return replay
            try:
                fault = self._draw_fault(path)
                if fault in ("429", "500", "503"):
                    raise self._fault_error(fault)
                try:
                    status, body = 200, self._route(method, path, query, form)
                except StripeApiError as exc:
                    if key is not None and exc.saved:
                        self._save(key, method, path, form, exc.status, exc.body)
                    raise
                if key is not None:
                    self._save(key, method, path, form, status, body)
            finally:
                if key is not None:
                    with self._lock:
                        self._in_flight.discard(key)
            delay = self.fault_plan.timeout_s if fault == "timeout" else 0.0
            return status, body, {}, delay
        except StripeApiError as exc:
            return exc.status, exc.body, exc.headers, 0.0

    def _rate_limit(self) -> None:
        if self.rate_limit_per_s is None:
            return
        with self._lock:
            now = time.monotonic()
            tokens, last = self._bucket
            tokens = min(self.rate_limit_per_s, tokens + (now - last) * self.rate_limit_per_s)
            if tokens < 1:
                self._bucket = (tokens, now)
                self.stats.rate_limited += 1
                raise StripeApiError(
                    429, "Request rate limit exceeded.", type_="invalid_request_error", code="rate_limit",
                    headers={"Retry-After": "1"},
                )  # fmt: skip
            self._bucket = (tokens - 1, now)

    def _draw_fault(self, path: str) -> str | None:
        plan = self.fault_plan
        if plan.rate <= 0 or path not in plan.paths:
            return None
        with self._lock:
            if plan.rng.random() >= plan.rate:
                return None
            kind = plan.rng.choice(plan.kinds)
            self.stats.faults[kind] = self.stats.faults.get(kind, 0) + 1
            return kind

    def _fault_error(self, kind: str) -> StripeApiError:
        if kind == "429":
            return StripeApiError(
                429, "Request rate limit exceeded. (injected)", code="rate_limit",
                headers={"Retry-After": f"{self.fault_plan.retry_after_s:g}"},
            )  # fmt: skip
        return StripeApiError(int(kind), "An unknown error occurred. (injected)", type_="api_error")

    def _fingerprint(self, method: str, path: str, form: dict[str, Any]) -> str:
        return json.dumps([method, path, form], sort_keys=True)

    def _replay(
        self, key: str, method: str, path: str, form: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str], float] | None:
        with self._lock:
            now = self.clock()
            saved = self._idempotency.get(key)
            if saved is not None and now - saved[3] > DEDUP_WINDOW_S:
                del self._idempotency[key]
                saved = None
            if saved is None:
                if key in self._in_flight:
                    raise StripeApiError(
                        409, "There is currently another in-progress request using this Stripe token "
                        "(that probably means you clicked twice). Try the request again later.",
                        type_="idempotency_error", code="idempotency_key_in_use",
                    )  # fmt: skip
                self._in_flight.add(key)
                return None
            fingerprint, status, body, _ = saved
            if fingerprint != self._fingerprint(method, path, form):
                raise StripeApiError(
                    400, "Keys for idempotent requests can only be used with the same parameters they were "
                    f"first used with. Try using a key other than '{key}' if you meant to execute a "
                    "different request.", type_="idempotency_error",
                )  # fmt: skip
            self.stats.idempotent_replays += 1
            return status, body, {"Idempotent-Replayed": "true", "Idempotency-Key": key}, 0.0

    def _save(
        self, key: str, method: str, path: str, form: dict[str, Any], status: int, body: dict[str, Any]
    ) -> None:
        with self._lock:
            self._idempotency[key] = (self._fingerprint(method, path, form), status, body, self.clock())

    def _route(self, method: str, path: str, query: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
        if path == "/v1/billing/meters" and method == "POST":
            return self._create_meter(form)
        if path == "/v1/billing/meters" and method == "GET":
            with self._lock:
                data = list(self.meters.values())
            return {"object": "list", "data": data, "has_more": False, "url": "/v1/billing/meters"}
        if path == "/v1/billing/meter_events" and method == "POST":
            return self._create_event(form)
        if path == "/v1/account" and method == "GET":
            return dict(self.account)
        match = re.fullmatch(r"/v1/billing/meters/([^/]+)(/event_summaries)?", path)
        if match and method == "GET":
            meter = self.meters.get(match.group(1))
            if meter is None:
                raise StripeApiError(
                    404, f"No such billing meter: '{match.group(1)}'", param="id", code="resource_missing"
                )
            if match.group(2):
                return self._summaries(meter, query)
            return meter
        if path == "/v1/events" and method == "GET":
            with self._lock:
                events = [e for e in self.event_log if not query.get("type") or e["type"] == query["type"]]
            return {
                "object": "list",
                "data": events[::-1][:100],
                "has_more": len(events) > 100,
                "url": "/v1/events",
            }
        with self._lock:
            self.billing.tick()
            answer = self.billing.route(method, path, query, form)
        if answer is not None:
            return answer
        raise StripeApiError(404, f"Unrecognized request URL ({method}: {path}).")

    def _create_meter(self, form: dict[str, Any]) -> dict[str, Any]:
        for name in ("display_name", "event_name"):
            if not form.get(name):
                raise StripeApiError(400, f"Missing required param: {name}.", param=name)
        formula = (form.get("default_aggregation") or {}).get("formula")
        if formula not in ("sum", "count", "last"):
            raise StripeApiError(
                400, "Invalid default_aggregation[formula]", param="default_aggregation[formula]"
            )
        now = int(self.clock())
        meter = {
            "id": f"mtr_{secrets.token_hex(12)}",
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": (form.get("customer_mapping") or {}).get(
                    "event_payload_key", "stripe_customer_id"
                ),
                "type": "by_id",
            },
            "default_aggregation": {"formula": formula},
            "display_name": form["display_name"],
            "event_name": form["event_name"],
            "event_time_window": form.get("event_time_window"),
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {
                "event_payload_key": (form.get("value_settings") or {}).get("event_payload_key", "value")
            },
        }
        with self._lock:
            if any(m["event_name"] == meter["event_name"] for m in self.meters.values()):
                raise StripeApiError(
                    400, f"A meter with event_name {meter['event_name']} already exists.", param="event_name"
                )
            self.meters[meter["id"]] = meter
        return meter

    def _create_event(self, form: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        event_name = form.get("event_name")
        if not event_name:
            raise StripeApiError(400, "Missing required param: event_name.", param="event_name")
        payload = form.get("payload")
        if not isinstance(payload, dict) or not payload.get("stripe_customer_id"):
            raise StripeApiError(400, "Missing required param: payload[stripe_customer_id].", param="payload")
        value = payload.get("value", "1")
        if not isinstance(value, str) or not _WHOLE.match(value):
            raise StripeApiError(
                400, f"Invalid value: {value!r} must be a whole number.", param="payload[value]"
            )
        raw_ts = form.get("timestamp")
        try:
            timestamp = int(raw_ts) if raw_ts is not None else int(now)
        except ValueError:
            raise StripeApiError(400, "Invalid integer: timestamp", param="timestamp") from None
        if timestamp < now - MAX_AGE_S:
            raise StripeApiError(
                400, "Timestamp must be within the past 35 calendar days.", param="timestamp"
            )
        if timestamp > now + MAX_FUTURE_S:
            raise StripeApiError(
                400, "Timestamp must not be more than 5 minutes in the future.", param="timestamp"
            )
        identifier = form.get("identifier") or f"auto_{secrets.token_hex(12)}"
        if len(identifier) > 100:
            raise StripeApiError(400, "identifier must be at most 100 characters.", param="identifier")
        with self._lock:
            seen = self._identifiers.get(identifier)
            if seen is not None and now - seen < DEDUP_WINDOW_S:
                self.stats.duplicate_identifiers_refused += 1
                raise StripeApiError(
                    400, f"An event already exists with identifier {identifier}.", param="identifier",
                    headers={"Stripe-Should-Retry": "false"}, saved=True,
                )  # fmt: skip
            self._identifiers[identifier] = now
            event = {
                "object": "billing.meter_event",
                "created": int(now),
                "event_name": event_name,
                "identifier": identifier,
                "livemode": False,
                "payload": dict(payload, value=value),
                "timestamp": timestamp,
            }
            self.events.append(event)
            self.accepted_identifiers.append(identifier)
            self.accepted_at[identifier] = time.time()
            self.stats.accepted_events += 1
        return event

    def _summaries(self, meter: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
        for name in ("customer", "start_time", "end_time"):
            if not query.get(name):
                raise StripeApiError(400, f"Missing required param: {name}.", param=name)
        try:
            start, end = int(query["start_time"]), int(query["end_time"])
        except ValueError:
            raise StripeApiError(400, "Invalid integer: start_time/end_time", param="start_time") from None
        grouping = query.get("value_grouping_window")
        step = {"hour": 3600, "day": 86400}.get(grouping or "", end - start)
        if grouping is not None and grouping not in ("hour", "day"):
            raise StripeApiError(400, "Invalid value_grouping_window", param="value_grouping_window")
        customer_key = meter["customer_mapping"]["event_payload_key"]
        with self._lock:
            events = [
                e
                for e in self.events
                if e["event_name"] == meter["event_name"]
                and e["payload"].get(customer_key) == query["customer"]
            ]
        data = []
        for window_start in range(start, end, max(step, 1)):
            window_end = min(window_start + step, end)
            inside = [e for e in events if window_start <= e["timestamp"] < window_end]
            formula = meter["default_aggregation"]["formula"]
            if formula == "count":
                value: float = len(inside)
            elif formula == "last":
                value = int(max(inside, key=lambda e: e["timestamp"])["payload"]["value"]) if inside else 0
            else:
                value = sum(int(e["payload"]["value"]) for e in inside)
            data.append(
                {
                    "id": f"mtrusg_{secrets.token_hex(8)}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": value,
                    "end_time": window_end,
                    "livemode": False,
                    "meter": meter["id"],
                    "start_time": window_start,
                }
            )
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "url": f"/v1/billing/meters/{meter['id']}/event_summaries",
        }


class _Handler(BaseHTTPRequestHandler):
    double: StripeEmulator
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm holds the body back until
    # the client's delayed ACK (40 ms a call).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read assertions, not access logs
        return

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        form = nest(parse_qsl(raw, keep_blank_values=True))
        query = nest(parse_qsl(parts.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, body, extra, delay = self.double.handle(method, parts.path, query, form, headers)
        if delay:
            time.sleep(delay)  # recorded already: the client's timeout fires first
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_{secrets.token_hex(8)}")
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout fault): the event stays recorded

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")
