"""A partition's local state store: an embedded RocksDB (through ``rocksdict``) next to the changelog.

The changelog topic stays the source of truth; the local store is a warm copy a handler may reuse instead
of replaying the changelog, and a place to put state that would not fit in memory. Its one rule: a store is
trusted only through its **seal** — a metadata record its owner writes last, when the store is complete at
a committed checkpoint (a clean stop or a revoked partition) — and the seal is removed the moment the owner
starts changing the store again. A store without a seal, one that cannot be opened, or one whose files are
damaged is wiped and rebuilt from the changelog; nothing is ever read from a store that is not sealed.

Why rocksdict: a maintained binding of RocksDB (what Kafka Streams and Faust use for the same job) with
wheels for our platform, bloom-filtered point lookups and atomic write batches (docs/dependencies.md).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import orjson
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

log = logging.getLogger(__name__)

#: The seal's key: sorts before every key a handler writes (they start with a printable prefix).
SEAL_KEY = b"\x00seal"
#: Bumped when the layout changes: an older store is then rebuilt, never misread.
FORMAT = 1


class StoreLockedError(RuntimeError):
    """Another process holds this store open (two instances with one instance id on one host)."""


class LocalStore:
    """One RocksDB database per (handler, partition). Keys and values are bytes (``raw_mode``)."""

    def __init__(self, path: Path, *, cache_mb: int = 64, write_buffer_mb: int = 16) -> None:
        self.path = path
        self._options = Options(raw_mode=True)
        self._options.create_if_missing(True)
        self._options.set_paranoid_checks(True)
        table = BlockBasedOptions()
        # Point lookups of ids that are mostly *not* there: a bloom filter answers most of them from memory.
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(cache_mb << 20))
        self._options.set_block_based_table_factory(table)
        self._options.set_write_buffer_size(write_buffer_mb << 20)
        self._options.set_max_write_buffer_number(2)
        # The changelog is what makes state durable; the store only has to be right when sealed, and
        # sealing flushes. So no write-ahead log (a crash leaves the store unsealed: it is rebuilt).
        self._write = WriteOptions()
        self._write.disable_wal = True  # type: ignore[assignment,method-assign]  # a property at run time
        self.rebuilt = False  # True when the store was found damaged and started empty
        self.db = self._open()

    def _open(self) -> Rdict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = Rdict(str(self.path), self._options)
        except Exception as exc:
            if "lock" in str(exc).lower():
                raise StoreLockedError(f"state store {self.path} is held by another process: {exc}") from exc
            log.warning(
                "local state store damaged; starting it empty",
                extra={"path": str(self.path), "error": str(exc)},
            )
            shutil.rmtree(self.path, ignore_errors=True)
            self.rebuilt = True
            db = Rdict(str(self.path), self._options)
        db.set_write_options(self._write)
        return db

    # -- the seal ----------------------------------------------------------------------------------------

    def seal_of(self) -> dict[str, Any] | None:
        """The seal's content when the store is sealed (and of this format), else None."""
        try:
            raw = self.db.get(SEAL_KEY)
            if raw is None:
                return None
            seal = orjson.loads(raw)
        except Exception:
            log.warning("unreadable seal in a local state store", extra={"path": str(self.path)})
            return None
        if not isinstance(seal, dict) or seal.get("format") != FORMAT:
            return None
        return seal

    def unseal(self) -> None:
        """From now on the store changes: it must not be trusted until sealed again. Written through to disk
        at once, so a crash after this never finds an old seal on a changed store."""
        self.db.delete(SEAL_KEY)
        self.db.flush()

    def seal(self, content: dict[str, Any]) -> None:
        """Everything is written: flush it all to disk, then the seal, then flush again (so the seal can
        only be on disk together with what it vouches for)."""
        self.db.flush()
        self.db.put(SEAL_KEY, orjson.dumps({**content, "format": FORMAT}))
        self.db.flush()

    # -- data --------------------------------------------------------------------------------------------

    def clear(self) -> None:
        """Drop everything (the store is about to be rebuilt from the changelog)."""
        self.db.close()
        Rdict.destroy(str(self.path), self._options)
        self.rebuilt = False
        self.db = self._open()

    def batch(self) -> WriteBatch:
        return WriteBatch(raw_mode=True)

    def write(self, batch: WriteBatch) -> None:
        if not batch.is_empty():
            self.db.write(batch)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def items(self, prefix: bytes, *, backwards: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Key-value pairs whose key starts with ``prefix``, in key order (or reverse)."""
        if backwards:
            start = _next_prefix(prefix)
            it = (
                self.db.items(backwards=True, from_key=start)
                if start is not None
                else self.db.items(backwards=True)
            )
        else:
            it = self.db.items(from_key=prefix)
        for raw_key, value in it:
            key: bytes = raw_key  # type: ignore[assignment]  # raw_mode: keys are bytes
            if not key.startswith(prefix):
                if backwards and key >= prefix:
                    continue  # the seek landed on the first key past the range
                break
            yield key, value

    def estimated_keys(self) -> int:
        value = self.db.property_int_value("rocksdb.estimate-num-keys")
        return int(value or 0)

    def close(self) -> None:
        try:
            self.db.close()
        except Exception:
            log.exception("closing a local state store failed", extra={"path": str(self.path)})


#: Records a :class:`StoreFold` gathers in one write batch (RocksDB's memory, not Python's): the constant a
#: replay holds on top of its owner's memory bounds, with the changelog reader's fetch (``read_changelog``).
FOLD_BATCH = 10_000


class StoreFold(MutableMapping[bytes, bytes]):
    """The latest value per changelog key of a partition being replayed, folded into its (wiped) store under
    ``prefix`` instead of a dict: what ``restore_partitions(fold=)`` reads a changelog into, so a replay does
    not hold a whole partition in memory (docs/kernel.md#local-state-stores-memory-bounded-state-on-disk-
    and-warm-restarts).

    Writes go through a write batch of at most ``flush_every`` records (a tombstone is a delete, no read);
    any read flushes it first. A handler whose store keeps its entries as the changelog's own bytes folds
    straight under its state's prefix (growth: the changelog key and JSON value are its ``SpillMap``'s
    encoding); one with a layout of its own folds under a scratch prefix and rebuilds from :meth:`scan`
    (metering)."""

    def __init__(self, store: LocalStore, prefix: bytes, flush_every: int = FOLD_BATCH) -> None:
        self.store = store
        self.prefix = prefix
        self.flush_every = max(1, flush_every)
        self._batch = store.batch()
        self._ops = 0

    def _op(self) -> None:
        self._ops += 1
        if self._ops >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        self.store.write(self._batch)
        self._batch = self.store.batch()
        self._ops = 0

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._batch.put(self.prefix + key, value)
        self._op()

    def pop(self, key: bytes, default: Any = None) -> Any:  # a tombstone: no read needed
        self._batch.delete(self.prefix + key)
        self._op()
        return default

    def __delitem__(self, key: bytes) -> None:
        self.pop(key)

    def __getitem__(self, key: bytes) -> bytes:
        self.flush()
        value = self.store.get(self.prefix + key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[bytes]:
        return (key for key, _ in self.scan())

    def __len__(self) -> int:
        return sum(1 for _ in self.scan())

    def scan(self) -> Iterator[tuple[bytes, bytes]]:
        """(changelog key, latest value) in key order, read from the store one at a time."""
        self.flush()
        cut = len(self.prefix)
        return ((key[cut:], value) for key, value in self.store.items(self.prefix))


def _next_prefix(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: there is none)."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return None


def store_path(state_dir: Path, instance_id: str, name: str) -> Path:
    """Where a store lives: ``<state dir>/<instance id>/<name>`` (``name``: the changelog topic and partition,
    or the view's topic). One directory per instance id, so two instances on one host never share a store
    (and a store held open by another process is refused, not wiped)."""
    return state_dir / instance_id / name
