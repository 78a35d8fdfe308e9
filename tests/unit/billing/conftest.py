"""The Stripe emulator the billing unit tests talk to over real HTTP: served in the test process on a clock
the test moves, and a ``stripe`` SDK client for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from services.stripe_emulator.emulator import StripeEmulator

KEY = "sk_test_emulator"


class Clock:
    """The emulator's time, moved by the test (``clock.now = ...``); starts at the current whole second."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emulator(clock: Clock) -> Iterator[StripeEmulator]:
    e = StripeEmulator(clock=clock).serve()
    yield e
    e.close()


def client(emulator: StripeEmulator, timeout: float = 10) -> stripe.StripeClient:
    """The SDK as plg's gateway uses it: the emulator's address, no retries of its own."""
    return stripe.StripeClient(
        KEY,
        base_addresses={"api": emulator.url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


@pytest.fixture
def sdk(emulator: StripeEmulator) -> stripe.StripeClient:
    return client(emulator)


def meter_event(
    sdk: stripe.StripeClient, customer: str, value: int | str, at: float, identifier: str, **more: Any
) -> Any:
    """One ``api_requests`` meter event for a Stripe customer at ``at`` (epoch seconds)."""
    return sdk.v1.billing.meter_events.create(
        {
            "event_name": "api_requests",
            "payload": {"stripe_customer_id": customer, "value": str(value)},
            "timestamp": int(at),
            "identifier": identifier,
            **more,
        }
    )
