"""Prometheus metrics shared by the services, and get-or-create helpers for the services' own.

Every metric is named ``plg_<what>_<unit>``. Collectors are created once per registry and process: the
helpers return the existing collector when asked again with the same name (several consumers, or several
tests, in one process would otherwise hit prometheus-client's "Duplicated timeseries" error). Label
values must stay low-cardinality: topic, partition, group, service, error code — never a customer id.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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
    "refresh_sizes",
    "render",
    "track_size",
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


# Size gauges read at scrape time: gauge -> [(owner or a weak reference to it, size of the owner)]. A plain
# ``.set()`` at every insert would sit on hot paths (ingest's and enrichment's memo caches of names and
# keys); ``Gauge.set_function`` is invisible under the multiprocess collector (ingest's workers), whereas a
# value ``set`` just before rendering is written where that collector reads it.
_sized: dict[int, tuple[Gauge, list[tuple[Any, Callable[[Any], int]]]]] = {}


def track_size(gauge: Gauge, owner: Any, size: Callable[[Any], int]) -> None:
    """Make ``gauge`` (a labelled child or a plain gauge) read ``size(owner)`` at every scrape, summed over
    every owner tracked on it (one per encoder, cache, partitioner...). The owner is held by a weak
    reference when it can be (an object dropped stops counting); a module-level set or dict is held."""
    try:
        ref: Any = weakref.ref(owner)
    except TypeError:
        ref = lambda: owner  # noqa: E731 - builtins (set, dict) cannot be weakly referenced
    with _lock:
        _sized.setdefault(id(gauge), (gauge, []))[1].append((ref, size))


def refresh_sizes() -> None:
    """Set every tracked size gauge to its current total (``render`` calls it; tests may too)."""
    with _lock:
        tracked = []
        for gauge, owners in _sized.values():
            owners[:] = [(ref, size) for ref, size in owners if ref() is not None]
            tracked.append((gauge, list(owners)))
    for gauge, live in tracked:
        total = 0
        for ref, size in live:
            owner = ref()
            if owner is not None:
                total += size(owner)
        gauge.set(total)


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry`` and its content type (size gauges refreshed first)."""
    refresh_sizes()
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
