"""Fixtures of the metering integration tests: a fresh provisioned catalogue and migrated database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.kernel.db import migrate
from services.kernel.settings import DatabaseSettings, KafkaSettings, SchemaRegistrySettings
from tests.integration.metering.harness import Metering


@pytest.fixture
def metering(
    provisioned,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    database_settings: DatabaseSettings,
) -> Iterator[Metering]:
    migrate(database_settings.url.get_secret_value())
    world = Metering(provisioned.prefix, kafka_settings, registry_settings, database_settings)
    try:
        yield world
    finally:
        world.close()
