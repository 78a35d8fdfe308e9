"""Sticky assignments are bounded and owned (issue 14): rows only for the caller's customer, none for a
made-up customer or a context without one, one namespace per customer, and rows unused for
GROWTH_STICKY_RETENTION_DAYS deleted while a row in use has its age moved forward."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg

from tests.auth_support import bearer, customer_key, new_customer
from tests.integration.growth.conftest import STICKY_AB_FLAG, GrowthFactory


def _rows(url: str, customer: str | None = None) -> dict[tuple[str, str], tuple[str, float]]:
    """(customer, person) -> (variant, age in days) of this test's flag's rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT customer_id, sticky_key, variant, extract(epoch FROM now() - last_used_at) / 86400"
            " FROM growth_sticky_assignments WHERE sticky_key LIKE %s",
            (f"%|user_id|{customer or ''}%",),
        ).fetchall()
    return {(c, k.rsplit("|", 1)[1]): (v, float(age)) for c, k, v, age in rows}


def _age(url: str, customer: str, person: str, days: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        updated = conn.execute(
            "UPDATE growth_sticky_assignments SET last_used_at = now() - make_interval(days => %s)"
            " WHERE customer_id = %s AND sticky_key LIKE %s",
            (days, customer, f"%|user_id|{person}"),
        ).rowcount
    assert updated == 1


def test_sticky_rows_are_the_callers_customers_only_and_unused_ones_expire(
    start_growth: GrowthFactory,
) -> None:
    growth = start_growth(sticky_cache_size=1, sticky_retention_days=30, sticky_prune_interval_seconds=0.5)
    url = growth.settings.database.url.get_secret_value()
    flag = f"sticky_{uuid.uuid4().hex[:8]}"
    a, b = new_customer(growth.settings.database), new_customer(growth.settings.database)
    key_a, key_b = customer_key(growth.settings.database, a), customer_key(growth.settings.database, b)
    p = f"p{uuid.uuid4().hex[:8]}-"  # this test's person ids: p...-1, p...-2, ...
    made_up = f"made-up-{uuid.uuid4().hex[:8]}"
    with growth.admin() as admin, growth.client() as operator, growth.client(token=None) as anon:
        assert admin.put(f"/v1/admin/flags/{flag}", json=STICKY_AB_FLAG).status_code == 201

        def evaluate(headers: dict[str, str] | None, context: dict[str, Any]) -> Any:
            r = (operator if headers is None else anon).post(
                "/v1/flags/evaluate", json={"flag_key": flag, "context": context}, headers=headers or {}
            )
            return r.status_code, r.json()

        status, first = evaluate(bearer(key_a), {"user_id": f"{p}1"})
        assert status == 200, first
        assert evaluate(bearer(key_a), {"user_id": f"{p}2"})[0] == 200
        assert evaluate(bearer(key_b), {"user_id": f"{p}1"})[0] == 200  # the same id at another customer
        # A context naming another customer: refused, and nothing is stored for it.
        assert evaluate(bearer(key_a), {"customer_id": made_up, "user_id": f"{p}3"})[0] == 403
        assert evaluate(bearer(key_a), {"customer_id": b, "user_id": f"{p}4"})[0] == 403
        # An operator naming a customer that does not exist: 404; without a customer: answered, not stored.
        assert evaluate(None, {"customer_id": made_up, "user_id": f"{p}5"})[0] == 404
        assert evaluate(None, {"user_id": f"{p}6"})[0] == 200

        rows = _rows(url, p)
        assert set(rows) == {(a, f"{p}1"), (a, f"{p}2"), (b, f"{p}1")}
        assert rows[(a, f"{p}1")][0] == first["variant"]

        # Unused beyond the retention: deleted by the pruner. Used within it: its age moves forward.
        _age(url, a, f"{p}1", 45)
        _age(url, a, f"{p}2", 3)
        deadline = time.monotonic() + 60
        while (a, f"{p}1") in _rows(url, p):
            assert time.monotonic() < deadline, "the unused row was not pruned within 60 s"
            time.sleep(0.5)
        assert (a, f"{p}2") in _rows(url, p)
        variant = _rows(url, p)[(a, f"{p}2")][0]
        evaluate(bearer(key_a), {"user_id": f"{p}7"})  # the one-entry cache now holds another person
        status, again = evaluate(bearer(key_a), {"user_id": f"{p}2"})
        assert (status, again["variant"]) == (200, variant)
        deadline = time.monotonic() + 30
        while _rows(url, p)[(a, f"{p}2")][1] > 1:  # the touch is written with the request's flush
            assert time.monotonic() < deadline, "the row in use did not have its age moved forward"
            time.sleep(0.2)
        assert (b, f"{p}1") in _rows(url, p)
