"""UUIDv7 (RFC 9562): time-ordered ids, so event ids sort by creation time and index well."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    """A new UUIDv7. Within one millisecond the 12-bit ``rand_a`` field counts up from a random start
    (RFC 9562 method 1), so ids made by one process are strictly increasing."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # leave room to count up
        else:
            ms = _last_ms  # the clock went back or stood still: stay monotonic
            _counter += 1
            if _counter > 0xFFF:
                _last_ms = ms = ms + 1
                _counter = 0
        rand_a = _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
