"""Which partition a keyed record lands on, computed the way the producer's partitioner does (pure) — for a
reader that must know where a key lives without reading it.

Producers key events by customer id, but the partition a key lands on depends on the producer's
partitioner: librdkafka's default ``consistent_random`` (CRC32) for the kernel producer and confluent-kafka
apps, murmur2 for Java clients. The metering aggregator computes each customer's home partition with the
configured one and moves strays there; the health scorer finds the home of a customer's facts the same way.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache

from services.kernel import metrics

CACHED = metrics.gauge(
    "plg_partitioner_cache_entries",
    "Keys (customer ids) whose partition is remembered, over every key_partitioner of the process "
    "(CACHE_SIZE each, least recently used out).",
)
CACHE_SIZE = 200_000


def consistent(key: bytes, partitions: int) -> int:
    """librdkafka's ``consistent`` / ``consistent_random`` partitioner for a non-empty key."""
    return zlib.crc32(key) % partitions


def murmur2_hash(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (the Java client's default partitioner hash), as a signed 32-bit int."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def murmur2(key: bytes, partitions: int) -> int:
    """The Java client's default partition for a non-null key: ``toPositive(murmur2(key)) % n``."""
    return (murmur2_hash(key) & 0x7FFFFFFF) % partitions


def key_partitioner(partitions: int, kind: str = "consistent") -> Callable[[str], int]:
    """A cached ``key -> partition`` function (UTF-8 keys) for ``partitions`` partitions with the ``kind``
    partitioner (``consistent``: librdkafka's default; ``murmur2``: the Java client's)."""
    fn = consistent if kind == "consistent" else murmur2

    @lru_cache(maxsize=CACHE_SIZE)
    def partition(key: str) -> int:
        return fn(key.encode(), partitions)

    metrics.track_size(CACHED, partition, lambda f: f.cache_info().currsize)
    return partition
