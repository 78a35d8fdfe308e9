"""The kernel's one bounded in-memory cache: least recently used out past a size, entries expire after a TTL,
and a Prometheus gauge that always equals its size.

Every per-customer or per-person map a service keeps in memory in front of a source of truth (PostgreSQL
rows, a topic) uses it, so a flood of random ids costs evictions — and a re-read from the source when an
evicted id comes back — never memory. The bound of each one is a setting of its service, and the table in
docs/operations.md ("Memory bounds") lists them all with their gauges. State that must not be dropped (it
*is* the truth until a commit) uses :class:`~services.kernel.processing.spill.SpillMap` instead, which moves
entries to disk rather than forgetting them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SizeGauge(Protocol):
    """A prometheus-client ``Gauge`` (or one labelled child of one)."""

    def set(self, value: float) -> None: ...


class BoundedCache(Generic[K, V]):
    """At most ``max_entries`` entries; the least recently used (read or written) goes first. With ``ttl``
    (seconds), an entry older than that reads as absent and is dropped on that read, or when an insert
    finds it at the old end. ``gauge`` is set to the size after every change (an explicit ``set``, not a
    scrape-time function, so it also works under prometheus-client's multiprocess mode).

    Values are never None (None is how a miss reads). Thread-safe: one lock around each call (request
    handlers on a thread pool, Kafka threads, the loop).
    ``max_entries`` 0 keeps nothing (every ``get`` misses): a way to turn a cache off.
    """

    __slots__ = ("_clock", "_data", "_gauge", "_lock", "evictions", "max_entries", "ttl")

    def __init__(
        self,
        max_entries: int,
        *,
        ttl: float | None = None,
        gauge: SizeGauge | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be at least 0")
        self.max_entries = max_entries
        self.ttl = ttl
        self._gauge = gauge
        self._clock = clock
        # key -> (stored at, value), least recently used first
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0  # entries dropped for the size bound (not for their age)
        self._measure()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return self.peek(key) is not None  # type: ignore[arg-type]

    def _measure(self) -> None:
        if self._gauge is not None:
            self._gauge.set(len(self._data))

    def _fresh(self, stored_at: float, now: float) -> bool:
        return self.ttl is None or now - stored_at < self.ttl

    def get(self, key: K) -> V | None:
        """The value (and it becomes the most recently used), or None: absent or expired."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if self.ttl is not None and not self._fresh(entry[0], self._clock()):
                del self._data[key]
                self._measure()
                return None
            self._data.move_to_end(key)
            return entry[1]

    def peek(self, key: K) -> V | None:
        """Like :meth:`get`, without changing the order or dropping an expired entry."""
        entry = self._data.get(key)
        if entry is None or (self.ttl is not None and not self._fresh(entry[0], self._clock())):
            return None
        return entry[1]

    def put(self, key: K, value: V, *, stored_at: float | None = None) -> None:
        """Insert or replace; ``stored_at`` (the cache's clock) dates a value read before now, so its age
        counts from the read, not from this call."""
        with self._lock:
            self._put(key, value, stored_at)

    def _put(self, key: K, value: V, stored_at: float | None) -> None:
        if self.max_entries == 0:
            return
        if stored_at is None:
            stored_at = self._clock() if self.ttl is not None else 0.0  # without a TTL the age is never read
        data = self._data
        data[key] = (stored_at, value)
        data.move_to_end(key)
        while len(data) > self.max_entries:
            data.popitem(last=False)
            self.evictions += 1
        self._measure()

    def add(self, key: K, value: V) -> bool:
        """Insert only when absent (or expired): True if inserted — "seen for the first time"."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and (self.ttl is None or self._fresh(entry[0], self._clock())):
                self._data.move_to_end(key)
                return False
            self._put(key, value, None)
            return True

    def pop(self, key: K) -> V | None:
        with self._lock:
            entry = self._data.pop(key, None)
            if entry is not None:
                self._measure()
            return None if entry is None else entry[1]

    def discard_where(self, doomed: Callable[[K], bool]) -> int:
        """Drop every entry whose key ``doomed`` returns True for (a customer's rows, an erased person);
        returns how many."""
        with self._lock:
            keys = [k for k in self._data if doomed(k)]
            for key in keys:
                del self._data[key]
            if keys:
                self._measure()
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._measure()

    def values(self) -> list[V]:
        """A snapshot of the values, least recently used first."""
        with self._lock:
            return [value for _, value in self._data.values()]

    def keys(self) -> Iterator[K]:
        """A snapshot of the keys, least recently used first."""
        with self._lock:
            return iter(list(self._data))
