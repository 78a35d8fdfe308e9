from __future__ import annotations

import pytest

from services.enrichment.plan import DEFAULT_PLAN_PATH, load_plan, parse_plan
from services.plans import load_config


@pytest.fixture(scope="session")
def metering():
    return load_config()


@pytest.fixture(scope="session")
def default_plan(metering):
    return load_plan(DEFAULT_PLAN_PATH, metering)


@pytest.fixture(scope="session")
def metered(metering):
    return frozenset(m.event for m in metering.meters)


def plan_of(events, **header):
    return parse_plan({"version": 3, "effective_date": "2025-01-01", **header, "events": events})
