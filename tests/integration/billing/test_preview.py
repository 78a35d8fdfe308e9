"""Previews and simulation: the customer's invoice under another plan or price version, from their real
usage, equal to the calculator's; the route takes the customer's secret key or an operator, never a
publishable key or another customer's; simulate sums revenue per plan under a proposed price book."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import yaml

from services.cli.__main__ import main as plg
from services.kernel import apikeys
from services.plans.invoice import calculate_invoice
from services.plans.loader import config_path, load_config
from services.plans.periods import billing_period
from tests.integration.billing.harness import Billing
from tests.integration.metering.harness import now_ms, wait_for

CONFIG = load_config(None)


def _key(billing: Billing, customer_id: str, kind: str = "secret") -> str:
    with psycopg.connect(billing.db_url, autocommit=True) as conn:
        return apikeys.create_key(conn, customer_id, kind=kind)[1]  # type: ignore[arg-type]


def _operator(billing: Billing) -> str:
    with psycopg.connect(billing.db_url, autocommit=True) as conn:
        return apikeys.create_operator(conn, f"op-{now_ms()}", "viewer")[1]


def test_preview_on_another_plan_equals_the_calculator_and_needs_the_secret_key(
    billing: Billing, monkeypatch, capsys, tmp_path: Path
):
    customer = billing.customer("pro", stripe=False)
    period = billing_period(now_ms(), 1)
    width = period.end_ms - period.start_ms
    for meter, value in (("api_requests", 123_457), ("storage_gb", 61), ("compute_seconds", 400_000)):
        billing.aggregate(customer, value, window_start=period.start_ms, meter=meter,
                          granularity="BILLING_PERIOD", width=width)  # fmt: skip
    reporter = billing.start_reporter()
    usage = {"api_requests": Decimal(123_457), "storage_gb": Decimal(61), "compute_seconds": Decimal(400_000)}
    with reporter.client() as rep:
        headers = {"Authorization": f"Bearer {_key(billing, customer)}"}

        # All three meters' period totals (the ledger may take them in different batches: waiting for the
        # first alone made the comparisons below race the others under load).
        def ledgered() -> dict[str, str]:
            lines = rep.get(f"/v1/invoices/{customer}/upcoming", headers=headers).json()["lines"]
            return {ln["meter"]: ln["usage"] for ln in lines if ln.get("meter")}

        wait_for(
            lambda: ledgered() == {"api_requests": "123457", "storage_gb": "61", "compute_seconds": "400000"},
            what="usage in the ledger",
        )
        # Every plan of the seeds' book, in effect and at each of its versions (pro's grandfathered
        # 39.00 one too): the route and `plg billing preview` both equal the calculator.
        monkeypatch.setenv("DATABASE_URL", billing.db_url)
        monkeypatch.setenv("PLG_TOPIC_PREFIX", billing.metering.prefix)
        cases = [(p.slug, None) for p in CONFIG.plans]
        cases += [(p.slug, v.version) for p in CONFIG.plans for v in CONFIG.price_versions(p.slug)]
        assert ("pro", "pro-2025-01") in cases
        assert {"free", "pro", "starter", "growth", "enterprise"} <= {plan for plan, _ in cases}
        for plan, version in cases:
            params = {"plan": plan} | ({"version": version} if version else {})
            answer = rep.get(f"/v1/invoices/{customer}/preview", params=params, headers=headers)
            assert answer.status_code == 200, answer.text
            price = CONFIG.price_for(plan, period.start.date(), version)
            assert price is not None
            expected = calculate_invoice(customer_id=customer, period=period, price=price, usage=usage)
            assert answer.json() == expected.to_dict(), (plan, version)
            capsys.readouterr()
            argv = ["--json", "billing", "preview", customer, "--plan", plan]
            assert plg(argv + (["--version", version] if version else [])) == 0
            assert json.loads(capsys.readouterr().out) == expected.to_dict(), (plan, version)
            if version == "pro-2025-01":
                assert answer.json()["lines"][0]["amount"] == "39.00"  # the grandfathered version

        op = {"Authorization": f"Bearer {_operator(billing)}"}
        assert (
            rep.get(f"/v1/invoices/{customer}/preview", params={"plan": "growth"}, headers=op).status_code
            == 200
        )
        other = billing.customer("pro", stripe=False)
        # rep sends an operator token on every request: each case asks with a bare client instead
        for who, status in (
            ({}, 401),
            ({"Authorization": f"Bearer {_key(billing, customer, 'publishable')}"}, 403),
            ({"Authorization": f"Bearer {_key(billing, other)}"}, 403),
        ):
            got = httpx.get(
                f"{reporter.url}/v1/invoices/{customer}/preview", params={"plan": "growth"}, headers=who
            )
            assert got.status_code == status, got.text
        bad = rep.get(f"/v1/invoices/{customer}/preview", params={"plan": "platinum"}, headers=headers)
        assert (bad.status_code, bad.json()["code"]) == (400, "unknown_plan")
        bad = rep.get(
            f"/v1/invoices/{customer}/preview", params={"plan": "pro", "version": "x"}, headers=headers
        )
        assert (bad.status_code, bad.json()["code"]) == (400, "unknown_version")
        bad = rep.get(
            f"/v1/invoices/{customer}/preview", params={"plan": "pro", "period": "13-2025"}, headers=headers
        )
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_period")
        route = rep.get(f"/v1/invoices/{customer}/preview", params={"plan": "growth"}, headers=headers).json()

    # The CLI agrees with the route.
    capsys.readouterr()
    assert plg(["--json", "billing", "preview", customer, "--plan", "growth"]) == 0
    assert json.loads(capsys.readouterr().out) == route

    # A proposed book: pro's newest version at 59.00 instead of 49.00.
    proposed = yaml.safe_load(config_path().read_text())
    pro = next(p for p in proposed["plans"] if p["slug"] == "pro")
    pro["prices"][-1]["base_price"] = "59.00"
    book = tmp_path / "proposed.yaml"
    book.write_text(yaml.safe_dump(proposed))
    assert plg(["--json", "billing", "simulate", "--price-book", str(book)]) == 0
    result = json.loads(capsys.readouterr().out)
    mine = next(c for c in result["customers"] if c["customer_id"] == customer)
    assert Decimal(mine["proposed"]) - Decimal(mine["current"]) == Decimal("10.00")
    assert Decimal(result["plans"]["pro"]["change"]) >= Decimal("10.00")
