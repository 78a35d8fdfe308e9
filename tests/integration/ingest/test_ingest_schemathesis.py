"""schemathesis against the real ingest service (uvicorn on a loopback port, real Kafka, registry and
PostgreSQL), driven by ingest's own ``/openapi.json``: the phases and default checks of ``st run`` (no
5xx, status codes, content types, headers and bodies as documented, schema-valid data accepted, invalid
data refused), with a real API key. Bounded: a few examples per operation and phase.

Two rules of the API cannot be written in JSON Schema, and the run says so precisely rather than
loosening the document or dropping the checks:

* a schema-valid event can still be refused for a rule stated in prose — its timestamp outside the
  accepted window, a character that is not printable, an integer literal beyond 64 bits (JSON Schema
  cannot tell ``1e20`` from ``100000000000000000000``): on ``/v1/track`` and ``/v1/identify`` that is a
  400, allowed only with one of those codes (:func:`refused_only_for_prose_rules`);
* on the batch endpoints an invalid event does not refuse the request: it is listed as rejected in the
  202 (per-event results). ``negative_data_rejection`` is replaced there by: a schema-violating request
  is refused, or answered 202 with at least one rejected event.
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis

from tests.http_support import run_schemathesis
from tests.integration.ingest.conftest import IngestFactory, Tenant

# Per-event codes for rules the OpenAPI document states in prose only.
PROSE_RULES = frozenset(
    {
        "invalid_name",  # printable characters
        "invalid_field",  # printable ids / source
        "invalid_property_key",  # printable keys
        "invalid_timestamp",  # ISO-8601 with an offset
        "timestamp_in_future",
        "timestamp_too_old",
        "unrepresentable_property",  # an integer literal beyond 64 bits
    }
)
BATCH_PATHS = frozenset({"/v1/batch", "/v1/events", "/v1/import"})
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429"]
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


def _is_ingest(case: schemathesis.Case) -> bool:
    return case.operation.schema.raw_schema.get("info", {}).get("title") == "plg ingest"


@schemathesis.check
def refused_only_for_prose_rules(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Ingest only (the check is registered for every run in the process)."""
    if not _is_ingest(case) or case.meta is None:
        return
    positive = case.meta.generation.mode.is_positive
    status = response.status_code
    if positive and status == 400:
        code = response.json().get("code")
        assert code in PROSE_RULES, f"a schema-valid request was refused with {code!r}: {response.text[:300]}"
    if not positive and status == 202 and case.operation.path in BATCH_PATHS:
        assert response.json()["rejected"] >= 1, (
            f"a schema-violating batch was wholly accepted: {response.text}"
        )


def test_ingest_answers_every_generated_request_as_its_openapi_document_says(
    start_ingest: IngestFactory, tenant: Tenant
) -> None:
    running = start_ingest(rate_limit_events_per_second=0)
    started = time.monotonic()
    report = run_schemathesis(
        f"{running.url}/openapi.json",
        base_url=running.url,
        max_examples=30,
        headers=tenant.headers,
        checks={"negative_data_rejection": {"expected-statuses": NEGATIVE_STATUSES}},
        operations=[
            {
                "include-path-regex": "^/v1/(track|identify)$",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_STATUSES, "400"]}},
            },
            {
                "include-path-regex": "^/v1/(batch|events|import)$",
                "checks": {"negative_data_rejection": {"enabled": False}},
            },
        ],
    )
    print(f"schemathesis on ingest in {time.monotonic() - started:.1f} s: {report.summary()}")
    report.assert_clean(min_requests=200)
