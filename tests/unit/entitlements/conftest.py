"""The entitlement unit tests share the metering tests' plans config, clock and customer helper."""

from __future__ import annotations

import pytest

from services.plans import PlansConfig, parse_config
from tests.unit.metering.conftest import CONFIG


@pytest.fixture
def config() -> PlansConfig:
    return parse_config(CONFIG)
