"""The entitlement API's integration tests run it against a real aggregator: the metering fixture."""

from tests.integration.metering.conftest import metering

__all__ = ["metering"]
