"""The emulator's billing objects: customers, products, prices, checkout sessions, subscriptions and their
items, invoices (previews, one per period as it ends), invoice items and the events they emit.

Prices follow Stripe's model: ``per_unit`` (``unit_amount`` / ``unit_amount_decimal`` in minor units,
optional ``transform_quantity`` with ``divide_by`` and ``round``) or ``tiered`` (``graduated`` or
``volume`` tiers, each with a unit and a flat amount, the last ``up_to: inf``); ``recurring[usage_type]``
``licensed`` (billed in advance, per quantity) or ``metered`` (billed in arrears from a
``recurring[meter]``'s value over the period). A line's exact amount is rounded once, to a whole minor
unit, half up, as Stripe rounds line amounts; an invoice's total is the sum of its lines.

Subscriptions renew on their prices' interval (N months or years) from their ``billing_cycle_anchor`` (a
day the month lacks becomes its last day). When a period ends (checked on every request and once a second
by the server), the period's invoice is written: metered usage of the period ending, licensed items for the
period starting, pending invoice items; it is paid at once (a test card) and its events are emitted.
Items on different intervals (an annual base with monthly usage) need ``billing_mode[type]=flexible``, as
at Stripe: each item then has its own period on the shared anchor, the subscription renews on the shortest
one, and each invoice bills the items whose period ended (a year's licensed base once a year, in advance;
monthly metered usage every month, in arrears).
"""

from __future__ import annotations

import calendar
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal, InvalidOperation
from typing import Any

from services.customers.tax import STRIPE_TAX_ID_TYPES as TAX_ID_TYPES
from services.stripe_emulator.common import StripeApiError, as_list, missing, no_such

ZERO = Decimal(0)
# A customer's tax status at Stripe (``tax_exempt``).
TAX_EXEMPT = ("none", "exempt", "reverse")
Emit = Callable[[str, dict[str, Any]], None]


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _decimal(value: Any, param: str) -> Decimal:
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise StripeApiError(400, f"Invalid decimal: {value}", param=param) from None
    if not out.is_finite():
        raise StripeApiError(400, f"Invalid decimal: {value}", param=param)
    return out


def _int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise StripeApiError(400, f"Invalid integer: {value}", param=param) from None


def _metadata(form: dict[str, Any]) -> dict[str, str]:
    meta = form.get("metadata") or {}
    if not isinstance(meta, dict):
        raise StripeApiError(400, "Invalid metadata: must be an object", param="metadata")
    return {str(k): str(v) for k, v in meta.items()}


def _field(obj: dict[str, Any], name: str) -> Any:
    """A list filter's field; an invoice names its subscription under ``parent`` (API 2025+)."""
    if name == "subscription" and obj.get("object") == "invoice":
        return ((obj.get("parent") or {}).get("subscription_details") or {}).get("subscription")
    return obj.get(name)


def interval_months(price: dict[str, Any]) -> int:
    """A recurring price's interval in months (a year is 12 months times ``interval_count``)."""
    recurring = price.get("recurring") or {}
    count = int(recurring.get("interval_count") or 1)
    unit = recurring.get("interval", "month")
    if unit not in ("month", "year"):
        raise StripeApiError(400, f"The emulator bills month and year intervals, not {unit!r}.")
    return count * 12 if unit == "year" else count


