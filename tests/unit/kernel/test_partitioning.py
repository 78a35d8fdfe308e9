"""The home partition of a customer matches the producers' partitioners."""

from __future__ import annotations

import zlib

import pytest

from services.kernel.partitioning import key_partitioner, murmur2, murmur2_hash


@pytest.mark.parametrize(
    ("key", "expected"),
    [  # Kafka's own test vectors (clients UtilsTest.testMurmur2)
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(key, expected):
    assert murmur2_hash(key) == expected


def test_partitioners_map_a_customer_to_one_stable_partition():
    consistent = key_partitioner(6, "consistent")
    java = key_partitioner(6, "murmur2")
    assert consistent("acme") == zlib.crc32(b"acme") % 6
    assert java("acme") == murmur2(b"acme", 6)
    assert all(0 <= consistent(f"c{i}") < 6 and 0 <= java(f"c{i}") < 6 for i in range(1000))
    assert len({consistent(f"c{i}") for i in range(1000)}) == 6
