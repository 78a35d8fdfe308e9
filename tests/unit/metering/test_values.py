"""Event values become exact fixed-point numbers; ids are stored compactly but never confused."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from services.metering_aggregator.values import (
    InvalidValue,
    compact_event_id,
    expand_event_id,
    group_key,
    member_of,
    nanounits_to_decimal,
    parse_group_key,
    to_nanounits,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3, Decimal(3)),
        (0.1, Decimal("0.1")),
        (0.1 + 0.2, Decimal("0.300000000")),
        ("12.5", Decimal("12.5")),
        (-2, Decimal(-2)),
        (1.0000000005, Decimal("1.000000000")),  # half-even at the 9th decimal
        (1.0000000015, Decimal("1.000000002")),
        (10**18, Decimal(10**18)),
    ],
)
def test_numbers_become_exact_nanounits(raw, expected):
    assert nanounits_to_decimal(to_nanounits(raw)) == expected


@pytest.mark.parametrize(
    "raw", [None, True, float("nan"), float("inf"), "abc", "NaN", [], 10**18 + 1, "1e30"]
)
def test_unusable_values_are_refused_with_a_reason(raw):
    with pytest.raises(InvalidValue):
        to_nanounits(raw)


def test_the_decimal_keeps_scale_nine_for_the_avro_contract():
    assert nanounits_to_decimal(5).as_tuple().exponent == -9
    big = nanounits_to_decimal(10**36)  # 29 integer digits: needs the 38-digit context
    assert big == Decimal(10**27)


def test_unique_members_are_canonical_text():
    assert member_of(7) == member_of("7") == member_of(7.0)
    assert member_of(True) == "true"
    with pytest.raises(InvalidValue):
        member_of("")


def test_group_keys_round_trip_even_with_separators_in_values():
    key = group_key(("region", "tier"), ("eu,west=1", "a|b"))
    assert "|" not in key
    assert parse_group_key(key) == {"region": "eu,west=1", "tier": "a|b"}
    assert parse_group_key("") == {}


def test_uuid_ids_are_compacted_and_other_ids_kept_exactly():
    u = str(uuid.uuid4())
    assert isinstance(compact_event_id(u), int)
    assert expand_event_id(compact_event_id(u)) == u
    # Not the canonical lowercase form: kept as is, so it cannot collide with the lowercase one.
    assert compact_event_id(u.upper()) == u.upper()
    assert compact_event_id("order-42") == "order-42"
    tricky = "0000_000-0000-0000-0000-000000000001"  # int() would accept the underscore
    assert compact_event_id(tricky) == tricky
