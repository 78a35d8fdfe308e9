"""stripe-mock as the test stack runs it: on loopback only (both listeners), answering the Stripe SDK."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import stripe

from services.devstack import stripe_mock
from services.devstack.config import DEFAULT_ROOT


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.add(address)
    return found


def test_stripe_mock_is_installed_once_and_listens_on_loopback_only(stripe_mock_url: str):
    assert stripe_mock.installed(DEFAULT_ROOT / "bin")
    port = urlsplit(stripe_mock_url).port
    assert port is not None
    assert _listening(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 or ::


def test_the_stripe_sdk_talks_to_it(stripe_mock_url: str):
    client = stripe.StripeClient(
        "sk_test_plglocal", base_addresses={"api": stripe_mock_url}, max_network_retries=0
    )
    meters = client.v1.billing.meters.list()
    assert meters.object == "list"
    event = client.v1.billing.meter_events.create(
        {
            "event_name": "api_requests",
            "payload": {"stripe_customer_id": "cus_1", "value": "3"},
            "identifier": "x",
        }
    )
    assert event.object == "billing.meter_event"
