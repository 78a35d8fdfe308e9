"""Avro binary encoding, written by hand for the hot paths: the primitives shared by the specialised encoders
of ``usage-events`` (ingest, services/ingest/avro_usage.py) and ``usage-events-enriched`` (enrichment,
services/enrichment/avro_enriched.py). They live in the kernel because services never import each other
(docs/kernel.md#what-may-import-what). Each specialised encoder is used only while its schema's Parsing
Canonical Form has the fingerprint it was written for (:func:`schema_fingerprint_is`); unit tests check the
bytes are identical to fastavro's.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from fastavro.schema import fingerprint, to_parsing_canonical_form

_BYTE = [bytes((i,)) for i in range(256)]
NULL = b"\x00"  # a union's null branch; also an empty array or map
BRANCH1 = b"\x02"  # union branch 1 (zigzag varint)
DOUBLE = struct.Struct("<d").pack

# Union branches of the properties map's values: null, boolean, long, double, string.
_TRUE = b"\x02\x01"
_FALSE = b"\x02\x00"
_LONG = b"\x04"
_DOUBLE_TAG = b"\x06"
_STRING = b"\x08"


def long_bytes(n: int) -> bytes:
    """Avro ``long``: zigzag, then a little-endian base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    if n < 128:
        return _BYTE[n]
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def string_bytes(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    return (_BYTE[n << 1] if n < 64 else long_bytes(n)) + b


def optional_string(s: str | None) -> bytes:
    """Avro ``["null", "string"]``."""
    return NULL if s is None else BRANCH1 + string_bytes(s)


def optional_int(n: int | None) -> bytes:
    """Avro ``["null", "int"]`` (an int is a zigzag varint like a long)."""
    return NULL if n is None else BRANCH1 + long_bytes(n)


def properties_bytes(props: Mapping[str, Any], keys: dict[str, bytes]) -> bytes:
    """The ``map<null|boolean|long|double|string>`` of event properties (``keys`` caches encoded keys; the
    caller bounds it). Shared with the enrichment service's encoder of enriched events."""
    if not props:
        return NULL
    parts = [long_bytes(len(props))]
    append = parts.append
    for key, value in props.items():
        key_b = keys.get(key)
        if key_b is None:
            key_b = keys[key] = string_bytes(key)
        append(key_b)
        t = type(value)
        if t is str:
            append(_STRING + string_bytes(value))
        elif t is int:
            append(_LONG + long_bytes(value))
        elif t is float:
            append(_DOUBLE_TAG + DOUBLE(value))
        elif t is bool:
            append(_TRUE if value else _FALSE)
        elif value is None:
            append(NULL)
        else:
            raise TypeError(f"property {key!r} has unsupported type {t.__name__}")
    append(NULL)
    return b"".join(parts)


def consent_bytes(consent: Mapping[str, bool] | None) -> bytes:
    """Avro ``["null", map<boolean>]`` of the event's consent purposes."""
    if consent is None:
        return NULL
    if not consent:
        return BRANCH1 + NULL
    parts = [BRANCH1, long_bytes(len(consent))]
    for purpose, granted in consent.items():
        if type(granted) is not bool:
            raise TypeError(f"consent {purpose!r} must be a boolean")
        parts.append(string_bytes(purpose))
        parts.append(b"\x01" if granted else NULL)
    parts.append(NULL)
    return b"".join(parts)


def schema_fingerprint_is(schema_json: Any, written_for: str) -> bool:
    """Whether the schema's Parsing Canonical Form has SHA-256 ``written_for`` (docs, defaults and logical
    types are not part of it, so editing those keeps a fast path; a changed field turns it off)."""
    return bool(fingerprint(to_parsing_canonical_form(schema_json), "SHA-256") == written_for)
