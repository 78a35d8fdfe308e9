"""schemathesis against a real registry process (``python -m services.schema_registry`` on its own
database), driven by the registry's ``/openapi.json``: the phases and default checks of ``st run`` for
every Confluent endpoint — generated subjects (any Unicode, very long, encoded slashes), versions
(-1, 0, 2^31, `latest`, junk), malformed schemas and bodies, flags and pages.

Soft-deleted versions stay readable with ``deleted=true`` / ``deleted_only=true`` (Confluent's semantics),
which schemathesis' ``use_after_free`` heuristic cannot know: it is off for those GET operations only.

A schema-valid request can still be refused for what JSON Schema cannot state, and only then: the
``schema`` string not being Avro (42201), the registry's state (a read-only mode set earlier in the run:
42205; a version referenced by another: 42206), a metadata lookup whose ``key``/``value`` lists differ in
length (400), and any parameter holding U+0000, which PostgreSQL text cannot store (400).
:func:`registry_refused_only_for_prose_rules` allows exactly those.
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis

from tests.auth_support import bearer, operator_token
from tests.http_support import run_schemathesis

PROSE_REFUSALS = frozenset({42201, 42205, 42206})


def _is_registry(case: schemathesis.Case) -> bool:
    return case.operation.schema.raw_schema.get("info", {}).get("title") == "plg schema registry"


@schemathesis.check
def registry_refused_only_for_prose_rules(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """Registry only (the check is registered for every run in the process)."""
    if not _is_registry(case) or case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code == 422:
        code = response.json().get("error_code")
        assert code in PROSE_REFUSALS, (
            f"a schema-valid request was refused with {code}: {response.text[:300]}"
        )
    if response.status_code == 400:
        # PostgreSQL text cannot hold U+0000: a parameter carrying one is refused on any route (the
        # OpenAPI's strings cannot say so); otherwise only the metadata lookup's list lengths.
        if "contains a NUL character" in response.text:
            return
        assert case.operation.path == "/subjects/{subject}/metadata", response.text[:300]


def test_registry_answers_every_generated_request_as_its_openapi_document_says(
    start_registry, registry_database
) -> None:
    # Protected, as in production, and driven by an editor operator: every write goes through the policy.
    registry = start_registry(registry_database, REGISTRY_ADMIN_TOKEN="schemathesis-admin-token")
    started = time.monotonic()
    report = run_schemathesis(
        f"{registry.url}/openapi.json",
        base_url=registry.url,
        max_examples=15,
        headers=bearer(operator_token(registry_database, "editor")),
        operations=[
            {
                # A subjectPrefix holding U+0000 is refused with 400 (PostgreSQL text cannot store it; the
                # custom check allows a 400 only for that). Listed first: it also needs use_after_free off.
                "include-method": "GET",
                "include-path-regex": "^/schemas$",
                "checks": {
                    "use_after_free": {"enabled": False},
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]
                    },
                },
            },
            {
                "include-path-regex": "^/(subjects/\\{subject\\}(/versions.*)?|compatibility/.*)$",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
                    }
                },
            },
            {
                # With deleted=true / deleted_only=true these answer soft-deleted versions on purpose
                # (Confluent's semantics); use_after_free cannot know the flag asked for them.
                "include-method": "GET",
                "include-path-regex": "^/(subjects(/\\{subject\\}/versions.*)?|schemas.*)$",
                "checks": {"use_after_free": {"enabled": False}},
            },
            {
                "include-path-regex": "^/subjects/\\{subject\\}/metadata$",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]
                    }
                },
            },
        ],
    )
    print(f"schemathesis on the registry in {time.monotonic() - started:.1f} s: {report.summary()}")
    report.assert_clean(min_requests=500)
