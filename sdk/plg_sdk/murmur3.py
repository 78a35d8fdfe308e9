"""MurmurHash3 x86 32-bit in pure Python: the hash plg's flag bucketing is specified on (docs/growth.md).

No third-party dependency on purpose (an SDK lands in other people's applications); the tests check it
against the ``mmh3`` C extension and the cross-language vectors in ``sdk/testdata/``.
"""

from __future__ import annotations

import struct

_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_M32 = 0xFFFFFFFF


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 of ``data`` with ``seed``, as an unsigned 32-bit int (``mmh3.hash(data, seed,
    signed=False)``)."""
    length = len(data)
    h = seed & _M32
    nblocks = length >> 2
    # One unpack for every 4-byte block: far cheaper than slicing per block in pure Python.
    for k in struct.unpack_from(f"<{nblocks}I", data):
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        h ^= (k * _C2) & _M32
        h = ((h << 13) | (h >> 19)) & _M32
        h = (h * 5 + 0xE6546B64) & _M32
    tail = length & 3
    if tail:
        i = nblocks << 2
        k = 0
        if tail == 3:
            k ^= data[i + 2] << 16
        if tail >= 2:
            k ^= data[i + 1] << 8
        k ^= data[i]
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        h ^= (k * _C2) & _M32
    h ^= length
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h
