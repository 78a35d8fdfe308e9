"""A map with a memory bound: the most recently written entries in memory, the rest in a local store.

The kernel's one mechanism for per-partition (or per-view) state that may outgrow memory — growth's
activation counters and enrichment's identify links use it as it is; the metering aggregator's dedup ids
use the same store and seal with a layout of their own (packed ids per expiry minute, docs/metering.md).

* **Memory**: at most ``memory`` entries after each :meth:`spill` (the owner calls it where its state is
  durable: after a commit, or on a view's thread); between spills the entries a batch touches are added.
  Memory keeps write order: :meth:`spill` moves the least recently *written* entries to the store.
* **Disk**: ``<prefix><encoded key>`` → encoded value in a :class:`~services.kernel.processing.store.
  LocalStore`. An entry is either in memory or on disk, never both: a read of a spilled entry with
  ``promote`` moves it back (a mutable value changed in place must live in memory to be written back).
* **Nothing is lost**: a read misses memory → a bloom-filtered point lookup in the store, but only once
  something was spilled (``spilled``); below the bound a map never touches the disk.
* **Trust**: the store is a cache of state whose truth is elsewhere (a changelog, a compacted topic).
  :meth:`write_all` writes memory to the store before its owner seals it; :meth:`load_index` re-reads only
  the count. Whoever changes the map after a seal must have unsealed the store first.

Thread-safety: one writer; readers on other threads may call :meth:`get` without ``promote`` (a spill
writes to the store before it drops the entry from memory, so a concurrent reader finds it in one place or
the other).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from services.kernel.processing.store import LocalStore

K = TypeVar("K")
V = TypeVar("V")


class SpillMap(Generic[K, V]):
    """``store=None``: a plain dict (everything in memory, ``memory`` ignored)."""

    __slots__ = (
        "decode_key",
        "decode_value",
        "disk",
        "encode_key",
        "encode_value",
        "mem",
        "memory",
        "prefix",
        "spilled",
        "spilled_total",
        "store",
    )

    def __init__(
        self,
        store: LocalStore | None,
        *,
        prefix: bytes,
        memory: int,
        encode_key: Callable[[K], bytes],
        decode_key: Callable[[bytes], K],
        encode_value: Callable[[V], bytes],
        decode_value: Callable[[bytes], V],
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.memory = max(1, memory)
        self.encode_key = encode_key
        self.decode_key = decode_key
        self.encode_value = encode_value
        self.decode_value = decode_value
        self.mem: dict[K, V] = {}
        self.disk = 0  # entries on disk (exact: every move is counted)
        self.spilled = False  # some entry is on disk: a memory miss must ask the store
        self.spilled_total = 0  # entries ever moved to disk (a metric)

    # -- reads ------------------------------------------------------------------------------------------

    def get(self, key: K, *, promote: bool = False) -> V | None:
        value = self.mem.get(key)
        if value is not None or not self.spilled:
            return value
        assert self.store is not None
        disk_key = self.prefix + self.encode_key(key)
        raw = self.store.get(disk_key)
        if raw is None:
            return None
        value = self.decode_value(raw)
        if promote:
            self.store.db.delete(disk_key)
            self.disk -= 1
            self.mem[key] = value
        return value

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key: K) -> V:
        value = self.get(key, promote=True)
        if value is None:
            raise KeyError(key)
        return value

    def __len__(self) -> int:
        return len(self.mem) + self.disk

    def items(self, disk_prefix: bytes = b"") -> Iterator[tuple[K, V]]:
        """Every entry: memory's, then the store's (a scan of the prefix, narrowed by ``disk_prefix``, the
        start of the encoded keys wanted: for rare walks such as an erasure, not for the hot path). Changing
        the map while walking it is not supported: collect first."""
        yield from list(self.mem.items())
        if self.spilled and self.store is not None:
            cut = len(self.prefix)
            for key, raw in self.store.items(self.prefix + disk_prefix):
                yield self.decode_key(key[cut:]), self.decode_value(raw)

    def keys(self) -> Iterator[K]:
        for key, _ in self.items():
            yield key

    def __iter__(self) -> Iterator[K]:
        return self.keys()

    def values(self) -> Iterator[V]:
        for _, value in self.items():
            yield value

    # -- writes -----------------------------------------------------------------------------------------

    def __setitem__(self, key: K, value: V) -> None:
        """Write ``value``; a key already in memory keeps its place (an in-place write is atomic for readers
        on other threads; :meth:`touch` moves it last). A spilled copy is dropped after memory has it."""
        mem = self.mem
        if key in mem:
            mem[key] = value
            return
        mem[key] = value
        if self.spilled:
            self._drop_from_disk(key)

    def touch(self, key: K) -> None:
        """``key`` (in memory) was written: it becomes the last to leave memory. Single writer only."""
        value = self.mem.pop(key, None)
        if value is not None:
            self.mem[key] = value

    def insert(self, key: K, value: V) -> None:
        """``map[key] = value`` for a key just looked up and found absent (skips the disk check)."""
        self.mem[key] = value

    def pop(self, key: K, default: V | None = None) -> V | None:
        value = self.mem.pop(key, None)
        if value is None and self.spilled:
            value = self._drop_from_disk(key)
        return default if value is None else value

    def __delitem__(self, key: K) -> None:
        if self.pop(key) is None:
            raise KeyError(key)

    def _drop_from_disk(self, key: K) -> V | None:
        assert self.store is not None
        disk_key = self.prefix + self.encode_key(key)
        raw = self.store.get(disk_key)
        if raw is None:
            return None
        self.store.db.delete(disk_key)
        self.disk -= 1
        return self.decode_value(raw)

    def spill(self, slack: float = 0.0) -> int:
        """Move the least recently written entries to the store until memory holds at most ``memory``
        (once it holds more than ``memory * (1 + slack)``: a slack amortises the write batches); returns
        the entries moved."""
        mem = self.mem
        if self.store is None or len(mem) <= self.memory * (1 + slack):
            return 0
        excess = len(mem) - self.memory
        batch = self.store.batch()
        prefix, encode_key, encode_value = self.prefix, self.encode_key, self.encode_value
        moved: list[K] = []
        for key in mem:  # oldest write first
            if len(moved) >= excess:
                break
            batch.put(prefix + encode_key(key), encode_value(mem[key]))
            moved.append(key)
        self.store.write(batch)  # on disk before it leaves memory (readers on other threads)
        self.spilled = True
        for key in moved:
            del mem[key]
        self.disk += len(moved)
        self.spilled_total += len(moved)
        return len(moved)

    # -- the owner's seal and warm load ------------------------------------------------------------------

    def write_all(self) -> None:
        """Write memory's entries to the store (before its owner seals it); memory keeps them too, so use it
        only when the map is about to be closed."""
        if self.store is None or not self.mem:
            return
        batch = self.store.batch()
        for key, value in self.mem.items():
            batch.put(self.prefix + self.encode_key(key), self.encode_value(value))
        self.store.write(batch)

    def load(self, entries: int) -> int:
        """After the owner found its store sealed: every entry is on disk (``entries`` of them, from the
        seal). Memory fills again as entries are read and written; returns the count."""
        self.mem.clear()
        self.disk = entries
        self.spilled = entries > 0
        return entries

    def count_on_disk(self) -> int:
        """The exact number of entries under the prefix (a key scan: used when a seal does not say)."""
        if self.store is None:
            return 0
        return sum(1 for _ in self.store.items(self.prefix))
