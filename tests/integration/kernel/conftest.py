"""Fixtures for the kernel's integration tests: small fresh topics and a helper to read them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from services.kernel.provision import admin_client, provision_topics
from services.kernel.settings import KafkaSettings
from services.kernel.topics import TopicSpec


@pytest.fixture
def make_topic(kafka_settings: KafkaSettings, topic_prefix: str) -> Iterator[Callable[..., str]]:
    """Factory: ``make_topic("orders", partitions=3)`` creates ``<fresh prefix>orders`` and returns its name.
    Topics are deleted after the test."""
    created: list[str] = []

    def make(name: str = "topic", partitions: int = 1, cleanup_policy: str = "delete") -> str:
        spec = TopicSpec(f"{topic_prefix}{name}", partitions, None, cleanup_policy=cleanup_policy)  # type: ignore[arg-type]
        created.extend(provision_topics(kafka_settings, [spec]))
        return spec.name

    yield make
    if created:
        admin = admin_client(kafka_settings)
        for future in admin.delete_topics(created, operation_timeout=30).values():
            # Best effort: names are unique per test, a leftover topic bothers nobody.
            with contextlib.suppress(Exception):
                future.result()


@pytest.fixture
def group_id(topic_prefix: str) -> str:
    return f"{topic_prefix}group-{uuid.uuid4().hex[:6]}"
