"""The registry's OpenAPI 3.1 document (served on ``/openapi.json``): Confluent's REST surface as this
registry implements it — every route of ``app.py``, its parameters, bodies, answers and error codes.

Written by hand because the handlers read raw requests (Confluent's API predates FastAPI's models), and
checked against the running service by schemathesis (tests/integration/schema_registry). What JSON Schema
cannot say — that ``schema`` must hold valid Avro, or that a subject's state (deleted, read-only) decides
an answer — is said in the descriptions.
"""

from __future__ import annotations

from typing import Any

from services.schema_registry.model import MAX_SUBJECT_CHARS, MAX_VERSION

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_REQUEST_TYPES = (CONTENT_TYPE, "application/vnd.schemaregistry+json", "application/json")

# -- schemas ------------------------------------------------------------------------------------------------

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error_code", "message"],
        "properties": {
            "error_code": {
                "type": "integer",
                "description": "Confluent's code: the HTTP status, or the status followed by two digits "
                "(40401 subject not found, 42201 invalid schema, ...).",
            },
            "message": {"type": "string"},
            "request_id": {"type": "string", "description": "On errors the kernel writes (404/405/408/5xx)."},
        },
    },
    "SchemaReference": {
        "type": "object",
        "required": ["name", "subject", "version"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "subject": {"type": "string", "minLength": 1},
            "version": {
                "anyOf": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
                    {"type": "integer", "enum": [-1]},
                ],
                "description": "A version of the referenced subject; -1 is its latest.",
            },
        },
    },
    "RegisterSchemaRequest": {
        "type": "object",
        "required": ["schema"],
        "properties": {
            "schema": {
                "type": "string",
                "minLength": 1,
                "description": "The Avro schema as JSON text. Refused with 42201 unless Avro parses it "
                "(names, enum symbols, field defaults matching their types; at most 128 levels deep; strict "
                "JSON: no NaN or Infinity).",
                "examples": [
                    '{"type": "record", "name": "User", "fields": [{"name": "a", "type": "string"}]}'
                ],
            },
            "schemaType": {
                "type": ["string", "null"],
                "enum": ["AVRO", None],
                "description": "AVRO only (the default; any case).",
            },
            "references": {
                "type": ["array", "null"],
                "items": {"$ref": "#/components/schemas/SchemaReference"},
            },
            "metadata": {"type": ["object", "null"], "description": "Stored and part of the identity."},
            "ruleSet": {"type": ["object", "null"], "description": "Stored and part of the identity."},
            "id": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": MAX_VERSION,
                "description": "IMPORT mode only (42205 otherwise).",
            },
            "version": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": MAX_VERSION,
                "description": "IMPORT mode only (42205 otherwise).",
            },
        },
    },
    "RegisteredSchema": {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": {"type": "integer"},
            "guid": {"type": "string"},
            "subject": {"type": "string"},
            "version": {"type": "integer"},
        },
    },
    "Schema": {
        "type": "object",
        "required": ["schema"],
        "properties": {
            "id": {"type": "integer"},
            "guid": {"type": "string"},
            "schema": {"type": "string"},
            "schemaType": {"type": "string"},
            "references": {"type": "array", "items": {"$ref": "#/components/schemas/SchemaReference"}},
            "metadata": {"type": "object"},
            "ruleSet": {"type": "object"},
            "maxId": {"type": "integer"},
        },
    },
    "SubjectVersion": {
        "allOf": [{"$ref": "#/components/schemas/Schema"}],
        "type": "object",
        "required": ["subject", "version", "id", "schema"],
        "properties": {
            "subject": {"type": "string"},
            "version": {"type": "integer"},
            "deleted": {"type": "boolean"},
        },
    },
    "SubjectVersionPair": {
        "type": "object",
        "required": ["subject", "version"],
        "properties": {"subject": {"type": "string"}, "version": {"type": "integer"}},
    },
    "CompatibilityLevel": {
        "type": "string",
        "enum": [
            "BACKWARD",
            "BACKWARD_TRANSITIVE",
            "FORWARD",
            "FORWARD_TRANSITIVE",
            "FULL",
            "FULL_TRANSITIVE",
            "NONE",
        ],
    },
    "Mode": {"type": "string", "enum": ["READWRITE", "READONLY", "READONLY_OVERRIDE", "IMPORT"]},
}
_SCHEMAS["ConfigRequest"] = {
    "type": "object",
    "properties": {
        "compatibility": {"$ref": "#/components/schemas/CompatibilityLevel"},
        "compatibilityLevel": {"$ref": "#/components/schemas/CompatibilityLevel"},
    },
    "additionalProperties": {
        "type": "null",
        "description": "Other config fields (defaultMetadata, overrideRuleSet...) are refused (42205).",
    },
    "description": "Exactly one of compatibility / compatibilityLevel (42203 otherwise).",
    "oneOf": [
        {"required": ["compatibility"], "not": {"required": ["compatibilityLevel"]}},
        {"required": ["compatibilityLevel"], "not": {"required": ["compatibility"]}},
    ],
}
_SCHEMAS["ModeRequest"] = {
    "type": "object",
    "required": ["mode"],
    "properties": {"mode": {"$ref": "#/components/schemas/Mode"}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# -- parameters ---------------------------------------------------------------------------------------------

_SUBJECT = {
    "name": "subject",
    "in": "path",
    "required": True,
    "description": f"Free text of 1-{MAX_SUBJECT_CHARS} characters without control characters (42208). A "
    "subject holding '/' cannot be addressed: the router decodes %2F (404).",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_SUBJECT_CHARS,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
    },
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": f"1 to {MAX_VERSION}, `latest` or -1 (latest); anything else is 42202.",
    "schema": {
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
            {"type": "integer", "enum": [-1]},
            {"type": "string", "enum": ["latest"]},
        ]
    },
}
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "A global schema id (40403 when none has it).",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
}


