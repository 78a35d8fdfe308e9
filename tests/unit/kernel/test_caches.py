"""The kernel's BoundedCache: least recently used out past its size, entries expire after the TTL, and its
gauge equals its size after every change; and metrics.track_size, the scrape-time size gauge."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from services.kernel import metrics
from services.kernel.caches import BoundedCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_least_recently_used_entry_goes_first_and_the_gauge_follows_the_size() -> None:
    registry = CollectorRegistry()
    gauge = metrics.gauge("plg_test_cache_entries", "test", registry=registry)
    cache: BoundedCache[str, int] = BoundedCache(2, gauge=gauge)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)  # so b goes
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)
    assert len(cache) == 2
    assert cache.evictions == 1
    assert registry.get_sample_value("plg_test_cache_entries") == 2
    assert cache.pop("a") == 1
    assert registry.get_sample_value("plg_test_cache_entries") == 1
    cache.clear()
    assert registry.get_sample_value("plg_test_cache_entries") == 0


def test_entries_expire_after_the_ttl_counted_from_when_the_value_was_read() -> None:
    clock = Clock()
    cache: BoundedCache[str, str] = BoundedCache(10, ttl=5.0, clock=clock)
    cache.put("fresh", "x")
    cache.put("read-earlier", "y", stored_at=clock.now - 4.0)
    clock.now += 2.0
    assert cache.get("fresh") == "x"
    assert cache.get("read-earlier") is None  # 6 s old: gone, and dropped
    assert len(cache) == 1
    clock.now += 3.0
    assert cache.peek("fresh") is None
    assert "fresh" not in cache


def test_add_reports_a_key_only_the_first_time_and_discard_where_drops_by_key() -> None:
    cache: BoundedCache[tuple[str, str], bool] = BoundedCache(100)
    assert cache.add(("acme", "p1"), True)
    assert not cache.add(("acme", "p1"), True)
    cache.add(("acme", "p2"), True)
    cache.add(("globex", "p1"), True)
    assert cache.discard_where(lambda key: key[0] == "acme") == 2
    assert list(cache.keys()) == [("globex", "p1")]


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache: BoundedCache[str, int] = BoundedCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_track_size_sums_live_owners_at_refresh_and_forgets_dropped_ones() -> None:
    registry = CollectorRegistry()
    gauge = metrics.gauge("plg_test_tracked_entries", "test", registry=registry)

    class Owner:
        def __init__(self, n: int) -> None:
            self.items = list(range(n))

    first, second = Owner(3), Owner(4)
    module_level: set[str] = {"a", "b"}
    metrics.track_size(gauge, first, lambda o: len(o.items))
    metrics.track_size(gauge, second, lambda o: len(o.items))
    metrics.track_size(gauge, module_level, len)  # a set cannot be weakly referenced: held
    metrics.refresh_sizes()
    assert registry.get_sample_value("plg_test_tracked_entries") == 9
    second.items.append(0)
    del first
    gc.collect()
    metrics.refresh_sizes()
    assert registry.get_sample_value("plg_test_tracked_entries") == 7
