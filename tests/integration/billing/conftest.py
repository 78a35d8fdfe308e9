"""Fixtures of the billing integration tests: the metering world, a Stripe double, the reporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.billing.harness import Billing
from tests.integration.metering.conftest import metering  # noqa: F401 - the same fixture, reused
from tests.integration.metering.harness import Metering
from tests.stripe_double import StripeDouble


@pytest.fixture
def double() -> Iterator[StripeDouble]:
    d = StripeDouble().serve()
    yield d
    d.close()


@pytest.fixture
def billing(metering: Metering, double: StripeDouble) -> Iterator[Billing]:  # noqa: F811
    world = Billing(metering, double)
    try:
        yield world
    finally:
        world.close()
