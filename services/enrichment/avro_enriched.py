"""A specialised Avro encoder for ``usage-events-enriched`` records: the hot spot of enrichment.

fastavro takes 11-15 µs for one enriched record (about 0.5 µs per string field and more per union value,
measured), four times the enrichment logic itself. Written field by field in the schema's order, with the
strings every event repeats (customer ids, event names, plans, property keys, tenant contexts) encoded
once and cached, it takes a fraction of that. Like ingest's usage-events encoder
(services/ingest/avro_usage.py; both build on the kernel's primitives in services/kernel/avro_binary.py):
used only while the schema's Parsing Canonical Form has the fingerprint this code was written for
(:data:`WRITTEN_FOR`), otherwise the kernel's generic encoder is used; unit tests check the bytes are
identical to fastavro's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.kernel import metrics
from services.kernel.avro_binary import (
    BRANCH1,
    DOUBLE,
    NULL,
    long_bytes,
    optional_string,
    properties_bytes,
    schema_fingerprint_is,
    string_bytes,
)

# SHA-256 of the Parsing Canonical Form of schemas/enriched_usage_event.avsc as of this encoder (docs and
# defaults are not part of it; adding or changing a field turns the fast path off until this is updated).
WRITTEN_FOR = "160a03119d2f6ae23c28bd33193030c80e6a4d8b69073e90f44968d4bb2dbfa0"

_EMPTY = b"\x00"  # an empty array or map
_ONE = DOUBLE(1.0)
_MAX_CACHE = 10_000
MEMO = metrics.gauge(
    "plg_enrichment_memo_entries",
    "Values remembered to skip work on the next event, by cache: encoded_strings (customer ids, names, "
    "plans), "
    "encoded_keys (property keys), encoded_tenants (10 000 each), pii_clean (strings found free of PII, "
    "65 536); each is emptied when full (docs/operations.md#memory-bounds).",
    ("cache",),
)


def schema_matches(schema_json: Any) -> bool:
    return schema_fingerprint_is(schema_json, WRITTEN_FOR)


def _strings(items: list[str]) -> bytes:
    if not items:
        return _EMPTY
    return b"".join((long_bytes(len(items)), *(string_bytes(s) for s in items), _EMPTY))


class EnrichedEventEncoder:
    """Encodes enriched records for one schema id, in the Confluent wire format (magic byte, id)."""

    def __init__(self, header: bytes) -> None:
        self._header = header
        self._cache: dict[str, bytes] = {}  # customer ids, names, plans: strings every event repeats
        self._keys: dict[str, bytes] = {}  # property keys
        self._tenants: dict[tuple[Any, ...], bytes] = {}
        metrics.track_size(MEMO.labels("encoded_strings"), self, lambda e: len(e._cache))
        metrics.track_size(MEMO.labels("encoded_keys"), self, lambda e: len(e._keys))
        metrics.track_size(MEMO.labels("encoded_tenants"), self, lambda e: len(e._tenants))

    def _cached(self, s: str) -> bytes:
        b = self._cache.get(s)
        if b is None:
            if len(self._cache) > _MAX_CACHE:
                self._cache.clear()
            b = self._cache[s] = string_bytes(s)
        return b

    def _tenant(self, tenant: Mapping[str, Any] | None) -> bytes:
        if tenant is None:
            return NULL
        key = (
            tenant["plan"],
            tenant["support_tier"],
            tenant["open_tickets"],
            tenant["csm_owner"],
            tenant["billing_status"],
        )
        b = self._tenants.get(key)
        if b is None:
            if len(self._tenants) > _MAX_CACHE:
                self._tenants.clear()
            b = self._tenants[key] = b"".join(
                (
                    BRANCH1,
                    optional_string(key[0]),
                    optional_string(key[1]),
                    long_bytes(key[2]),
                    optional_string(key[3]),
                    optional_string(key[4]),
                )
            )
        return b

    def encode(self, r: Mapping[str, Any]) -> bytes:
        keys = self._keys
        if len(keys) > _MAX_CACHE:
            keys.clear()
        cached = self._cached
        plan, received_at, version, plan_version = (
            r["plan"],
            r["received_at"],
            r["schema_version"],
            r["tracking_plan_version"],
        )
        violations = r["violations"]
        if violations:
            parts = [long_bytes(len(violations))]
            for v in violations:
                parts.append(cached(v["code"]))
                parts.append(string_bytes(v["path"]))
                parts.append(string_bytes(v["message"]))
            parts.append(_EMPTY)
            violations_b = b"".join(parts)
        else:
            violations_b = _EMPTY
        rate = r["sample_rate"]
        merge = r["merge"]
        return b"".join(
            (
                self._header,
                string_bytes(r["event_id"]),
                cached(r["customer_id"]),
                cached(r["name"]),
                long_bytes(r["timestamp"]),
                properties_bytes(r["properties"], keys),
                optional_string(r["user_id"]),
                optional_string(r["anonymous_id"]),
                optional_string(r["session_id"]),
                optional_string(r["resolved_user_id"]),
                NULL if plan is None else BRANCH1 + cached(plan),
                _strings(r["scrubbed_properties"]),
                NULL if received_at is None else BRANCH1 + long_bytes(received_at),
                long_bytes(r["enriched_at"]),
                optional_string(r["person_id"]),
                NULL if version is None else BRANCH1 + long_bytes(version),
                b"\x01" if r.get("schema_version_missing") else b"\x00",
                NULL if plan_version is None else BRANCH1 + long_bytes(plan_version),
                violations_b,
                _ONE if rate == 1.0 else DOUBLE(rate),
                self._tenant(r["tenant"]),
                NULL
                if merge is None
                else b"".join(
                    (
                        BRANCH1,
                        string_bytes(merge["merged_id"]),
                        string_bytes(merge["survivor_id"]),
                        _strings(merge["replaced_person_ids"]),
                    )
                ),
            )
        )

    __call__ = encode
