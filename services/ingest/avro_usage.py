"""A specialised Avro encoder for ``usage-events`` records: the hot spot of the ingest request path.

fastavro spends most of its time choosing union branches (it validates the value against each branch in
turn: ~1 µs per property value of ``map<null|boolean|long|double|string>``, more for the nested ingest
record), about 16 µs per event for ours. Here each field is written directly, in the schema's order, and
the parts that are the same for every event of a request (the customer id and the ingest metadata) are
encoded once per request: ~4 µs per event.

Safety: it is used only when the schema's Parsing Canonical Form has the fingerprint this code was written
for (:data:`WRITTEN_FOR`); any other schema falls back to the kernel's generic encoder. Unit tests check
the output is byte-identical to fastavro's for every kind of value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.ingest.metrics import MEMO
from services.kernel import metrics
from services.kernel.avro_binary import (
    BRANCH1,
    NULL,
    consent_bytes,
    long_bytes,
    optional_int,
    optional_string,
    properties_bytes,
    schema_fingerprint_is,
    string_bytes,
)

# SHA-256 of the Parsing Canonical Form of schemas/usage_event.avsc (io.plg.usage.v1.UsageEvent) as of
# this encoder. Docs, defaults and logical types are not part of the canonical form, so editing those
# keeps the fast path; adding or changing a field turns it off until this encoder is updated.
WRITTEN_FOR = "ec78f12cb08768285192539ef373a81f50c048a77cebfafd8a3632a1e03f9620"

_MAX_CACHE = 10_000


def schema_matches(schema_json: Any) -> bool:
    return schema_fingerprint_is(schema_json, WRITTEN_FOR)


class UsageEventEncoder:
    """Encodes usage-events records for one schema id, in the Confluent wire format (magic byte, id)."""

    def __init__(self, header: bytes) -> None:
        self._header = header
        self._names: dict[str, bytes] = {}
        self._keys: dict[str, bytes] = {}
        metrics.track_size(MEMO.labels("encoded_names"), self, lambda e: len(e._names))
        metrics.track_size(MEMO.labels("encoded_keys"), self, lambda e: len(e._keys))

    def for_request(
        self, customer_id: str, ingest: Mapping[str, Any] | None
    ) -> Callable[[Mapping[str, Any]], bytes]:
        """An encoder for the records of one request, which share ``customer_id`` and ``ingest``."""
        customer = string_bytes(customer_id)
        if ingest is None:
            suffix = NULL
        else:
            suffix = b"".join(
                (
                    BRANCH1,
                    long_bytes(ingest["received_at"]),
                    string_bytes(ingest["source"]),
                    optional_string(ingest["api_key_id"]),
                    optional_string(ingest["request_id"]),
                    optional_string(ingest["library"]),
                    optional_int(ingest.get("registry_version")),
                )
            )
        header = self._header
        names, keys = self._names, self._keys
        if len(names) > _MAX_CACHE:
            names.clear()
        if len(keys) > _MAX_CACHE:
            keys.clear()

        def encode(record: Mapping[str, Any]) -> bytes:
            name = record["name"]
            name_b = names.get(name)
            if name_b is None:
                name_b = names[name] = string_bytes(name)
            props = record["properties"]
            props_b = properties_bytes(props, keys) if props else NULL
            user_id, anonymous_id, session_id = (
                record["user_id"],
                record["anonymous_id"],
                record["session_id"],
            )
            return b"".join(
                (
                    header,
                    string_bytes(record["event_id"]),
                    customer,
                    name_b,
                    long_bytes(record["timestamp"]),
                    props_b,
                    NULL if user_id is None else BRANCH1 + string_bytes(user_id),
                    NULL if anonymous_id is None else BRANCH1 + string_bytes(anonymous_id),
                    NULL if session_id is None else BRANCH1 + string_bytes(session_id),
                    suffix,
                    consent_bytes(record.get("consent")),
                )
            )

        return encode
