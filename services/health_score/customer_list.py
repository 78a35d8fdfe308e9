"""The CS dashboard's customer list: the scored customers joined with what the customers table says of
them (plan, CSM, billing status, suspension, price version), searched and filtered, with the recurring
revenue in each health band — the money at risk in red, to watch in yellow.

Recurring revenue is the monthly base price of the customer's price version (its pinned, grandfathered
version, else the one in effect today; deploy/config/metering.yaml), 0 for a canceled subscription. Usage
charges are left out on purpose: they are not recurring. The list is pure (:func:`customer_list`); the
customers table is read at most every few seconds (:class:`CustomerDirectorySnapshot`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from services.health_score.serving import SERVING
from services.kernel import metrics
from services.plans.model import PlansConfig

log = logging.getLogger(__name__)

BANDS = ("red", "yellow", "green")


@dataclass(frozen=True)
class CustomerFacts:
    customer_id: str
    name: str | None
    plan: str
    csm_owner: str | None
    billing_status: str
    price_version: str | None
    suspended: bool


@dataclass(frozen=True)
class Filters:
    """What the list is narrowed to; None means any."""

    q: str | None = None
    band: str | None = None
    plan: str | None = None
    csm: str | None = None
    suspended: bool | None = None
    segment: str | None = None

    def matches(self, row: Mapping[str, Any]) -> bool:
        if self.q:
            needle = self.q.casefold()
            if (
                needle not in row["customer_id"].casefold()
                and needle not in (row.get("name") or "").casefold()
            ):
                return False
        if self.band is not None and row.get("band") != self.band:
            return False
        if self.plan is not None and row.get("plan") != self.plan:
            return False
        # "none" finds the customers nobody owns yet
        if self.csm is not None and (row.get("csm_owner") or "none") != self.csm:
            return False
        if self.suspended is not None and bool(row.get("suspended")) != self.suspended:
            return False
        return self.segment is None or row.get("segment") == self.segment


def monthly_revenue(
    facts: CustomerFacts | None,
    plan: str | None,
    plans: PlansConfig,
    today: date,
    prices: dict[tuple[str, str | None], Decimal] | None = None,
) -> Decimal:
    """The customer's recurring revenue per month: its price version's base price (0 when canceled or the
    plan is unknown). ``prices``: a memo of base prices by (plan, price version) for ``today``, shared by
    the rows of one day (resolving a price version is most of a row's cost)."""
    if facts is not None and facts.billing_status == "canceled":
        return Decimal(0)
    slug = facts.plan if facts is not None else plan
    if slug is None:
        return Decimal(0)
    version = facts.price_version if facts is not None else None
    if prices is not None:
        found = prices.get((slug, version))
        if found is not None:
            return found
    price = plans.price_for(slug, today, version)
    base = price.base_price if price is not None else Decimal(0)
    if prices is not None:
        prices[(slug, version)] = base
    return base


def _money(amount: Decimal, minor_unit: int = 2) -> str:
    return str(amount.quantize(Decimal(1).scaleb(-minor_unit)))


# (the score summary it was built from, the customer's facts, the row as answered, its revenue)
_Row = tuple[Mapping[str, Any], "CustomerFacts | None", dict[str, Any], Decimal]


def _row(
    summary: Mapping[str, Any],
    known: CustomerFacts | None,
    plans: PlansConfig,
    today: date,
    prices: dict[tuple[str, str | None], Decimal] | None,
) -> _Row:
    mrr = monthly_revenue(known, summary.get("plan"), plans, today, prices)
    row = {
        **summary,
        "name": known.name if known else None,
        # The customers table is the authority on the plan (a score has the plan it was computed with).
        "plan": known.plan if known else summary.get("plan"),
        "csm_owner": known.csm_owner if known else None,
        "billing_status": known.billing_status if known else None,
        "suspended": known.suspended if known else False,
        "mrr": _money(mrr),
    }
    return summary, known, row, mrr


class ListRows:
    """The list's rows kept between requests, so a request only filters them and adds up the bands: a row
    is built again only when its customer's score summary changed (the serving cache makes a new one per
    score), its customers-table facts changed, or the day did (the price in effect). Rows are shared by
    the answers: callers must not change them. Holds the customers of the latest ``ranked`` only."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._day: date | None = None
        self._plans: PlansConfig | None = None
        self._prices: dict[tuple[str, str | None], Decimal] = {}
        metrics.track_size(SERVING.labels("list_rows"), self, len)

    def __len__(self) -> int:
        return len(self._rows)

    def rows(
        self,
        ranked: Iterable[Mapping[str, Any]],
        facts: Mapping[str, CustomerFacts],
        plans: PlansConfig,
        today: date,
    ) -> list[_Row]:
        if today != self._day or plans is not self._plans:
            self._rows, self._prices, self._day, self._plans = {}, {}, today, plans
        old, prices = self._rows, self._prices
        fresh: dict[str, _Row] = {}
        out = []
        for summary in ranked:
            cid = summary["customer_id"]
            known = facts.get(cid)
            entry = old.get(cid)
            if entry is None or entry[0] is not summary or (entry[1] is not known and entry[1] != known):
                entry = _row(summary, known, plans, today, prices)
            elif entry[1] is not known:  # the directory was read again, the same facts
                entry = (summary, known, entry[2], entry[3])
            fresh[cid] = entry
            out.append(entry)
        # Replaced whole (one store): concurrent requests on the thread pool each see a consistent dict.
        self._rows = fresh
        return out


def customer_list(
    ranked: Iterable[Mapping[str, Any]],
    facts: Mapping[str, CustomerFacts],
    plans: PlansConfig,
    filters: Filters,
    today: date,
    rows: ListRows | None = None,
) -> dict[str, Any]:
    """The scored customers, riskiest first, each with its plan, CSM, suspension and monthly revenue, those
    ``filters`` keep; and per band the customers and the recurring revenue among them (after the filters,
    so a CSM sees their own money at risk). ``rows``: the rows kept from the previous call (the API's)."""
    if rows is not None:
        entries = rows.rows(ranked, facts, plans, today)
    else:
        prices: dict[tuple[str, str | None], Decimal] = {}
        entries = [_row(s, facts.get(s["customer_id"]), plans, today, prices) for s in ranked]
    listed = []
    per_band: dict[str, dict[str, Any]] = {b: {"customers": 0, "mrr": Decimal(0)} for b in BANDS}
    for _, _, row, mrr in entries:
        if filters.matches(row):
            listed.append(row)
            band = per_band.setdefault(row.get("band") or "red", {"customers": 0, "mrr": Decimal(0)})
            band["customers"] += 1
            band["mrr"] += mrr
    return {
        "customers": listed,
        "total": len(listed),
        "currency": plans.currency,
        "revenue_at_risk": {b: {**v, "mrr": _money(v["mrr"])} for b, v in per_band.items()},
    }


class CustomerDirectorySnapshot:
    """The customers table as the list needs it, read again when older than ``max_age`` seconds: a page
    view or a list call costs one indexed scan at most every few seconds, not one per request.

    Only the first call waits for the scan. After that a stale snapshot is still served while one
    background thread reads the table again: with the scan on the request path, one list request every
    ``max_age`` paid a full read of the customers table (and the requests behind it waited on the lock),
    which is what its p99 measured. A failed read keeps the snapshot and is retried by the next call."""

    def __init__(self, connect: Callable[[], AbstractContextManager[Any]], max_age: float = 5.0) -> None:
        self.connect = connect
        self.max_age = max_age
        self._facts: dict[str, CustomerFacts] = {}
        metrics.track_size(SERVING.labels("directory"), self, lambda s: len(s._facts))
        self._read_at = float("-inf")
        self._first = threading.Lock()
        self._refreshing = threading.Lock()  # held while a background read runs: at most one at a time

    def get(self) -> dict[str, CustomerFacts]:
        if self._read_at == float("-inf"):
            with self._first:
                if self._read_at == float("-inf"):  # nothing to serve yet: this call waits for it
                    self._facts = self._read()
                    self._read_at = time.monotonic()
        elif time.monotonic() - self._read_at > self.max_age and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="health-list-directory", daemon=True).start()
        return self._facts

    def _refresh(self) -> None:
        try:
            self._facts = self._read()
            self._read_at = time.monotonic()
        except Exception:
            log.warning("reading the customers table for the customer list failed; serving the last read")
        finally:
            self._refreshing.release()

    def _read(self) -> dict[str, CustomerFacts]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT customer_id, name, plan, csm_owner, billing_status, price_version,"
                " suspended_at IS NOT NULL AND (suspended_until IS NULL OR suspended_until > now())"
                " FROM customers"
            ).fetchall()
        return {
            str(r[0]): CustomerFacts(str(r[0]), r[1], str(r[2]), r[3], str(r[4]), r[5], bool(r[6]))
            for r in rows
        }
