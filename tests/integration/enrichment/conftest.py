"""Fixtures of the enrichment integration tests: a fresh catalogue, a migrated database, the harness."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.kernel.db import migrate
from services.kernel.settings import DatabaseSettings, KafkaSettings, SchemaRegistrySettings
from tests.integration.enrichment.harness import EnrichmentWorld


@pytest.fixture
def world(
    provisioned,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    database_settings: DatabaseSettings,
) -> Iterator[EnrichmentWorld]:
    migrate(database_settings.url.get_secret_value())
    w = EnrichmentWorld(provisioned.prefix, kafka_settings, registry_settings, database_settings)
    try:
        yield w
    finally:
        w.close()
