"""Which partition a keyed record lands on, computed the way the producer's partitioner does — for a
reader that must know where a key lives without reading it (the health scorer's home partitions).

The kernel producer and confluent-kafka apps use librdkafka's default ``consistent_random``: CRC32 of a
non-empty key modulo the partition count. (The metering aggregator's ``routing`` module also knows the
Java client's murmur2, for producers it does not control.)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache


def consistent(key: bytes, partitions: int) -> int:
    """librdkafka's ``consistent`` / ``consistent_random`` partition of a non-empty key."""
    return zlib.crc32(key) % partitions


def key_partitioner(partitions: int) -> Callable[[str], int]:
    """A cached ``key -> partition`` function (UTF-8 keys, ``consistent``) for ``partitions`` partitions."""

    @lru_cache(maxsize=200_000)
    def partition(key: str) -> int:
        return consistent(key.encode(), partitions)

    return partition
