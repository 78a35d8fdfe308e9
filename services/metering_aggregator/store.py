"""The aggregator's local state store: dedup ids bounded in memory with the rest on disk, and a warm copy
of the partition's changelog for restarts (RocksDB, one per input partition; see docs/metering.md).

Layout of one partition's store (``services.kernel.processing.store.LocalStore``):

* ``E<expiry minute><customer><suffix>`` -> a flag and packed ids: spilled dedup ids of one customer
  expiring then; ``F...`` the same for the ids memory held at the seal (see :class:`DiskDedupIndex`);
* ``I<id key>`` -> expiry minute (4 bytes): a spilled id, for point lookups;
* ``L<changelog key>`` -> the latest changelog value of that key, for every record kind but the dedup ids
  (``D|`` keys are kept with an empty value: the ids are the ``I``/``E`` entries);
* the seal (``services.kernel.processing.store``): ``{"o": committed input offset, "rules": [...]}``.

``<id key>`` is the customer id (2-byte length, UTF-8) then the compact event id (``\\x00`` + 16 bytes for
a UUID, ``\\x01`` + UTF-8 otherwise), so one customer's ids never meet another's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from services.kernel.processing.store import LocalStore
from services.metering_aggregator.model import DedupIndex, PartitionState, Rules

log = logging.getLogger(__name__)

ID = b"I"
EXPIRY = b"E"
MIRROR = b"L"
DEDUP_RECORD = b"D|"


def id_key(customer_id: str, compact: int | str) -> bytes:
    customer = customer_id.encode()
    tail = b"\x00" + compact.to_bytes(16, "big") if isinstance(compact, int) else b"\x01" + compact.encode()
    return len(customer).to_bytes(2, "big") + customer + tail


def parse_id_key(key: bytes) -> tuple[str, int | str]:
    size = int.from_bytes(key[:2], "big")
    customer = key[2 : 2 + size].decode()
    tail = key[2 + size :]
    if tail[:1] == b"\x00":
        return customer, int.from_bytes(tail[1:17], "big")
    return customer, tail[1:].decode()


def pack_ids(compacts: Iterable[int | str]) -> bytes:
    """Compact ids one after another: ``\x00`` + 16 bytes (a UUID) or ``\x01`` + 2-byte length + UTF-8."""
    parts = []
    for compact in compacts:
        if isinstance(compact, int):
            parts.append(b"\x00" + compact.to_bytes(16, "big"))
        else:
            raw = compact.encode()
            parts.append(b"\x01" + len(raw).to_bytes(2, "big") + raw)
    return b"".join(parts)


def unpack_ids(data: bytes) -> list[int | str]:
    out: list[int | str] = []
    pos, end = 0, len(data)
    from_bytes = int.from_bytes
    while pos < end:
        if data[pos] == 0:
            out.append(from_bytes(data[pos + 1 : pos + 17], "big"))
            pos += 17
        else:
            size = from_bytes(data[pos + 1 : pos + 3], "big")
            out.append(data[pos + 3 : pos + 3 + size].decode())
            pos += 3 + size
    return out


#: Flag byte of a spilled chunk (``E`` prefix): its ids have ``I`` lookup keys.
SPILLED = b"S"
#: Prefix of the chunks a seal writes from memory (no lookup keys; a load reads them back first).
SEALED_CHUNK = b"F"


class DiskDedupIndex(DedupIndex):
    """The dedup index with at most ``memory_ids`` ids in memory; the oldest expiry minutes go to the store.

    Memory holds whole expiry minutes, newest first. While any live id is only in the store (``spilled``),
    an id missing from memory is looked up in the store (a bloom-filtered point lookup), so dedup stays
    exact whatever the bound; below the bound nothing is read from disk.

    On disk, ids are chunks of packed ids per (expiry minute, customer), one put per chunk:
    ``E<minute><customer><suffix>`` for spilled ids (each also with an ``I<id key>`` for lookups) — while the
    partition runs, exactly the ids not in memory — and ``F<minute><customer><suffix>`` for what memory held
    when the store was sealed (no lookup keys). Loading a sealed store reads only the ``F`` chunks, keeps
    the newest up to the bound and turns the rest into spilled ``E`` chunks; the spilled ones are not read.
    """

    __slots__ = ("memory_ids", "spilled_through", "store")

    def __init__(self, store: LocalStore, memory_ids: int) -> None:
        super().__init__()
        self.store = store
        self.memory_ids = memory_ids
        # Expiry minutes up to this one may have ids only in the store (-1: none).
        self.spilled_through = -1

    def on_disk(self, customer_id: str, compact: int | str) -> bool:
        return self.store.get(ID + id_key(customer_id, compact)) is not None

    def restored_record(self) -> None:
        self.spill()

    @staticmethod
    def _chunk_key(minute: int, customer_id: str, prefix: bytes = EXPIRY) -> bytes:
        customer = customer_id.encode()
        return (
            prefix + minute.to_bytes(4, "big") + len(customer).to_bytes(2, "big") + customer + os.urandom(8)
        )

    def spill(self) -> int:
        """Move the oldest expiry minutes to the store until memory holds at most ``memory_ids``; returns
        the ids moved. Only committed ids are ever spilled (it runs after a commit, or during a restore)."""
        size = len(self)
        if size <= self.memory_ids:
            return 0
        moved = 0
        batch = self.store.batch()
        for minute in sorted(self.buckets):
            if size - moved <= self.memory_ids:
                break
            by_customer = self.buckets.pop(minute)
            minute_bytes = minute.to_bytes(4, "big")
            for customer_id, compacts in by_customer.items():
                batch.put(self._chunk_key(minute, customer_id), SPILLED + pack_ids(compacts))
                ids = self.seen.get(customer_id)
                for compact in compacts:
                    batch.put(ID + id_key(customer_id, compact), minute_bytes)
                if ids is not None:
                    ids.difference_update(compacts)
                    if not ids:
                        del self.seen[customer_id]
                moved += len(compacts)
            self.spilled_through = max(self.spilled_through, minute)
        self.store.write(batch)
        self.spilled = self.spilled_through >= 0
        return moved

    def write_all(self) -> None:
        """Write the ids in memory to the store (before sealing it): one chunk per minute and customer, under
        their own prefix, so loading reads them and never has to walk the spilled ones."""
        batch = self.store.batch()
        for minute, by_customer in self.buckets.items():
            for customer_id, compacts in by_customer.items():
                batch.put(self._chunk_key(minute, customer_id, SEALED_CHUNK), pack_ids(compacts))
        self.store.write(batch)

    def load(self) -> int:
        """Fill memory from a sealed store: the chunks memory held at the seal, newest expiry first, up to
        the bound; returns ids loaded. What does not fit becomes spilled chunks with lookup keys; the spilled
        chunks already there are not read (one seek finds the newest, for ``spilled_through``)."""
        loaded = 0
        full = False
        batch = self.store.batch()
        for key, value in self.store.items(SEALED_CHUNK, backwards=True):
            minute = int.from_bytes(key[1:5], "big")
            size = int.from_bytes(key[5:7], "big")
            customer_id = key[7 : 7 + size].decode()
            compacts = unpack_ids(value)
            batch.delete(key)
            full = full or (loaded > 0 and loaded + len(compacts) > self.memory_ids)
            if full:  # stays on disk, spilled: lookup keys and an E chunk
                minute_bytes = minute.to_bytes(4, "big")
                for compact in compacts:
                    batch.put(ID + id_key(customer_id, compact), minute_bytes)
                batch.put(EXPIRY + key[1:], SPILLED + value)
                self.spilled_through = max(self.spilled_through, minute)
                continue
            ids = self.seen.get(customer_id)
            if ids is None:
                ids = self.seen[customer_id] = set()
            ids.update(compacts)
            bucket = self.buckets.setdefault(minute, {})
            known = bucket.get(customer_id)
            if known is None:
                bucket[customer_id] = compacts
            else:
                known.extend(compacts)
            loaded += len(compacts)
        self.store.write(batch)
        for key, _ in self.store.items(EXPIRY, backwards=True):  # the newest spilled chunk, if any
            self.spilled_through = max(self.spilled_through, int.from_bytes(key[1:5], "big"))
            break
        self.spilled = self.spilled_through >= 0
        return loaded

    def evict(self, now_minute: int) -> list[int]:
        """Memory's expired minutes as the base class does, and the store's; returns every expired minute
        the partition has dedup records of (their changelog records are tombstoned)."""
        expired = set(super().evict(now_minute))
        expired.update(m for m in self.bucket_records if m < now_minute)
        if self.spilled:
            end = EXPIRY + now_minute.to_bytes(4, "big")
            batch = self.store.batch()
            for key, value in self.store.items(EXPIRY):
                if key >= end:
                    break
                if value[:1] == SPILLED:
                    size = int.from_bytes(key[5:7], "big")
                    customer_id = key[7 : 7 + size].decode()
                    for compact in unpack_ids(value[1:]):
                        batch.delete(ID + id_key(customer_id, compact))
            batch.delete_range(EXPIRY, end)
            self.store.write(batch)
            if self.spilled_through < now_minute:
                self.spilled_through = -1
                self.spilled = False
        return sorted(expired)


class PartitionStore:
    """The local store of one input partition, as the metering handler uses it."""

    def __init__(self, store: LocalStore, partition: int) -> None:
        self.store = store
        self.partition = partition

    def seal_under(self, rules: Rules) -> dict[str, Any] | None:
        """The store's seal when it is sealed under these time rules (other rules give other expiry minutes:
        such a store is replayed), else None."""
        seal = self.store.seal_of()
        if seal is None or seal.get("rules") != _rules(rules):
            return None
        return seal

    def sealed_at(self, rules: Rules) -> int | None:
        """The committed input offset a sealed store is complete at (None: not sealed, or other rules)."""
        seal = self.seal_under(rules)
        offset = None if seal is None else seal.get("o")
        return offset if isinstance(offset, int) else None

    def load(self, state: PartitionState) -> tuple[int, int]:
        """Rebuild ``state`` (whose dedup is a :class:`DiskDedupIndex` on this store) from the sealed store;
        returns (changelog records, ids loaded into memory). Unseals the store: it changes from now on."""
        from services.metering_aggregator.changelog import restore

        records = [(key[1:], value) for key, value in self.store.items(MIRROR)]
        restore(state, records, ids_in_store=True)
        assert isinstance(state.dedup, DiskDedupIndex)
        loaded = state.dedup.load()
        self.store.unseal()
        return len(records), loaded

    def rebuild(self, latest: dict[bytes, bytes]) -> None:
        """Write the mirror of a changelog just read (the ids were added, and spilled, by the restore)."""
        batch = self.store.batch()
        for key, value in latest.items():
            batch.put(MIRROR + key, b"" if key.startswith(DEDUP_RECORD) else value)
        self.store.write(batch)

    def mirror(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Apply what a committed transaction wrote to this partition's changelog."""
        batch = self.store.batch()
        for key, value in records:
            if value is None:
                batch.delete(MIRROR + key)
            else:
                batch.put(MIRROR + key, b"" if key.startswith(DEDUP_RECORD) else value)
        self.store.write(batch)

    def seal(self, state: PartitionState, committed_offset: int, rules: Rules) -> None:
        assert isinstance(state.dedup, DiskDedupIndex)
        state.dedup.write_all()
        self.store.seal({"o": committed_offset, "rules": _rules(rules)})

    def close(self) -> None:
        self.store.close()


def _rules(rules: Rules) -> list[Any]:
    return [rules.grace_ms, rules.dedup_horizon_ms]