def item_period(sub: dict[str, Any], months: int) -> tuple[int, int]:
    """The current period of an item renewing every ``months`` on the subscription's anchor: the one that
    ends at or after the subscription's current period (the shortest interval's) ends. An item on the
    subscription's own interval has the subscription's period."""
    step, (start, end) = sub.get("_months", 1), sub["_period"]
    anchor, cycle = sub["billing_cycle_anchor"], sub["_cycle"]
    k = -(-cycle * step // months)  # item cycles whose end reaches the subscription period's end
    if months == step or k == 0:  # k == 0: the partial first period up to a future anchor
        return int(start), int(end)
    return add_months(anchor, (k - 1) * months), add_months(anchor, k * months)


def _period_of(item: dict[str, Any]) -> tuple[int, int]:
    return item["current_period_start"], item["current_period_end"]


def _billing_mode(form: dict[str, Any]) -> str:
    """``billing_mode[type]`` of a subscription (or of a session's ``subscription_data``)."""
    mode = (form.get("billing_mode") or {}).get("type") or "classic"
    if mode not in ("classic", "flexible"):
        raise StripeApiError(400, "Invalid billing_mode[type]", param="billing_mode[type]")
    return str(mode)


def add_months(anchor: int, months: int) -> int:
    """``anchor`` (epoch seconds, UTC) plus ``months`` calendar months, the day clamped to the month's
    last (Jan 31 + 1 month = Feb 28/29), the time of day kept: Stripe's monthly billing cycle."""
    at = datetime.fromtimestamp(anchor, UTC)
    month0 = at.month - 1 + months
    year, month = at.year + month0 // 12, month0 % 12 + 1
    day = min(at.day, calendar.monthrange(year, month)[1])
    return int(at.replace(year=year, month=month, day=day).timestamp())


def round_minor(amount: Decimal) -> int:
    """A line's exact amount in minor units, rounded once to a whole minor unit, half up."""
    return int(amount.to_integral_value(rounding=ROUND_HALF_UP))


def price_amount(price: dict[str, Any], quantity: Decimal) -> Decimal:
    """The exact amount, in minor units, of ``quantity`` of ``price`` (not rounded)."""
    if price["billing_scheme"] == "tiered":
        return _tiered_amount(price["_tiers"], price["tiers_mode"], quantity)
    transform = price.get("transform_quantity")
    if transform:
        divided = quantity / Decimal(transform["divide_by"])
        quantity = divided.to_integral_value(rounding=ROUND_UP if transform["round"] == "up" else ROUND_DOWN)
    return quantity * Decimal(price["unit_amount_decimal"])


def _tiered_amount(tiers: list[dict[str, Any]], mode: str, quantity: Decimal) -> Decimal:
    if quantity <= 0:
        return ZERO
    if mode == "volume":
        for tier in tiers:
            if tier["up_to"] is None or quantity <= tier["up_to"]:
                return quantity * Decimal(tier["unit_amount_decimal"]) + Decimal(tier["flat_amount_decimal"])
        return ZERO
    total, floor = ZERO, ZERO
    for tier in tiers:
        ceiling = quantity if tier["up_to"] is None else min(quantity, Decimal(tier["up_to"]))
        if ceiling <= floor:
            break
        total += (ceiling - floor) * Decimal(tier["unit_amount_decimal"]) + Decimal(
            tier["flat_amount_decimal"]
        )
        floor = ceiling
    return total


class BillingObjects:
    """State and rules of the billing objects. ``meter_value(meter_id, customer, start, end)`` is the
    meter's aggregated value (the meter-events part owns events); ``emit`` records and sends an event."""

    def __init__(
        self,
        clock: Callable[[], float],
        meters: dict[str, dict[str, Any]],
        meter_value: Callable[[str, str, int, int], Decimal],
        emit: Emit,
    ) -> None:
        self.clock = clock
        self.meters = meters
        self.meter_value = meter_value
        self.emit = emit
        self.customers: dict[str, dict[str, Any]] = {}
        self.products: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.invoice_items: dict[str, dict[str, Any]] = {}
        self.credit_notes: dict[str, dict[str, Any]] = {}
        self.credit_grants: dict[str, dict[str, Any]] = {}

    def now(self) -> int:
        return int(self.clock())

    # -- routing (called under the emulator's lock) ------------------------------------------------------
    def route(
        self, method: str, path: str, query: dict[str, Any], form: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The answer to a billing request, or None when the path is not one of these."""
        parts = path.strip("/").split("/")
        if parts[:1] == ["_emulator"]:
            return self._emulator_route(method, parts[1:], form)
        if parts[:1] != ["v1"] or len(parts) < 2:
            return None
        kind, rest = parts[1], parts[2:]
        if kind == "checkout" and rest[:1] == ["sessions"]:
            kind, rest = "checkout/sessions", rest[1:]
        if kind == "billing" and rest[:1] == ["credit_grants"]:
            kind, rest = "billing/credit_grants", rest[1:]
        if kind == "invoices" and rest == ["create_preview"] and method == "POST":
            return self.preview(form)
        handlers: dict[str, tuple[Callable[..., dict[str, Any]], dict[str, dict[str, Any]], str, str]] = {
            "customers": (self.create_customer, self.customers, "customer", "customer"),
            "products": (self.create_product, self.products, "product", "product"),
            "prices": (self.create_price, self.prices, "price", "price"),
            "checkout/sessions": (self.create_session, self.sessions, "checkout.session", "checkout session"),
            "subscriptions": (self.create_subscription, self.subscriptions, "subscription", "subscription"),
            "invoices": (self._no_create, self.invoices, "invoice", "invoice"),
            "invoiceitems": (self.create_invoice_item, self.invoice_items, "invoiceitem", "invoiceitem"),
            "credit_notes": (self.create_credit_note, self.credit_notes, "credit_note", "credit note"),
            "billing/credit_grants": (
                self.create_credit_grant,
                self.credit_grants,
                "billing.credit_grant",
                "credit grant",
            ),
        }
        if kind not in handlers:
            return None
        create, store, _, label = handlers[kind]
        if not rest:
            if method == "POST":
                return create(form)
            if method == "GET":
                return self._list(kind, store, query)
            return None
        if kind == "subscriptions" and rest[1:] == ["migrate"] and method == "POST":
            return self.migrate_subscription(self._subscription(rest[0]), form)
        if kind == "customers" and len(rest) in (2, 3) and rest[1] == "tax_ids":
            return self._tax_ids(method, self._customer(rest[0], "customer"), rest[2:], form, query)
        if len(rest) != 1:
            return None
        obj = store.get(rest[0])
        if obj is None:
            raise no_such(label, rest[0])
        if method == "GET":
            return self._public(obj, query)
        if method == "POST" and kind == "subscriptions":
            return self.update_subscription(obj, form)
        if method == "POST" and kind == "customers":
            if "tax_exempt" in form and form["tax_exempt"] not in TAX_EXEMPT:
                raise StripeApiError(
                    400, f"Invalid tax_exempt: must be one of {', '.join(TAX_EXEMPT)}", param="tax_exempt"
                )
            obj.update({k: v for k, v in form.items() if k in ("name", "email", "tax_exempt")})
            obj["metadata"].update(_metadata(form))
            return self._public(obj, {})
        if method == "DELETE" and kind == "subscriptions":
            return self.cancel_subscription(obj)
        return None

    def _no_create(self, form: dict[str, Any]) -> dict[str, Any]:
        raise StripeApiError(400, "Invoices are written by subscriptions in this emulator.")

    @staticmethod
    def _public(obj: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
        """The object without its private (``_``) fields; a price shows its tiers when expanded."""
        out = {k: v for k, v in obj.items() if not k.startswith("_")}
        if obj.get("object") == "price" and "tiers" in as_list(query.get("expand")):
            out["tiers"] = [
                {
                    "flat_amount": int(Decimal(t["flat_amount_decimal"])),
                    "flat_amount_decimal": t["flat_amount_decimal"],
                    "unit_amount": int(Decimal(t["unit_amount_decimal"])),
                    "unit_amount_decimal": t["unit_amount_decimal"],
                    "up_to": None if t["up_to"] is None else int(t["up_to"]),
                }
                for t in obj["_tiers"]
            ]
        return out

    def _list(self, kind: str, store: dict[str, dict[str, Any]], query: dict[str, Any]) -> dict[str, Any]:
        items = list(store.values())
        for name in ("customer", "subscription", "status", "product", "invoice"):
            if query.get(name):
                items = [o for o in items if _field(o, name) == query[name]]
        if kind == "prices":
            keys = as_list(query.get("lookup_keys"))
            if keys:
                items = [p for p in items if p.get("lookup_key") in keys]
            if query.get("active") in ("true", "false"):
                items = [p for p in items if p["active"] == (query["active"] == "true")]
        if kind == "invoiceitems" and query.get("pending") == "true":
            items = [i for i in items if i.get("invoice") is None]
        items.sort(key=lambda o: o.get("created", 0), reverse=True)
        limit = _int(query.get("limit", 100), "limit")
        return {
            "object": "list",
            "data": [self._public(o, query) for o in items[:limit]],
            "has_more": len(items) > limit,
            "url": f"/v1/{kind}",
        }

    # -- customers, products, prices ---------------------------------------------------------------------
    def create_customer(self, form: dict[str, Any]) -> dict[str, Any]:
        customer_id = _id("cus")
        customer = {
            "id": customer_id,
            "object": "customer",
            "created": self.now(),
            "balance": 0,  # minor units; negative is credit the next invoices use first
            "email": form.get("email"),
            "livemode": False,
            "metadata": _metadata(form),
            "name": form.get("name"),
            "tax_exempt": "none",
            "_tax_ids": {},
        }
        self.customers[customer_id] = customer
        return self._public(customer, {})

    def _tax_ids(
        self, method: str, customer: dict[str, Any], rest: list[str], form: dict[str, Any],
        query: dict[str, Any],
    ) -> dict[str, Any] | None:  # fmt: skip
        """A customer's tax ids (``/v1/customers/{id}/tax_ids[/{tax_id}]``): create, list, retrieve, delete.
        Stripe checks the type against its list and the value's format per type; here the type must be
        one Stripe names and an EU VAT number must start with its country code."""
        ids: dict[str, dict[str, Any]] = customer.setdefault("_tax_ids", {})
        if not rest:
            if method == "GET":
                items = sorted(ids.values(), key=lambda t: t["created"], reverse=True)
                limit = _int(query.get("limit", 10), "limit")
                return {
                    "object": "list",
                    "data": [dict(t) for t in items[:limit]],
                    "has_more": len(items) > limit,
                    "url": f"/v1/customers/{customer['id']}/tax_ids",
                }
            if method != "POST":
                return None
            kind, value = form.get("type"), str(form.get("value") or "").strip()
            if not kind:
                raise missing("type")
            if not value:
                raise missing("value")
            if kind not in TAX_ID_TYPES:
                raise StripeApiError(400, f"Invalid type: {kind!r} is not a tax ID type.", param="type")
            if kind == "eu_vat" and not (len(value) > 4 and value[:2].isalpha() and value[:2].isupper()):
                raise StripeApiError(
                    400, f"Invalid value for eu_vat: {value}", param="value", code="tax_id_invalid"
                )
            tax_id = {
                "id": _id("txi"),
                "object": "tax_id",
                "country": value[:2] if kind == "eu_vat" else kind.split("_", 1)[0].upper(),
                "created": self.now(),
                "customer": customer["id"],
                "livemode": False,
                "type": kind,
                "value": value,
                "verification": {"status": "pending", "verified_address": None, "verified_name": None},
            }
            ids[tax_id["id"]] = tax_id
            return dict(tax_id)
        found = ids.get(rest[0])
        if found is None:
            raise no_such("tax_id", rest[0])
        if method == "GET":
            return dict(found)
        if method == "DELETE":
            del ids[rest[0]]
            return {"id": rest[0], "object": "tax_id", "deleted": True}
        return None

    def _customer(self, customer_id: Any, param: str = "customer") -> dict[str, Any]:
        if not customer_id:
            raise missing(param)
        found = self.customers.get(str(customer_id))
        if found is None:
            raise no_such("customer", str(customer_id), param)
        return found

    def create_product(self, form: dict[str, Any]) -> dict[str, Any]:
        if not form.get("name"):
            raise missing("name")
        product_id = form.get("id") or _id("prod")
        if product_id in self.products:
            raise StripeApiError(
                400, f"Product already exists: {product_id}", param="id", code="resource_already_exists"
            )
        now = self.now()
        product = {
            "id": product_id,
            "object": "product",
            "active": True,
            "created": now,
            "description": form.get("description"),
            "livemode": False,
            "metadata": _metadata(form),
            "name": form["name"],
            "updated": now,
        }
        self.products[product_id] = product
        return dict(product)

    def create_price(self, form: dict[str, Any]) -> dict[str, Any]:
        currency = form.get("currency")
        if not currency:
            raise missing("currency")
        product = form.get("product")
        if not product:
            if not form.get("product_data"):
                raise missing("product")
            product = self.create_product(dict(form["product_data"]))["id"]
        elif product not in self.products:
            raise no_such("product", str(product), "product")
        return self._price(form, str(product), str(currency).lower())

    def _price(
        self, form: dict[str, Any], product: str, currency: str, *, inline: bool = False
    ) -> dict[str, Any]:
        scheme = form.get("billing_scheme") or "per_unit"
        if scheme not in ("per_unit", "tiered"):
            raise StripeApiError(400, f"Invalid billing_scheme: {scheme}", param="billing_scheme")
        recurring = form.get("recurring")
        rec: dict[str, Any] | None = None
        if recurring:
            interval = recurring.get("interval")
            if interval not in ("day", "week", "month", "year"):
                raise StripeApiError(400, "Invalid recurring[interval]", param="recurring[interval]")
            usage_type = recurring.get("usage_type") or "licensed"
            meter = recurring.get("meter")
            if usage_type == "metered":
                if not meter:
                    raise StripeApiError(
                        400, "Metered prices need recurring[meter].", param="recurring[meter]"
                    )
                if meter not in self.meters:
                    raise no_such("billing meter", str(meter), "recurring[meter]")
            rec = {
                "interval": interval,
                "interval_count": _int(recurring.get("interval_count", 1), "recurring[interval_count]"),
                "meter": meter if usage_type == "metered" else None,
                "usage_type": usage_type,
            }
        tiers: list[dict[str, Any]] = []
        unit_amount_decimal: str | None = None
        transform = None
        if scheme == "tiered":
            mode = form.get("tiers_mode")
            if mode not in ("graduated", "volume"):
                raise StripeApiError(
                    400, "Tiered prices need tiers_mode graduated or volume.", param="tiers_mode"
                )
            for i, tier in enumerate(as_list(form.get("tiers"))):
                up = tier.get("up_to")
                tiers.append(
                    {
                        "up_to": None if up == "inf" else _decimal(up, f"tiers[{i}][up_to]"),
                        "unit_amount_decimal": str(
                            _decimal(
                                tier.get("unit_amount_decimal", tier.get("unit_amount", "0")),
                                f"tiers[{i}][unit_amount_decimal]",
                            )
                        ),
                        "flat_amount_decimal": str(
                            _decimal(
                                tier.get("flat_amount_decimal", tier.get("flat_amount", "0")),
                                f"tiers[{i}][flat_amount_decimal]",
                            )
                        ),
                    }
                )
            if not tiers or tiers[-1]["up_to"] is not None:
                raise StripeApiError(400, "The last tier needs up_to=inf.", param="tiers")
            if form.get("transform_quantity"):
                raise StripeApiError(
                    400, "transform_quantity cannot be combined with tiers.", param="transform_quantity"
                )
        else:
            mode = None
            raw = form.get("unit_amount_decimal", form.get("unit_amount"))
            if raw is None:
                raise missing("unit_amount")
            amount = _decimal(raw, "unit_amount_decimal")
            if amount < 0:
                raise StripeApiError(400, "unit_amount must be non-negative.", param="unit_amount")
            unit_amount_decimal = str(amount)
            tq = form.get("transform_quantity")
            if tq:
                divide_by = _int(tq.get("divide_by"), "transform_quantity[divide_by]")
                if divide_by < 1 or tq.get("round") not in ("up", "down"):
                    raise StripeApiError(400, "Invalid transform_quantity", param="transform_quantity")
                transform = {"divide_by": divide_by, "round": tq["round"]}
        lookup_key = form.get("lookup_key")
        if lookup_key and any(p.get("lookup_key") == lookup_key for p in self.prices.values()):
            raise StripeApiError(
                400, f"A price (`{lookup_key}`) already uses that lookup key.", param="lookup_key"
            )
        price_id = _id("price")
        price = {
            "id": price_id,
            "object": "price",
            "active": True,
            "billing_scheme": scheme,
            "created": self.now(),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key or None,
            "metadata": _metadata(form),
            "nickname": form.get("nickname"),
            "product": product,
            "recurring": rec,
            "tax_behavior": form.get("tax_behavior") or "unspecified",
            "tiers_mode": mode,
            "transform_quantity": transform,
            "type": "recurring" if rec else "one_time",
            "unit_amount": None
            if unit_amount_decimal is None or Decimal(unit_amount_decimal) % 1
            else int(Decimal(unit_amount_decimal)),
            "unit_amount_decimal": unit_amount_decimal,
            "_tiers": tiers,
        }
        self.prices[price_id] = price
        return self._public(price, {})

    # -- checkout -----------------------------------------------------------------------------------------
    def _line_items(self, raw: Any, param: str, currency_default: str = "usd") -> list[dict[str, Any]]:
        """``[{price, quantity}]`` from line items / subscription items; inline ``price_data`` becomes a
        price of its own, as Stripe does."""
        out = []
        for i, item in enumerate(as_list(raw)):
            if not isinstance(item, dict):
                raise StripeApiError(400, f"Invalid {param}[{i}]", param=param)
            if item.get("price"):
                price = self.prices.get(str(item["price"]))
                if price is None:
                    raise no_such("price", str(item["price"]), f"{param}[{i}][price]")
            elif item.get("price_data"):
                data = dict(item["price_data"])
                product = data.get("product")
                if not product:
                    pd = data.get("product_data") or {}
                    product = self.create_product({"name": pd.get("name") or "inline"})["id"]
                price = self.prices[
                    self._price(data, str(product), str(data.get("currency") or currency_default).lower())[
                        "id"
                    ]
                ]
            else:
                raise StripeApiError(400, f"{param}[{i}] needs price or price_data.", param=f"{param}[{i}]")
            metered = (price.get("recurring") or {}).get("usage_type") == "metered"
            if metered and item.get("quantity") not in (None, ""):
                raise StripeApiError(
                    400, "Quantity cannot be set for metered prices.", param=f"{param}[{i}][quantity]"
                )
            out.append(
                {
                    "price": price["id"],
                    "quantity": None if metered else _int(item.get("quantity", 1), f"{param}[{i}][quantity]"),
                }
            )
        return out

    def create_session(self, form: dict[str, Any]) -> dict[str, Any]:
        mode = form.get("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise missing("mode")
        items = self._line_items(form.get("line_items"), "line_items")
        if mode == "subscription" and not items:
            raise missing("line_items")
        customer = form.get("customer")
        if customer:
            self._customer(customer)
        amount = sum(
            round_minor(price_amount(self.prices[i["price"]], Decimal(i["quantity"])))
            for i in items
            if i["quantity"] is not None
        )
        session_id = "cs_test_" + secrets.token_hex(16)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_total": amount,
            "cancel_url": form.get("cancel_url"),
            "client_reference_id": form.get("client_reference_id"),
            "created": self.now(),
            "currency": self.prices[items[0]["price"]]["currency"] if items else None,
            "customer": customer or None,
            "expires_at": self.now() + 86_400,
            "livemode": False,
            "metadata": _metadata(form),
            "mode": mode,
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": form.get("success_url"),
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "_items": items,
            "_subscription_data": dict(form.get("subscription_data") or {}),
        }
        self.sessions[session_id] = session
        return self._public(session, {})

    def complete_session(self, session: dict[str, Any], payment: str) -> dict[str, Any]:
        """The customer paid (``paid``), or chose an asynchronous method whose money is not there yet
        (``unpaid``; ``async_payment`` settles it later)."""
        if session["status"] != "open":
            raise StripeApiError(400, "This Checkout Session is no longer open.", param="session")
        if not session["customer"]:
            session["customer"] = self.create_customer({"metadata": {}})["id"]
        session["status"] = "complete"
        session["payment_status"] = "paid" if payment == "paid" else "unpaid"
        if session["mode"] == "subscription":
            data = session["_subscription_data"]
            anchor = data.get("billing_cycle_anchor")
            sub = self._new_subscription(
                session["customer"], session["_items"], _metadata(data),
                anchor=_int(anchor, "billing_cycle_anchor") if anchor else None,
                status="active" if payment == "paid" else "incomplete",
                billing_mode=_billing_mode(data),
                free_until_anchor=data.get("proration_behavior") == "none",
            )  # fmt: skip
            session["subscription"] = sub["id"]
        self.emit("checkout.session.completed", self._public(session, {}))
        return self._public(session, {})

    def async_payment(self, session: dict[str, Any], outcome: str) -> dict[str, Any]:
        if session["status"] != "complete" or session["payment_status"] != "unpaid":
            raise StripeApiError(400, "No asynchronous payment is pending for this session.")
        succeeded = outcome == "succeeded"
        session["payment_status"] = "paid" if succeeded else "unpaid"
        sub = self.subscriptions.get(session["subscription"] or "")
        if sub is not None:
            self._set_status(sub, "active" if succeeded else "incomplete_expired")
        kind = "succeeded" if succeeded else "failed"
        self.emit(f"checkout.session.async_payment_{kind}", self._public(session, {}))
        return self._public(session, {})

    # -- subscriptions ------------------------------------------------------------------------------------
    def create_subscription(self, form: dict[str, Any]) -> dict[str, Any]:
        customer = self._customer(form.get("customer"))
        items = self._line_items(form.get("items"), "items")
        if not items:
            raise missing("items")
        anchor = (
            _int(form["billing_cycle_anchor"], "billing_cycle_anchor")
            if form.get("billing_cycle_anchor")
            else None
        )
        sub = self._new_subscription(
            customer["id"], items, _metadata(form), anchor=anchor, billing_mode=_billing_mode(form),
            free_until_anchor=form.get("proration_behavior") == "none",
        )  # fmt: skip
        return self._public(sub, {})

    def _new_subscription(
        self, customer: str, items: list[dict[str, Any]], metadata: dict[str, str], *,
        anchor: int | None = None, status: str = "active", billing_mode: str = "classic",
        free_until_anchor: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """A new subscription and its first invoice. With a future ``anchor`` the first period is the
        partial one up to it: ``free_until_anchor`` (``proration_behavior=none``) makes it free, as Stripe
        does ("customers receive the initial period up to the first full invoice date for free",
        docs.stripe.com/payments/checkout/billing-cycle); otherwise the emulator charges the licensed items'
        full price for it (Stripe's default, a prorated charge, is not emulated)."""
        now = self.now()
        start = now
        months = self._interval_months(items, flexible=billing_mode == "flexible")
        # A future anchor: the first (partial) period runs from now to the anchor.
        anchor = anchor if anchor is not None and anchor > now else now
        sub_id = _id("sub")
        sub: dict[str, Any] = {
            "id": sub_id,
            "object": "subscription",
            "billing_cycle_anchor": anchor,
            "billing_mode": {"flexible": {}, "type": billing_mode},
            "cancel_at_period_end": False,
            "canceled_at": None,
            "created": now,
            "ended_at": None,
            "currency": self.prices[items[0]["price"]]["currency"],
            "customer": customer,
            "items": {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/subscription_items?subscription={sub_id}",
            },
            "livemode": False,
            "metadata": metadata,
            "start_date": start,
            "status": status,
            "_period": (start, anchor if anchor > now else add_months(anchor, months)),
            "_cycle": 0 if anchor > now else 1,
            # The (shortest) items' interval in months (1, 12, N): periods are _cycle * _months from the
            # anchor; a longer item (flexible mode) renews every interval_months(its price) on the anchor.
            "_months": months,
        }
        for item in items:
            sub["items"]["data"].append(self._item(sub, item))
        self._sync_periods(sub)
        self.subscriptions[sub_id] = sub
        self.emit("customer.subscription.created", self._public(sub, {}))
        # The first invoice: licensed items of their first period, in advance (none when that period, up to
        # a future anchor, is free).
        free = free_until_anchor and anchor > now
        first = {} if free else {it["id"]: _period_of(it) for it in sub["items"]["data"]}
        self._invoice(sub, usage={}, licensed=first, period=sub["_period"], reason="subscription_create")
        return sub

    def _interval_months(self, items: list[dict[str, Any]], *, flexible: bool = False) -> int:
        """The subscription's billing interval in months, from its prices' ``recurring``: a year is 12
        months times ``interval_count``. Items on different intervals need Stripe's flexible billing mode
        (refused in classic mode, as Stripe does); there the subscription renews on the shortest, which
        the others must be multiples of (the emulator's limit: month and year always are)."""
        found = {interval_months(self.prices[item["price"]]) for item in items}
        if len(found) > 1 and not flexible:
            raise StripeApiError(
                400,
                "Currency and interval fields must match across all plans on this subscription (mixed "
                "intervals need billing_mode[type]=flexible).",
            )
        step = min(found, default=1)
        if any(m % step for m in found):
            raise StripeApiError(
                400, "The emulator bills mixed intervals only when each is a multiple of the shortest."
            )
        return step

    def _item(self, sub: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        price = self.prices[item["price"]]
        start, end = item_period(sub, interval_months(price))
        return {
            "id": _id("si"),
            "object": "subscription_item",
            "created": self.now(),
            "metadata": {},
            "price": self._public(price, {}),
            "quantity": item["quantity"],
            "subscription": sub["id"],
            "current_period_start": start,
            "current_period_end": end,
        }

    @staticmethod
    def _sync_periods(sub: dict[str, Any]) -> None:
        for item in sub["items"]["data"]:
            months = interval_months(item["price"])
            item["current_period_start"], item["current_period_end"] = item_period(sub, months)

    def _set_status(self, sub: dict[str, Any], status: str) -> None:
        if sub["status"] != status:
            previous = sub["status"]
            sub["status"] = status
            self.emit("customer.subscription.updated", self._public(sub, {}))
            del previous

    def update_subscription(self, sub: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
        """Items added (``items[n][price]``), removed (``items[n][id]`` + ``[deleted]=true``) or re-priced
        (``[id]`` + ``[price]``); ``proration_behavior`` ``create_prorations`` (default) credits the unused
        time of removed licensed items and charges the rest of the period for added ones as pending
        invoice items; ``none`` does not."""
        if sub["status"] == "canceled":
            raise StripeApiError(400, "A canceled subscription can only update its metadata.", param="items")
        proration = form.get("proration_behavior") or "create_prorations"
        if proration not in ("create_prorations", "none", "always_invoice"):
            raise StripeApiError(400, "Invalid proration_behavior", param="proration_behavior")
        items = sub["items"]["data"]
        priced = [c for c in as_list(form.get("items")) if c.get("price") in self.prices]
        flexible = sub.get("billing_mode", {}).get("type") == "flexible"
        if priced and self._interval_months(priced, flexible=flexible) != sub.get("_months", 1):
            # Stripe resets the billing cycle anchor when the interval changes; not emulated.
            raise StripeApiError(
                400, "The emulator does not change a subscription's billing interval.", param="items"
            )
        removed: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for i, change in enumerate(as_list(form.get("items"))):
            existing = (
                next((it for it in items if it["id"] == change.get("id")), None) if change.get("id") else None
            )
            if change.get("id") and existing is None:
                raise no_such("subscription item", str(change["id"]), f"items[{i}][id]")
            if existing is not None and (str(change.get("deleted")).lower() == "true" or change.get("price")):
                items.remove(existing)
                removed.append(existing)
            if change.get("price") or change.get("price_data"):
                new = self._line_items(
                    [{k: v for k, v in change.items() if k in ("price", "price_data", "quantity")}], "items"
                )[0]
                item = self._item(sub, new)
                items.append(item)
                added.append(item)
        if proration != "none":
            for item, sign in [(it, -1) for it in removed] + [(it, 1) for it in added]:
                start, end = _period_of(item)  # the item's own period (flexible: an annual item's year)
                left = Decimal(max(0, end - self.now())) / Decimal(max(1, end - start))
                price = item["price"]
                if (price.get("recurring") or {}).get("usage_type") != "licensed":
                    continue
                full = price_amount(self.prices[price["id"]], Decimal(item["quantity"] or 1))
                amount = sign * round_minor(full * left)
                if amount:
                    self.create_invoice_item(
                        {"customer": sub["customer"], "amount": str(amount), "currency": price["currency"],
                         "description": ("Unused" if sign < 0 else "Remaining") + " time on " + price["id"],
                         "subscription": sub["id"]},
                        proration=True,
                    )  # fmt: skip
        if form.get("metadata"):
            sub["metadata"].update(_metadata(form))
        if form.get("cancel_at_period_end") in ("true", "false"):
            sub["cancel_at_period_end"] = form["cancel_at_period_end"] == "true"
        self.emit("customer.subscription.updated", self._public(sub, {}))
        if proration == "always_invoice":
            self._invoice(sub, usage={}, licensed={}, period=sub["_period"], reason="subscription_update")
        return self._public(sub, {})

    def _subscription(self, sub_id: str) -> dict[str, Any]:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            raise no_such("subscription", sub_id)
        return sub

    def migrate_subscription(self, sub: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/subscriptions/{id}/migrate``: a classic subscription moves to flexible billing mode
        (the only way, as at Stripe), after which its items may be on different intervals. Items added
        later renew on the subscription's anchor (a yearly one every 12 months from it)."""
        if _billing_mode(form) != "flexible":
            raise StripeApiError(400, "billing_mode[type] must be flexible.", param="billing_mode[type]")
        sub["billing_mode"] = {"flexible": {}, "type": "flexible"}
        self.emit("customer.subscription.updated", self._public(sub, {}))
        return self._public(sub, {})

    def cancel_subscription(self, sub: dict[str, Any]) -> dict[str, Any]:
        if sub["status"] == "canceled":
            raise StripeApiError(400, "This subscription is already canceled.", param="subscription")
        sub["status"] = "canceled"
        # At once (Stripe's default: no final invoice, the period's metered usage is discarded) or, from
        # tick, at the period's end after its last invoice: either way it ends now.
        sub["canceled_at"] = sub["ended_at"] = self.now()
        self.emit("customer.subscription.deleted", self._public(sub, {}))
        return self._public(sub, {})

    # -- invoices -------------------------------------------------------------------------------------------
    def create_invoice_item(self, form: dict[str, Any], *, proration: bool = False) -> dict[str, Any]:
        customer = self._customer(form.get("customer"))
        if form.get("amount") in (None, ""):
            raise missing("amount")
        if not form.get("currency"):
            raise missing("currency")
        item = {
            "id": _id("ii"),
            "object": "invoiceitem",
            "amount": _int(form["amount"], "amount"),
            "currency": str(form["currency"]).lower(),
            "customer": customer["id"],
            "date": self.now(),
            "description": form.get("description"),
            "invoice": None,
            "livemode": False,
            "metadata": _metadata(form),
            "parent": {
                "subscription_details": (
                    {"subscription": form["subscription"]} if form.get("subscription") else None
                ),
                "type": "subscription_details" if form.get("subscription") else None,
            },
            "proration": proration,
        }
        self.invoice_items[item["id"]] = item
        return dict(item)

    def create_credit_grant(self, form: dict[str, Any]) -> dict[str, Any]:
        """Billing credits: a monetary amount the customer's invoices use before anything is charged, on
        the metered lines in scope (``applicability_config[scope][prices][n][id]``, or
        ``[price_type]=metered``), while the grant is in effect (``effective_at`` ≤ the invoice's time <
        ``expires_at``); each invoice consumes what it uses."""
        customer = self._customer(form.get("customer"))
        amount = form.get("amount") or {}
        monetary = amount.get("monetary") or {}
        if amount.get("type") != "monetary" or not monetary.get("currency"):
            raise StripeApiError(400, "amount[type] must be monetary, with a currency.", param="amount")
        value = _int(monetary.get("value"), "amount[monetary][value]")
        if value <= 0:
            raise StripeApiError(400, "amount[monetary][value] must be positive.", param="amount")
        scope = (form.get("applicability_config") or {}).get("scope") or {}
        prices = [str(p.get("id")) for p in as_list(scope.get("prices"))]
        if not prices and scope.get("price_type") != "metered":
            raise StripeApiError(
                400, "applicability_config[scope] needs price_type=metered or prices.",
                param="applicability_config",
            )  # fmt: skip
        for i, price_id in enumerate(prices):
            if price_id not in self.prices:
                raise no_such("price", price_id, f"applicability_config[scope][prices][{i}][id]")
        category = form.get("category") or "paid"
        if category not in ("paid", "promotional"):
            raise StripeApiError(400, "Invalid category", param="category")
        now = self.now()
        grant_id = _id("credgr")
        grant = {
            "id": grant_id,
            "object": "billing.credit_grant",
            "amount": {"monetary": {"currency": str(monetary["currency"]).lower(), "value": value},
                       "type": "monetary"},
            "applicability_config": {
                "scope": {"price_type": None if prices else "metered", "prices": [{"id": p} for p in prices]}
            },
            "category": category,
            "created": now,
            "customer": customer["id"],
            "effective_at": _int(form["effective_at"], "effective_at") if form.get("effective_at") else now,
            "expires_at": _int(form["expires_at"], "expires_at") if form.get("expires_at") else None,
            "livemode": False,
            "metadata": _metadata(form),
            "name": form.get("name"),
            "priority": _int(form.get("priority", 50), "priority"),
            "test_clock": None,
            "updated": now,
            "voided_at": None,
            "_remaining": value,
        }  # fmt: skip
        self.credit_grants[grant_id] = grant
        return self._public(grant, {})

    def _apply_credits(self, customer: str, lines: list[dict[str, Any]], at: int, *, consume: bool) -> None:
        """Billing credits in effect at ``at`` reduce the metered lines in their scope (priority, then
        the soonest to expire first), each line by at most its amount: ``pretax_credit_amounts``."""
        grants = sorted(
            (g for g in self.credit_grants.values()
             if g["customer"] == customer and g["voided_at"] is None and g["_remaining"] > 0
             and g["effective_at"] <= at and (g["expires_at"] is None or at < g["expires_at"])),
            key=lambda g: (g["priority"], g["expires_at"] or 2**62, g["created"]),
        )  # fmt: skip
        left = {g["id"]: g["_remaining"] for g in grants}
        for line in lines:
            price_id = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
            price = self.prices.get(price_id or "")
            line.setdefault("pretax_credit_amounts", [])
            if price is None or (price.get("recurring") or {}).get("usage_type") != "metered":
                continue
            open_amount = line["amount"]
            for g in grants:
                scope = g["applicability_config"]["scope"]
                if scope["prices"] and price_id not in {p["id"] for p in scope["prices"]}:
                    continue
                used = min(left[g["id"]], open_amount)
                if used <= 0:
                    continue
                left[g["id"]] -= used
                open_amount -= used
                line["pretax_credit_amounts"].append(
                    {"amount": used, "credit_balance_transaction": _id("cbtxn"), "discount": None,
                     "type": "credit_balance_transaction"}
                )  # fmt: skip
        if consume:
            for g in grants:
                g["_remaining"] = left[g["id"]]

    def create_credit_note(self, form: dict[str, Any]) -> dict[str, Any]:
        """A credit note on a finalized invoice: ``lines`` (``custom_line_item``: ``unit_amount`` x
        ``quantity``) or ``amount``; on a paid invoice the amount is split between ``credit_amount`` (to
        the customer's balance: the next invoices use it first), ``refund_amount`` and
        ``out_of_band_amount``, which must add up to it — as Stripe requires."""
        invoice_id = form.get("invoice")
        if not invoice_id:
            raise missing("invoice")
        invoice = self.invoices.get(str(invoice_id))
        if invoice is None:
            raise no_such("invoice", str(invoice_id), "invoice")
        if invoice["status"] not in ("open", "paid"):
            raise StripeApiError(
                400, "Credit notes can only be issued on finalized invoices.", param="invoice"
            )
        lines = []
        for i, line in enumerate(as_list(form.get("lines"))):
            if line.get("type") != "custom_line_item":
                raise StripeApiError(400, "Only custom_line_item lines here.", param=f"lines[{i}][type]")
            quantity = _int(line.get("quantity", 1), f"lines[{i}][quantity]")
            unit = _int(line.get("unit_amount", 0), f"lines[{i}][unit_amount]")
            lines.append(
                {
                    "id": _id("cnli"),
                    "object": "credit_note_line_item",
                    "amount": unit * quantity,
                    "description": line.get("description"),
                    "livemode": False,
                    "quantity": quantity,
                    "type": "custom_line_item",
                    "unit_amount": unit,
                }
            )
        amount = sum(x["amount"] for x in lines) if lines else _int(form.get("amount", 0), "amount")
        if amount <= 0:
            raise StripeApiError(
                400, "A credit note needs a positive amount (lines or amount).", param="lines"
            )
        credited = sum(c["total"] for c in self.credit_notes.values() if c["invoice"] == invoice["id"])
        if credited + amount > invoice["total"]:
            raise StripeApiError(
                400, f"The credit note amount ({amount}) exceeds the invoice's remaining amount"
                f" ({invoice['total'] - credited}).", param="amount",
            )  # fmt: skip
        parts = {k: _int(form.get(k, 0), k) for k in ("credit_amount", "refund_amount", "out_of_band_amount")}
        if invoice["status"] == "paid" and sum(parts.values()) != amount:
            raise StripeApiError(
                400, f"The sum of credit amount, refund amount and out of band amount ({sum(parts.values())})"
                f" must equal the credit note amount ({amount}).", param="credit_amount",
            )  # fmt: skip
        customer = self.customers[invoice["customer"]]
        customer["balance"] -= parts["credit_amount"]
        note_id = _id("cn")
        note = {
            "id": note_id,
            "object": "credit_note",
            "amount": amount,
            "amount_shipping": 0,
            "created": self.now(),
            "currency": invoice["currency"],
            "customer": customer["id"],
            "discount_amount": 0,
            "discount_amounts": [],
            "invoice": invoice["id"],
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "url": f"/v1/credit_notes/{note_id}/lines",
            },
            "livemode": False,
            "memo": form.get("memo"),
            "metadata": _metadata(form),
            "number": f"CN-{len(self.credit_notes) + 1:04d}",
            "out_of_band_amount": parts["out_of_band_amount"] or None,
            "pdf": f"https://pay.stripe.com/credit_notes/{note_id}/pdf",
            "post_payment_amount": amount if invoice["status"] == "paid" else 0,
            "pre_payment_amount": 0 if invoice["status"] == "paid" else amount,
            "pretax_credit_amounts": [],
            "reason": form.get("reason"),
            "refunds": [],
            "status": "issued",
            "subtotal": amount,
            "total": amount,
            "type": "post_payment" if invoice["status"] == "paid" else "pre_payment",
        }
        self.credit_notes[note_id] = note
        self.emit("credit_note.created", dict(note))
        return dict(note)

    def _lines(
        self, sub: dict[str, Any], usage: dict[str, tuple[int, int]], licensed: dict[str, tuple[int, int]],
        items: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The lines of the items named: metered ones over their ``usage`` period (in arrears), licensed
        ones for their ``licensed`` period (in advance); keyed by item id (a preview's own items: index)."""
        lines = []
        for i, item in enumerate(items if items is not None else sub["items"]["data"]):
            key = item.get("id") or str(i)
            price = self.prices[item["price"]["id"]]
            usage_type = (price.get("recurring") or {}).get("usage_type", "licensed")
            if usage_type == "metered" and key in usage:
                period = usage[key]
                quantity = self.meter_value(price["recurring"]["meter"], sub["customer"], *period)
            elif usage_type == "licensed" and key in licensed:
                quantity, period = Decimal(item["quantity"] or 1), licensed[key]
            else:
                continue
            lines.append(self._line(price, quantity, period, sub["id"]))
        return lines

    def _line(
        self, price: dict[str, Any], quantity: Decimal, period: tuple[int, int], sub_id: str | None
    ) -> dict[str, Any]:
        exact = price_amount(price, quantity)
        return {
            "id": _id("il"),
            "object": "line_item",
            "amount": round_minor(exact),
            "currency": price["currency"],
            "description": f"{quantity} x {price.get('nickname') or price['id']}",
            "livemode": False,
            "metadata": dict(price.get("metadata") or {}),
            "period": {"start": period[0], "end": period[1]},
            "pricing": {
                "price_details": {"price": price["id"], "product": price["product"]},
                "type": "price_details",
                "unit_amount_decimal": price.get("unit_amount_decimal"),
            },
            "quantity": int(quantity) if quantity == quantity.to_integral_value() else None,
            "subscription": sub_id,
        }

    def _item_lines(self, customer: str, claim: str | None) -> list[dict[str, Any]]:
        lines = []
        for item in self.invoice_items.values():
            if item["customer"] != customer or item["invoice"] is not None:
                continue
            if claim is not None:
                item["invoice"] = claim
            lines.append(
                {
                    "id": _id("il"),
                    "object": "line_item",
                    "amount": item["amount"],
                    "currency": item["currency"],
                    "description": item["description"],
                    "livemode": False,
                    "metadata": dict(item["metadata"]),
                    "period": {"start": item["date"], "end": item["date"]},
                    "pricing": None,
                    "parent": {
                        "invoice_item_details": {"invoice_item": item["id"], "proration": item["proration"]},
                        "type": "invoice_item_details",
                    },
                    "quantity": 1,
                    "subscription": None,
                }
            )
        return lines

    def _invoice_object(
        self,
        sub: dict[str, Any],
        lines: list[dict[str, Any]],
        period: tuple[int, int],
        reason: str,
        status: str,
    ) -> dict[str, Any]:
        subtotal = sum(line["amount"] for line in lines)
        credits = [c for line in lines for c in line.get("pretax_credit_amounts") or []]
        total = subtotal - sum(c["amount"] for c in credits)
        # The customer's credit balance (credit notes) is used first: Stripe's starting_balance.
        balance = self.customers[sub["customer"]].get("balance", 0)
        due = max(total + min(balance, 0), 0) if total > 0 else max(total, 0)
        return {
            "id": _id("in") if status != "draft" else None,
            "object": "invoice",
            "amount_due": due,
            "amount_paid": due if status == "paid" else 0,
            "billing_reason": reason,
            "created": self.now(),
            "currency": sub["currency"],
            "customer": sub["customer"],
            # As Stripe does: the customer's tax status and tax ids when the invoice was made.
            "customer_tax_exempt": self.customers.get(sub["customer"], {}).get("tax_exempt", "none"),
            "customer_tax_ids": [
                {"type": t["type"], "value": t["value"]}
                for t in self.customers.get(sub["customer"], {}).get("_tax_ids", {}).values()
            ],
            "lines": {"object": "list", "data": lines, "has_more": False, "url": "/v1/invoices/lines"},
            "livemode": False,
            "metadata": {},
            "parent": {
                "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
                "type": "subscription_details",
            },
            "period_end": period[1],
            "period_start": period[0],
            "starting_balance": balance,
            "ending_balance": None if status == "draft" else balance + (total - due if total > 0 else 0),
            "status": status,
            "subtotal": subtotal,
            "total": total,
            "total_pretax_credit_amounts": credits,
        }

    def _invoice(
        self,
        sub: dict[str, Any],
        *,
        usage: dict[str, tuple[int, int]],
        licensed: dict[str, tuple[int, int]],
        period: tuple[int, int],
        reason: str,
    ) -> dict[str, Any]:
        lines = self._lines(sub, usage, licensed)
        self._apply_credits(sub["customer"], lines, self.now(), consume=True)
        invoice = self._invoice_object(sub, lines, period, reason, "paid")
        invoice["lines"]["data"] += self._item_lines(sub["customer"], invoice["id"])
        subtotal = sum(line["amount"] for line in invoice["lines"]["data"])
        total = subtotal - sum(c["amount"] for c in invoice["total_pretax_credit_amounts"])
        customer = self.customers[sub["customer"]]
        balance = customer.get("balance", 0)
        applied = min(-balance, total) if balance < 0 and total > 0 else 0
        invoice.update(
            subtotal=subtotal, total=total, amount_due=max(total - applied, 0),
            amount_paid=max(total - applied, 0), starting_balance=balance, ending_balance=balance + applied,
        )  # fmt: skip
        customer["balance"] = balance + applied
        self.invoices[invoice["id"]] = invoice
        for kind in ("invoice.created", "invoice.finalized", "invoice.paid"):
            self.emit(kind, dict(invoice))
        return invoice

    def preview(self, form: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/invoices/create_preview``: the invoice the subscription's current period will end
        in — metered usage so far, licensed items of the next period, pending invoice items;
        ``subscription_details[items]`` previews other prices instead of the subscription's own."""
        customer = self._customer(form.get("customer"))
        sub_id = form.get("subscription")
        if not sub_id:
            raise missing("subscription")
        sub = self.subscriptions.get(str(sub_id))
        if sub is None or sub["customer"] != customer["id"]:
            raise no_such("subscription", str(sub_id), "subscription")
        start, end = sub["_period"]
        details = form.get("subscription_details") or {}
        items = sub["items"]["data"]
        if details.get("items"):
            items = [
                {"price": self._public(self.prices[i["price"]], {}), "quantity": i["quantity"]}
                for i in self._line_items(details["items"], "subscription_details[items]")
            ]
        # The invoice at the end of the current period bills the items whose own period ends with it.
        next_end = add_months(sub["billing_cycle_anchor"], (sub["_cycle"] + 1) * sub.get("_months", 1))
        following = {**sub, "_cycle": sub["_cycle"] + 1, "_period": (end, next_end)}
        usage: dict[str, tuple[int, int]] = {}
        licensed: dict[str, tuple[int, int]] = {}
        for i, item in enumerate(items):
            months = interval_months(item["price"])
            current = item_period(sub, months)
            if current[1] == end:
                usage[item.get("id") or str(i)] = current
                licensed[item.get("id") or str(i)] = item_period(following, months)
        lines = self._lines(sub, usage, licensed, items)
        self._apply_credits(customer["id"], lines, self.now(), consume=False)
        lines += self._item_lines(customer["id"], None)
        return self._invoice_object(sub, lines, (start, end), "upcoming", "draft")

    def tick(self) -> None:
        """Close every active subscription's period that has ended: its invoice, then the next period."""
        now = self.now()
        for sub in list(self.subscriptions.values()):
            while sub["status"] in ("active", "past_due") and sub["_period"][1] <= now:
                ended = sub["_period"]
                before = {it["id"]: _period_of(it) for it in sub["items"]["data"]}
                sub["_cycle"] += 1
                months = sub.get("_months", 1)  # a state file from before intervals: monthly
                sub["_period"] = (ended[1], add_months(sub["billing_cycle_anchor"], sub["_cycle"] * months))
                self._sync_periods(sub)
                # The items whose own period ended with it (all of them unless intervals are mixed):
                # metered usage of that period in arrears, licensed items' next period in advance.
                usage = {k: p for k, p in before.items() if p[1] == ended[1]}
                renewed = {it["id"]: _period_of(it) for it in sub["items"]["data"] if it["id"] in usage}
                if sub["cancel_at_period_end"]:
                    self._invoice(sub, usage=usage, licensed={}, period=ended, reason="subscription_cycle")
                    self.cancel_subscription(sub)
                    break
                self._invoice(sub, usage=usage, licensed=renewed, period=ended, reason="subscription_cycle")

    # -- the emulator's own controls (not Stripe's API) --------------------------------------------------
    def _emulator_route(self, method: str, parts: list[str], form: dict[str, Any]) -> dict[str, Any] | None:
        if method != "POST":
            return None
        if len(parts) == 4 and parts[:2] == ["checkout", "sessions"]:
            session = self.sessions.get(parts[2])
            if session is None:
                raise no_such("checkout session", parts[2])
            if parts[3] == "complete":
                payment = form.get("payment_status") or "paid"
                if payment not in ("paid", "unpaid"):
                    raise StripeApiError(400, "payment_status is paid or unpaid", param="payment_status")
                return self.complete_session(session, payment)
            if parts[3] == "async_payment":
                outcome = form.get("outcome") or "succeeded"
                if outcome not in ("succeeded", "failed"):
                    raise StripeApiError(400, "outcome is succeeded or failed", param="outcome")
                return self.async_payment(session, outcome)
        if len(parts) == 3 and parts[0] == "subscriptions" and parts[2] == "payment_failed":
            sub = self.subscriptions.get(parts[1])
            if sub is None:
                raise no_such("subscription", parts[1])
            self._set_status(sub, "past_due")
            return self._public(sub, {})
        return None
