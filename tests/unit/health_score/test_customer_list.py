"""The CS dashboard's customer list: search and filters (band, plan, CSM, suspended) over the scored
customers joined with the customers table, and the recurring revenue per band — computed by hand from the
real price book (deploy/config/metering.yaml: starter 29, growth 99, pro 49 or grandfathered 39,
enterprise 999)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from services.health_score import dashboard
from services.health_score.customer_list import CustomerFacts, Filters, ListRows, customer_list
from services.plans.loader import load_config

TODAY = date(2026, 12, 5)


def summary(cid: str, band: str, score: int, plan: str = "starter") -> dict[str, Any]:
    return {
        "customer_id": cid,
        "score": score,
        "band": band,
        "segment": "self_serve",
        "plan": plan,
        "trend": 0,
        "trend_direction": "flat",
        "churn_risk": 0.5,
        "computed_at": 1,
        "sparkline": [score],
    }


RANKED = [
    summary("acme", "red", 12),
    summary("globex", "red", 20),
    summary("initech", "yellow", 55),
    summary("umbrella", "green", 80),
    summary("hooli", "green", 90),
    summary("ghost", "red", 5, plan="growth"),  # scored, but not in the customers table (yet)
]
FACTS = {
    "acme": CustomerFacts("acme", "Acme Corp", "pro", "dana", "active", "pro-2025-01", False),  # 39
    "globex": CustomerFacts("globex", "Globex", "enterprise", "lee", "past_due", None, False),  # 999
    "initech": CustomerFacts("initech", "Initech", "starter", None, "active", None, True),  # 29
    "umbrella": CustomerFacts("umbrella", None, "growth", "dana", "active", None, False),  # 99
    "hooli": CustomerFacts("hooli", "Hooli", "pro", "lee", "canceled", None, False),  # canceled: 0
}


@pytest.fixture(scope="module")
def plans() -> Any:
    return load_config()


def revenue(answer: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {b: (v["customers"], v["mrr"]) for b, v in answer["revenue_at_risk"].items()}


def test_recurring_revenue_per_band_uses_each_customers_price_version(plans) -> None:
    answer = customer_list(RANKED, FACTS, plans, Filters(), TODAY)
    assert answer["total"] == 6
    assert answer["currency"] == "USD"
    # red: acme 39 (grandfathered pro) + globex 999 + ghost 99 (growth, from its score's plan)
    assert revenue(answer) == {"red": (3, "1137.00"), "yellow": (1, "29.00"), "green": (2, "99.00")}
    by_id = {c["customer_id"]: c for c in answer["customers"]}
    assert by_id["acme"]["plan"] == "pro"  # the customers table, not the score's plan
    assert by_id["hooli"]["mrr"] == "0.00"
    assert [c["customer_id"] for c in answer["customers"]] == [s["customer_id"] for s in RANKED]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(q="CORP"), ["acme"]),  # the name, case-insensitive
        (Filters(q="ini"), ["initech"]),  # the id
        (Filters(band="red"), ["acme", "globex", "ghost"]),
        (Filters(plan="pro"), ["acme", "hooli"]),
        (Filters(csm="dana"), ["acme", "umbrella"]),
        (Filters(csm="none"), ["initech", "ghost"]),  # nobody owns them
        (Filters(suspended=True), ["initech"]),
        (Filters(suspended=False, band="green", csm="lee"), ["hooli"]),
    ],
)
def test_search_and_filters_narrow_the_list(plans, filters: Filters, expected: list[str]) -> None:
    answer = customer_list(RANKED, FACTS, plans, filters, TODAY)
    assert [c["customer_id"] for c in answer["customers"]] == expected
    assert answer["total"] == len(expected)


def test_the_revenue_follows_the_filters_so_a_csm_sees_their_own_money_at_risk(plans) -> None:
    answer = customer_list(RANKED, FACTS, plans, Filters(csm="lee"), TODAY)
    assert revenue(answer) == {"red": (1, "999.00"), "yellow": (0, "0.00"), "green": (1, "0.00")}


def test_the_overview_page_shows_the_filters_the_revenue_and_escapes_tenant_text(plans) -> None:
    hostile = {**FACTS["acme"].__dict__, "name": "<script>x</script>", "csm_owner": "<b>eve</b>"}
    facts = {**FACTS, "acme": CustomerFacts(**hostile)}
    filters = Filters(q="<q>", csm="lee")
    html = dashboard.overview(
        customer_list(RANKED, facts, plans, Filters(), TODAY), filters=filters, plans=["free", "pro"]
    )
    assert 'id="rev-red" data-mrr="1137.00"' in html
    assert "<b>eve</b>" not in html
    assert "&lt;b&gt;eve&lt;/b&gt;" in html
    assert 'value="&lt;q&gt;"' in html
    assert 'data-filtered="1"' in html
    assert '<span class="tag">suspended</span>' in html  # initech


def test_kept_rows_answer_exactly_as_rows_built_per_request_and_are_rebuilt_only_when_their_inputs_change(
    plans,
) -> None:
    """The API keeps the list's rows between requests (ListRows): whatever changed in between — a score,
    a customer's facts, the directory read again, the day — the answer equals the one built from scratch,
    and a row is built again only for what changed."""
    rows = ListRows()
    every = [Filters(), Filters(band="red"), Filters(csm="lee"), Filters(q="corp"), Filters(suspended=True)]

    def check(ranked: list[dict[str, Any]], facts: dict[str, CustomerFacts], today: date) -> None:
        for filters in every:
            kept = customer_list(ranked, facts, plans, filters, today, rows)
            assert kept == customer_list(ranked, facts, plans, filters, today)

    check(RANKED, FACTS, TODAY)
    first = {
        c["customer_id"]: c for c in customer_list(RANKED, FACTS, plans, Filters(), TODAY, rows)["customers"]
    }
    # a new score for globex (the serving cache makes a new summary): only its row is new
    rescored = [summary("globex", "green", 95) if s["customer_id"] == "globex" else s for s in RANKED]
    check(rescored, FACTS, TODAY)
    again = {
        c["customer_id"]: c
        for c in customer_list(rescored, FACTS, plans, Filters(), TODAY, rows)["customers"]
    }
    assert again["globex"] is not first["globex"]
    assert again["globex"]["band"] == "green"
    assert all(again[c] is first[c] for c in first if c != "globex")
    # the directory read again: equal facts keep their rows; acme cancels: its revenue drops to 0
    reread = {c: CustomerFacts(**f.__dict__) for c, f in FACTS.items()}
    reread["acme"] = CustomerFacts(**{**FACTS["acme"].__dict__, "billing_status": "canceled"})
    check(rescored, reread, TODAY)
    later = {
        c["customer_id"]: c
        for c in customer_list(rescored, reread, plans, Filters(), TODAY, rows)["customers"]
    }
    assert later["acme"]["mrr"] == "0.00"
    assert later["initech"] is again["initech"]
    # the next day (another price may be in effect), a customer gone from the scores, one added
    check([*rescored[1:], summary("newco", "yellow", 50, plan="pro")], reread, date(2027, 1, 2))
    assert len(rows) == len(RANKED)


class _Table:
    """A customers table behind ``connect()``: each read returns the current rows; a read can be held
    (``gate``) or made to fail, to see what the list is served meanwhile."""

    def __init__(self) -> None:
        import threading

        self.rows = [("c1", "One", "starter", None, "active", None, False)]
        self.reads = 0
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def connect(self) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def conn() -> Any:
            table = self

            class Conn:
                def execute(self, _sql: str) -> Any:
                    table.reads += 1
                    table.started.set()
                    assert table.gate.wait(60)
                    if table.fail:
                        raise OSError("database down")
                    rows = list(table.rows)

                    class Cursor:
                        def fetchall(self) -> list[Any]:
                            return rows

                    return Cursor()

            yield Conn()

        return conn()


def test_the_directory_is_read_once_and_then_refreshed_off_the_request_path() -> None:
    import threading
    import time

    from services.health_score.customer_list import CustomerDirectorySnapshot

    table = _Table()
    snapshot = CustomerDirectorySnapshot(table.connect, max_age=0.0)
    assert set(snapshot.get()) == {"c1"}  # the first call waits: nothing to serve before it
    assert table.reads == 1

    # Stale: the call returns the last read at once while one background read runs (held here), and
    # further calls meanwhile start no second read.
    table.gate.clear()
    table.started.clear()
    table.rows.append(("c2", "Two", "pro", None, "active", None, False))
    assert set(snapshot.get()) == {"c1"}
    assert table.started.wait(30)
    assert set(snapshot.get()) == {"c1"}
    assert table.reads == 2
    table.gate.set()
    deadline = time.monotonic() + 30
    while set(snapshot.get()) != {"c1", "c2"}:
        assert time.monotonic() < deadline, "the background read was never served"
        time.sleep(0.01)

    # A failed read keeps serving the last snapshot; the next call tries again.
    table.fail = True
    reads = table.reads
    assert set(snapshot.get()) == {"c1", "c2"}
    deadline = time.monotonic() + 30
    while table.reads < reads + 2:
        assert set(snapshot.get()) == {"c1", "c2"}
        assert time.monotonic() < deadline, "a failed read was not retried"
        time.sleep(0.01)
    assert threading.active_count() < 50
