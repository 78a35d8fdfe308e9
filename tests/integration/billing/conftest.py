"""Fixtures of the billing integration tests: the metering world, a Stripe double, the reporter."""

from __future__ import annotations

import time
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


class Clock:
    """Wall-clock time moved by the test (the emulator's periods end when the test says)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def move_to(self, at_ms: int) -> None:
        self.offset = at_ms / 1000 - time.time()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clocked(metering: Metering, clock: Clock) -> Iterator[Billing]:  # noqa: F811
    """A billing world whose Stripe emulator runs on ``clock``."""
    double = StripeDouble(clock=clock).serve()
    world = Billing(metering, double)
    try:
        yield world
    finally:
        world.close()
        double.close()
