"""The hand-written usage_aggregate encoder writes fastavro's exact bytes, or steps aside when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

from services.kernel.serde import ValueEncoder, header
from services.metering_aggregator.avro_aggregate import AggregateEncoder, schema_matches
from services.metering_aggregator.handlers import aggregate_record
from services.metering_aggregator.model import Series, Window
from services.plans.loader import load_config
from services.plans.periods import Granularity

SCHEMA = Path("schemas/usage_aggregate.avsc")


def test_the_bytes_are_fastavros_for_every_shape_of_window():
    assert schema_matches(json.loads(SCHEMA.read_text()))
    generic = ValueEncoder(SCHEMA, 4242)
    fast = AggregateEncoder(header(4242))
    meters = {m.slug: m for m in load_config(None).meters}
    cases = [
        (Series("acme", meters["api_requests"], "", {}), 7 * 10**9, 7),
        (Series("é-ü|x", meters["compute_seconds"], "region=eu", {"region": "eu", "zone": "b"}), 1, 1),
        (Series("c", meters["seats"], "", {}), -(5 * 10**9), 3),
        (Series("c", meters["storage_gb"], "", {}), 0, 0),
        (Series("c", meters["active_users"], "", {}), 10**38 - 1, 2**40),
        (Series("c" * 300, meters["api_requests"], "", {}), 127, 128),
        (Series("c", meters["api_requests"], "", {}), -(10**38) + 1, 1),
        (Series("c", meters["api_requests"], "", {}), 255, 64),
    ]
    for series, value, count in cases:
        for granularity, start, end in [
            (Granularity.MINUTE, 1_800_000_000_000, 1_800_000_060_000),
            (Granularity.BILLING_PERIOD, 0, 2**50),
        ]:
            w = Window(series, granularity, start, end)
            w.value, w.event_count = value, count
            expected = generic.encode(aggregate_record(w, 1_800_000_000_123))
            assert fast.encode(w, 1_800_000_000_123) == expected, (series.customer_id, value, granularity)
    # decimal(38, 9) cannot hold it: the generic encoder reports it, the fast one steps aside
    w = Window(Series("c", meters["api_requests"], "", {}), Granularity.DAY, 0, 1)
    w.value = 10**38
    assert fast.encode(w, 0) is None


def test_a_series_read_back_from_the_store_shares_its_prefix_and_none_is_kept_alive():
    # Spilling writes a series to the local store and drops the object; reading it back makes a new one.
    # The encoder's cache must not hold the objects (it would keep spilled series and their windows in
    # memory past the window bound): one entry per series identity, none of them a Series.
    fast = AggregateEncoder(header(4242))
    meter = next(m for m in load_config(None).meters if m.slug == "compute_seconds")
    encoded = set()
    for _ in range(3):
        series = Series("acme", meter, "region=eu", {"region": "eu"})
        w = Window(series, Granularity.HOUR, 0, 3_600_000)
        w.value, w.event_count = 5, 1
        encoded.add(fast.encode(w, 7))
    assert len(encoded) == 1
    assert len(fast._prefixes) == 1
    assert not any(isinstance(part, Series) for key in fast._prefixes for part in (key, *key))
