"""Prometheus metrics shared by the services, and get-or-create helpers for the services' own.

Every metric is named ``plg_<what>_<unit>``. Collectors are created once per registry and process: the
helpers return the existing collector when asked again with the same name (several consumers, or several
tests, in one process would otherwise hit prometheus-client's "Duplicated timeseries" error). Label
values must stay low-cardinality: topic, partition, group, service, error code — never a customer id.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DEAD_LETTERS",
    "KAFKA_CLIENT_ERRORS",
    "REGISTRY",
    "CollectorRegistry",
    "build_info",
    "counter",
    "gauge",
    "histogram",
    "render",
]

_C = TypeVar("_C", Counter, Gauge, Histogram)
_lock = threading.Lock()
_collectors: dict[tuple[int, str], Counter | Gauge | Histogram] = {}


def _get_or_create(
    kind: type[_C],
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    registry: CollectorRegistry,
    **kwargs: object,
) -> _C:
    key = (id(registry), name)
    with _lock:
        existing = _collectors.get(key)
        if existing is not None:
            if not isinstance(existing, kind) or tuple(existing._labelnames) != tuple(labelnames):
                raise ValueError(f"metric {name} already exists as a different {type(existing).__name__}")
            return existing
        collector = kind(name, documentation, labelnames=labelnames, registry=registry, **kwargs)  # type: ignore[arg-type]
        _collectors[key] = collector
        return collector


def counter(
    name: str, documentation: str, labelnames: Sequence[str] = (), registry: CollectorRegistry = REGISTRY
) -> Counter:
    """A counter (exported as ``<name>_total``); created once per registry."""
    return _get_or_create(Counter, name, documentation, labelnames, registry)


def gauge(
    name: str, documentation: str, labelnames: Sequence[str] = (), registry: CollectorRegistry = REGISTRY
) -> Gauge:
    return _get_or_create(Gauge, name, documentation, labelnames, registry)


def histogram(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    registry: CollectorRegistry = REGISTRY,
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
) -> Histogram:
    return _get_or_create(Histogram, name, documentation, labelnames, registry, buckets=tuple(buckets))


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def build_info(service: str, version: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Set ``plg_build_info{service,version} 1`` — lets dashboards join on the running version."""
    gauge("plg_build_info", "Running service and version.", ("service", "version"), registry).labels(
        service, version
    ).set(1)


KAFKA_CLIENT_ERRORS = counter(
    "plg_kafka_client_errors",
    "Errors reported by librdkafka clients (error_cb), by client type and error code.",
    ("client", "code"),
)

DEAD_LETTERS = counter(
    "plg_dead_letters",
    "Records sent to a dead-letter topic, by service, source topic and error code.",
    ("service", "topic", "code"),
)
