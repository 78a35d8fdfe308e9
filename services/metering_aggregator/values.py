"""Turning event fields into exact meter values, group keys and unique-count members (pure).

Values are kept as integers in units of 1e-9 ("nanounits"), which is exactly the ``decimal(38,9)`` of the
``usage_aggregate`` contract: additions and comparisons are plain ``int`` maths (fast and exact), and the
conversion to ``Decimal`` happens once per output record.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote

from services.kernel import metrics

SCALE_DIGITS = 9
SCALE: int = 10**SCALE_DIGITS
# Largest absolute value one event may carry (in meter units); leaves 19 digits of headroom for sums
# inside the 29 integer digits decimal(38,9) holds.
MAX_EVENT_VALUE: int = 10**18
_QUANTUM = Decimal(1).scaleb(-SCALE_DIGITS)
# Precision 38 = the contract's; the default context (28 digits) would round large totals.
DECIMAL_CONTEXT = Context(prec=38, rounding=ROUND_HALF_EVEN)


class InvalidValue(ValueError):
    """The event's value for a meter is missing or not a usable number."""


def to_nanounits(raw: Any) -> int:
    """An event property as an exact integer count of 1e-9 units.

    Integers are exact; doubles are taken by their shortest decimal representation (``0.1`` is 0.1, not
    0.1000000000000000055...) and rounded half-even to 9 decimals; numeric strings are accepted too.
    Booleans, NaN, infinities and anything non-numeric are refused.
    """
    if raw is None:
        raise InvalidValue("the value property is missing or null")
    if isinstance(raw, bool):
        raise InvalidValue(f"expected a number, got boolean {raw}")
    if isinstance(raw, int):
        if abs(raw) > MAX_EVENT_VALUE:
            raise InvalidValue(f"value {raw} is out of range (|value| <= 1e18)")
        return raw * SCALE
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise InvalidValue(f"value {raw} is not a finite number")
        number = Decimal(repr(raw))
    elif isinstance(raw, str):
        try:
            number = Decimal(raw.strip())
        except InvalidOperation:
            raise InvalidValue(f"value {raw[:40]!r} is not a number") from None
        if not number.is_finite():
            raise InvalidValue(f"value {raw[:40]!r} is not a finite number")
    else:
        raise InvalidValue(f"expected a number, got {type(raw).__name__}")
    if abs(number) > MAX_EVENT_VALUE:
        raise InvalidValue(f"value {raw!r} is out of range (|value| <= 1e18)")
    quantized = number.quantize(_QUANTUM, context=DECIMAL_CONTEXT)
    return int(quantized.scaleb(SCALE_DIGITS, context=DECIMAL_CONTEXT))


def nanounits_to_decimal(value: int) -> Decimal:
    """The exact ``Decimal`` with scale 9 (what the Avro decimal(38,9) writer expects)."""
    return Decimal(value).scaleb(-SCALE_DIGITS, context=DECIMAL_CONTEXT)


def decimal_to_nanounits(value: Decimal) -> int:
    return int(value.scaleb(SCALE_DIGITS, context=DECIMAL_CONTEXT).to_integral_value(ROUND_HALF_EVEN))


def member_of(raw: Any) -> str:
    """A unique-count member: the value's canonical text (so 7 and "7" are the same member)."""
    if raw is None:
        raise InvalidValue("the value property is missing or null")
    if isinstance(raw, str):
        if not raw:
            raise InvalidValue("the value is an empty string")
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise InvalidValue(f"value {raw} is not a finite number")
        return str(int(raw)) if raw.is_integer() else repr(raw)
    if isinstance(raw, int):
        return str(raw)
    raise InvalidValue(f"unsupported value type {type(raw).__name__}")


def group_value(raw: Any) -> str:
    """A group-by property as text; a missing property groups under the empty string."""
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


QUOTE_CACHE_SIZE = 100_000


@lru_cache(maxsize=QUOTE_CACHE_SIZE)
def _quote(text: str) -> str:
    return quote(text, safe="")


QUOTED = metrics.gauge(
    "plg_metering_quote_cache_entries",
    "Group-by property values whose percent-encoding is remembered (QUOTE_CACHE_SIZE, least recently used "
    "out).",
)
metrics.track_size(QUOTED, _quote, lambda f: f.cache_info().currsize)


def group_key(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``name=value`` pairs joined by ``,`` with the values percent-encoded, so the key is unambiguous."""
    return ",".join(f"{n}={_quote(v)}" for n, v in zip(names, values, strict=True))


def parse_group_key(key: str) -> dict[str, str]:
    if not key:
        return {}
    out = {}
    for pair in key.split(","):
        name, _, value = pair.partition("=")
        out[name] = unquote(value)
    return out


#: Exactly a canonical lowercase hyphenated UUID (nothing else int(..., 16) would accept: no sign, no
#: underscores, no whitespace, no upper case).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def compact_event_id(event_id: str) -> int | str:
    """The event id in the smallest exact form kept in memory.

    A canonical lowercase UUID (what the SDK sends) becomes its 128-bit integer (44 bytes instead of 85);
    any other string stays as it is. The mapping is one-to-one: only strings that are exactly a lowercase
    hyphenated UUID are converted, so two different ids can never collide.
    """
    if len(event_id) == 36 and _CANONICAL_UUID(event_id) is not None:
        return int(event_id.replace("-", ""), 16)
    return event_id


def expand_event_id(compact: int | str) -> str:
    if isinstance(compact, str):
        return compact
    h = f"{compact:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