def _flag(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{description} (true/false in any case; 400 otherwise).",
        "schema": {"type": "boolean"},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_PAGE = [
    _query("offset", {"type": "integer"}, "Skip this many items."),
    _query("limit", {"type": "integer"}, "At most this many items; zero or negative means all."),
]
_DELETED = _flag("deleted", "Include soft-deleted versions")
_PREFIX = _query("subjectPrefix", {"type": "string"}, "Only subjects starting with this.")

# -- answers ------------------------------------------------------------------------------------------------

_REQUEST_ID_HEADER = {
    "X-Request-Id": {
        "description": "The client's request id when sane, else a fresh one.",
        "required": True,
        "schema": {"type": "string"},
    }
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _REQUEST_ID_HEADER,
        "content": {CONTENT_TYPE: {"schema": schema}},
    }


def _text(description: str) -> dict[str, Any]:
    # The body is the schema's own text, itself a JSON document (an object, an array or a string).
    return {
        "description": description,
        "headers": _REQUEST_ID_HEADER,
        "content": {CONTENT_TYPE: {"schema": {}}},
    }


_ERRORS_ALWAYS = {
    "400": "Malformed JSON body, bad query flag or integer, NUL in a parameter (error_code 400).",
    "401": "Credential missing, unknown or wrong (40101), when the registry is protected.",
    "403": "A valid credential below what the operation needs (40301): writes need an operator of role "
    "editor or the admin token.",
    "408": "The body did not arrive within REGISTRY_BODY_READ_TIMEOUT_SECONDS.",
    "500": "A bug of ours, logged with the body's request_id.",
    "503": "PostgreSQL unavailable (50001); retry.",
}


def _answers(ok: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for status, description in {**_ERRORS_ALWAYS, **errors}.items():
        out[status] = _json(_ref("Error"), description)
    return out


_NOT_FOUND_SUBJECT = {"404": "Subject (40401) or version (40402) not found."}
_SUBJECT_ERRORS = {
    "404": "Subject (40401), version (40402) or schema (40403) not found; soft-delete states (40404-40407).",
    "422": "Invalid subject (42208) or version (42202).",
}
_WRITE_ERRORS = {
    "404": "Subject (40401) or version (40402) not found; soft-delete states (40404-40407).",
    "422": "Invalid subject (42208) or version (42202); read-only or not permitted (42205); referenced by "
    "another schema (42206).",
}
_SCHEMA_ERRORS = {
    "404": "A reference's subject or version not found (40401/40402), or the subject for a lookup.",
    "409": "Incompatible with an earlier version under the subject's compatibility level.",
    "422": "Invalid schema (42201: Avro refused it, or the body's shape), invalid subject (42208) or version "
    "(42202), not permitted (42205: read-only mode, id/version outside IMPORT), body too large (42209).",
}


def _body(name: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {media: {"schema": _ref(name)} for media in _REQUEST_TYPES},
    }


def _op(
    summary: str,
    answers: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "responses": answers}
    if parameters:
        out["parameters"] = parameters
    if body:
        out["requestBody"] = body
    return out


_INTS = {"type": "array", "items": {"type": "integer"}}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_LEVEL = {
    "type": "object",
    "required": ["compatibilityLevel"],
    "properties": {"compatibilityLevel": _ref("CompatibilityLevel")},
}
_MODE = {"type": "object", "required": ["mode"], "properties": {"mode": _ref("Mode")}}
_DEFAULT_TO_GLOBAL = _flag("defaultToGlobal", "Answer the global setting when the subject has none")
_FORCE = _flag("force", "Switch to IMPORT although schemas exist")


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document of the registry's API."""
    sid = [_ID]
    subject = [_SUBJECT]
    subject_version = [_SUBJECT, _VERSION]
    schema_body = _body("RegisterSchemaRequest", "A schema and its references.")
    paths: dict[str, Any] = {
        "/": {"get": _op("Root (empty object)", _answers(_json({"type": "object"}, "{}"), {}))},
        "/contexts": {
            "get": _op("Contexts: only the default one", _answers(_json(_STRINGS, '["."]'), {}), _PAGE)
        },
        "/schemas/types": {"get": _op("Schema types", _answers(_json(_STRINGS, '["AVRO"]'), {}))},
        "/schemas": {
            "get": _op(
                "Schemas, with their subject and version",
                _answers(_json({"type": "array", "items": _ref("SubjectVersion")}, "The schemas."), {}),
                [_PREFIX, _DELETED, _flag("latestOnly", "Only each subject's latest version"), *_PAGE],
            )
        },
        "/schemas/ids/{id}": {
            "get": _op(
                "A schema by its global id",
                _answers(_json(_ref("Schema"), "The schema."), {"404": "No schema has this id (40403)."}),
                [
                    *sid,
                    _query("subject", {"type": "string"}, "Accepted and ignored: ids are global."),
                    _query("format", {"type": "string"}, "`resolved` inlines the referenced types."),
                    _flag("fetchMaxId", "Add maxId, the highest id"),
                ],
            )
        },
        "/schemas/ids/{id}/schema": {
            "get": _op(
                "A schema's text", _answers(_text("The schema text."), {"404": "No such id (40403)."}), sid
            )
        },
        "/schemas/ids/{id}/subjects": {
            "get": _op(
                "Subjects using a schema",
                _answers(_json(_STRINGS, "The subjects."), {"404": "No such id (40403)."}),
                [*sid, _query("subject", {"type": "string"}, "Only this subject."), _DELETED, *_PAGE],
            )
        },
        "/schemas/ids/{id}/versions": {
            "get": _op(
                "Subject versions using a schema",
                _answers(
                    _json({"type": "array", "items": _ref("SubjectVersionPair")}, "The pairs."),
                    {"404": "No such id (40403)."},
                ),
                [*sid, _query("subject", {"type": "string"}, "Only this subject."), _DELETED, *_PAGE],
            )
        },
        "/schemas/guids/{guid}": {
            "get": _op(
                "A schema by its GUID",
                _answers(_json(_ref("Schema"), "The schema."), {"404": "No schema has this GUID (40403)."}),
                [{"name": "guid", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/subjects": {
            "get": _op(
                "Subjects",
                _answers(_json(_STRINGS, "The subjects."), {}),
                [_PREFIX, _DELETED, _flag("deleted_only", "Only soft-deleted subjects"), *_PAGE],
            )
        },
        "/subjects/{subject}/versions": {
            "get": _op(
                "A subject's versions",
                _answers(_json(_INTS, "The version numbers."), _SUBJECT_ERRORS),
                [*subject, _DELETED, _flag("deleted_only", "Only soft-deleted versions"), *_PAGE],
            ),
            "post": _op(
                "Register a schema under a subject",
                _answers(_json(_ref("RegisteredSchema"), "Its id (and version)."), _SCHEMA_ERRORS),
                [*subject, _flag("normalize", "Store the canonical form of the text")],
                schema_body,
            ),
        },
        "/subjects/{subject}": {
            "post": _op(
                "Is this schema registered under the subject?",
                _answers(_json(_ref("SubjectVersion"), "The version holding it."), _SCHEMA_ERRORS),
                [*subject, _DELETED, _flag("normalize", "Accepted: identity is always canonical")],
                schema_body,
            ),
            "delete": _op(
                "Delete a subject (soft; permanent after a soft delete)",
                _answers(_json(_INTS, "The versions deleted."), _WRITE_ERRORS),
                [*subject, _flag("permanent", "Hard delete (only after a soft delete)")],
            ),
        },
        "/subjects/{subject}/versions/{version}": {
            "get": _op(
                "One version of a subject",
                _answers(_json(_ref("SubjectVersion"), "The version."), _SUBJECT_ERRORS),
                [*subject_version, _DELETED],
            ),
            "delete": _op(
                "Delete a version (soft; permanent after a soft delete)",
                _answers(_json({"type": "integer"}, "The version deleted."), _WRITE_ERRORS),
                [*subject_version, _flag("permanent", "Hard delete (only after a soft delete)")],
            ),
        },
        "/subjects/{subject}/versions/{version}/schema": {
            "get": _op(
                "One version's schema text",
                _answers(_text("The schema text."), _SUBJECT_ERRORS),
                [*subject_version, _DELETED],
            )
        },
        "/subjects/{subject}/versions/{version}/referencedby": {
            "get": _op(
                "Ids of the live schemas referencing this version",
                _answers(_json(_INTS, "The ids."), _SUBJECT_ERRORS),
                [*subject_version, *_PAGE],
            )
        },
        "/subjects/{subject}/metadata": {
            "get": _op(
                "The latest version whose metadata.properties match every key/value pair",
                _answers(
                    _json(_ref("SubjectVersion"), "The version."),
                    {**_SUBJECT_ERRORS, "400": "key and value must come in pairs (400)."},
                ),
                [
                    *subject,
                    {"name": "key", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
                    {
                        "name": "value",
                        "in": "query",
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    _DELETED,
                ],
            )
        },
        "/compatibility/subjects/{subject}/versions/{version}": {
            "post": _op(
                "Would this schema be compatible with that version?",
                _answers(_json(_COMPATIBILITY, "The verdict."), _SCHEMA_ERRORS),
                [*subject_version, _flag("verbose", "Add the reasons")],
                schema_body,
            )
        },
        "/compatibility/subjects/{subject}/versions": {
            "post": _op(
                "Would this schema be accepted under the subject's level?",
                _answers(_json(_COMPATIBILITY, "The verdict."), _SCHEMA_ERRORS),
                [*subject, _flag("verbose", "Add the reasons")],
                schema_body,
            )
        },
        "/config": {
            "get": _op("The global compatibility level", _answers(_json(_LEVEL, "The level."), {})),
            "put": _op(
                "Set the global compatibility level",
                _answers(_json(_CONFIG_ANSWER, "The level set."), _CONFIG_ERRORS),
                body=_body("ConfigRequest", "The level."),
            ),
            "delete": _op(
                "Reset the global level to the default", _answers(_json(_LEVEL, "The old level."), {})
            ),
        },
        "/config/{subject}": {
            "get": _op(
                "A subject's compatibility level",
                _answers(_json(_LEVEL, "The level."), {**_SUBJECT_ERRORS, "404": _NO_OWN_CONFIG}),
                [*subject, _DEFAULT_TO_GLOBAL],
            ),
            "put": _op(
                "Set a subject's compatibility level",
                _answers(_json(_CONFIG_ANSWER, "The level set."), {**_CONFIG_ERRORS, **_SUBJECT_ERRORS_422}),
                subject,
                _body("ConfigRequest", "The level."),
            ),
            "delete": _op(
                "Remove a subject's own level",
                _answers(_json(_LEVEL, "The removed level."), {**_SUBJECT_ERRORS, "404": _NO_OWN_CONFIG}),
                subject,
            ),
        },
        "/mode": {
            "get": _op("The global mode", _answers(_json(_MODE, "The mode."), {})),
            "put": _op(
                "Set the global mode",
                _answers(_json(_MODE, "The mode set."), _MODE_ERRORS),
                [_FORCE],
                _body("ModeRequest", "The mode."),
            ),
        },
        "/mode/{subject}": {
            "get": _op(
                "A subject's mode",
                _answers(_json(_MODE, "The mode."), {**_SUBJECT_ERRORS, "404": _NO_OWN_MODE}),
                [*subject, _DEFAULT_TO_GLOBAL],
            ),
            "put": _op(
                "Set a subject's mode",
                _answers(_json(_MODE, "The mode set."), {**_MODE_ERRORS, **_SUBJECT_ERRORS_422}),
                [*subject, _FORCE],
                _body("ModeRequest", "The mode."),
            ),
            "delete": _op(
                "Remove a subject's own mode",
                _answers(_json(_MODE, "The removed mode."), {**_SUBJECT_ERRORS, "404": _NO_OWN_MODE}),
                subject,
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "plg schema registry",
            "version": version,
            "description": "Confluent-compatible schema registry backed by PostgreSQL (AVRO only). Every "
            'error is {"error_code", "message"} with Confluent\'s codes; docs/schema-registry.md has the '
            "semantics and the differences from Confluent's registry.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "REGISTRY_ADMIN_TOKEN, needed for writes (and reads with "
                    "REGISTRY_PROTECT_READS); HTTP Basic with the token as password works too.",
                }
            },
        },
    }


_COMPATIBILITY = {
    "type": "object",
    "required": ["is_compatible"],
    "properties": {"is_compatible": {"type": "boolean"}, "messages": _STRINGS},
}
_CONFIG_ANSWER = {
    "type": "object",
    "required": ["compatibility"],
    "properties": {"compatibility": _ref("CompatibilityLevel")},
}
_CONFIG_ERRORS = {
    "422": "Invalid compatibility level (42203); unsupported config fields (42205).",
}
_MODE_ERRORS = {
    "422": "Invalid mode (42204); IMPORT where schemas exist without force (42205).",
}
_SUBJECT_ERRORS_422 = {
    "422": "Invalid subject (42208), level (42203) or mode (42204); not permitted (42205).",
}
_NO_OWN_CONFIG = "Subject not found (40401), or it has no level of its own (40408)."
_NO_OWN_MODE = "The subject has no mode of its own (40409)."
