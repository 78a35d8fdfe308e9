"""The ``usage_aggregate`` record of a window, encoded by hand (the aggregator writes one per changed window
per transaction, to usage-aggregates and usage-periods): the bytes fastavro writes, without building a dict
and a Decimal per record. Used only while schemas/usage_aggregate.avsc has the Parsing Canonical Form it was
written for (``schema_matches``); tests/unit/metering/test_avro_aggregate.py checks the bytes against
fastavro's.
"""

from __future__ import annotations

from typing import Any

from services.kernel.avro_binary import NULL, long_bytes, schema_fingerprint_is, string_bytes
from services.metering_aggregator.model import Series, Window

# SHA-256 of the Parsing Canonical Form of schemas/usage_aggregate.avsc as of this encoder.
WRITTEN_FOR = "f09ea421101f08f167539c4df2f34c7e3077a1e38c787b9fe104eb6bf611e41b"
_AGGREGATIONS = {
    name: long_bytes(i) for i, name in enumerate(("SUM", "COUNT", "UNIQUE_COUNT", "MAX", "LATEST"))
}
_GRANULARITIES = {name: long_bytes(i) for i, name in enumerate(("MINUTE", "HOUR", "DAY", "BILLING_PERIOD"))}
#: decimal(38, 9): values whose unscaled integer has more digits go through fastavro (which refuses them).
_MAX_UNSCALED = 10**38
_MAX_CACHE = 100_000


def schema_matches(schema_json: Any) -> bool:
    return schema_fingerprint_is(schema_json, WRITTEN_FOR)


class AggregateEncoder:
    """Encodes windows as ``usage_aggregate`` values for one schema id, in the Confluent wire format."""

    def __init__(self, header: bytes) -> None:
        self.header = header
        # The bytes of a series' constant fields (header, customer, meter, aggregation, group), by what
        # identifies the series rather than by its object: a series spilled to the local store and read back
        # is a new object, and a cache keyed by objects would keep every spilled one (with its windows) alive
        # past the window memory bound until the cache filled.
        self._prefixes: dict[tuple[str, str, str, str], bytes] = {}

    def _prefix(self, series: Series) -> bytes:
        meter = series.meter
        identity = (series.customer_id, meter.slug, meter.aggregation.value, series.group)
        prefix = self._prefixes.get(identity)
        if prefix is None:
            if len(self._prefixes) >= _MAX_CACHE:
                self._prefixes.clear()
            group = series.group_values
            if group:
                parts = [long_bytes(len(group))]
                for key, value in group.items():
                    parts.append(string_bytes(key))
                    parts.append(string_bytes(value))
                parts.append(NULL)
                group_b = b"".join(parts)
            else:
                group_b = NULL
            prefix = self._prefixes[identity] = b"".join(
                (
                    self.header,
                    string_bytes(series.customer_id),
                    string_bytes(meter.slug),
                    _AGGREGATIONS[meter.aggregation.value],
                    group_b,
                )
            )
        return prefix

    def encode(self, w: Window, now_ms: int) -> bytes | None:
        """The record's bytes; None when the value does not fit decimal(38, 9) (the caller's generic
        encoder then reports it)."""
        value = w.value
        magnitude = -value if value < 0 else value
        if magnitude >= _MAX_UNSCALED:
            return None
        raw = value.to_bytes((magnitude.bit_length() + 8) // 8, "big", signed=True)
        return b"".join(
            (
                self._prefix(w.series),
                _GRANULARITIES[w.granularity.value],
                long_bytes(w.start_ms),
                long_bytes(w.end_ms),
                long_bytes(len(raw)),
                raw,
                long_bytes(w.event_count),
                long_bytes(now_ms),
            )
        )
