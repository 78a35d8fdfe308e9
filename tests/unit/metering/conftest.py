"""Shared helpers for the pure metering tests: a config exercising every aggregation, events, a clock."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.customers import Customer
from services.metering_aggregator.model import PartitionState, Rules
from services.plans import parse_config
from services.plans.periods import datetime_to_ms

CONFIG = {
    "version": 1,
    "effective_date": "2025-01-01",
    "currency": "USD",
    "meters": [
        {"slug": "api_requests", "event": "api_call_made", "aggregation": "COUNT", "unit": "request"},
        {
            "slug": "api_users",
            "event": "api_call_made",
            "aggregation": "UNIQUE_COUNT",
            "value_property": "$user_id",
            "unit": "user",
        },
        {
            "slug": "compute_seconds",
            "event": "job_completed",
            "aggregation": "SUM",
            "value_property": "duration_seconds",
            "group_by": ["region"],
            "unit": "second",
        },
        {
            "slug": "storage_gb",
            "event": "storage_measured",
            "aggregation": "MAX",
            "value_property": "gb",
            "unit": "GB",
        },
        {
            "slug": "seats",
            "event": "seats_changed",
            "aggregation": "LATEST",
            "value_property": "seats",
            "unit": "seat",
        },
    ],
    "plans": [
        {
            "slug": "free",
            "name": "Free",
            "upgrade_to": "pro",
            "features": {"sso": False, "api_access": True},
            "meters": {
                "api_requests": {"limit": 10, "hard_limit": True},
                "seats": {"limit": 3, "hard_limit": True},
                "compute_seconds": {"limit": 100, "hard_limit": True},
            },
        },
        {
            "slug": "pro",
            "name": "Pro",
            "upgrade_to": "enterprise",
            "features": {"sso": True, "api_access": True},
            "meters": {
                "api_requests": {"included": 50000, "limit": 50000, "overage_unit_price": "0.001"},
                "seats": {"limit": 50, "hard_limit": True},
                "compute_seconds": {},
                "storage_gb": {"limit": 100},
            },
        },
        {
            "slug": "enterprise",
            "name": "Enterprise",
            "features": {"sso": True, "api_access": True, "audit_log": True},
            "meters": {"api_requests": {}, "seats": {}, "compute_seconds": {}, "storage_gb": {}},
        },
    ],
}

NOW = datetime_to_ms(datetime(2024, 2, 29, 12, 30, tzinfo=UTC))
_seq = itertools.count()


@pytest.fixture
def config():
    return parse_config(CONFIG)


@pytest.fixture
def state(config):
    return PartitionState(0, config, Rules())


def customer(customer_id: str = "acme", plan: str = "free", anchor_day: int = 1) -> Customer:
    return Customer(customer_id, plan, anchor_day)


def event(
    name: str = "api_call_made",
    *,
    customer_id: str = "acme",
    event_id: str | None = None,
    ts: int = NOW,
    user_id: str | None = "u1",
    **properties: Any,
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "customer_id": customer_id,
        "name": name,
        "timestamp": ts,
        "properties": properties,
        "user_id": user_id,
        "anonymous_id": None,
        "session_id": None,
        "ingest": None,
    }
