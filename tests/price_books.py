"""Price books for tests of billing windows: the seeds' book plus an annual plan, written where the services
and the CLI read a book from (``config_path=`` / ``PLG_METERING_CONFIG``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.plans.loader import config_path


def annual_plan(
    slug: str, usage_billing: str, *, version: str | None = None, base_price: str = "490.00",
    limit: int = 50_000, hard_limit: bool = False, overage_unit_price: str = "0.001",
) -> dict[str, Any]:  # fmt: skip
    """A plan billed annually (seed 003 ``meteringWindow: annual``) whose requests are limited and included
    up to ``limit`` per usage period: a month (``usage_billing: monthly``) or the year (``per_period``)."""
    return {
        "slug": slug, "name": slug, "features": {"sso": True},
        "meters": {"api_requests": {"limit": limit, "hard_limit": hard_limit}},
        "prices": [{
            "version": version or f"{slug}-2025", "effective_date": "2025-01-01", "base_price": base_price,
            "billing_window": "annual", "usage_billing": usage_billing,
            "meters": {"api_requests": {"included": limit, "overage_unit_price": overage_unit_price}},
        }],
    }  # fmt: skip


def write_book(directory: Path, *plans: dict[str, Any]) -> Path:
    """The seeds' book with ``plans`` added, as ``directory/metering.yaml``."""
    raw = yaml.safe_load(config_path().read_text())
    raw["plans"] += list(plans)
    path = directory / "metering.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
