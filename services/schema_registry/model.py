"""The registry's rules, with no I/O: request parsing, Avro canonical form and identity, compatibility
decisions (through Apache Avro's own ``ReaderWriterCompatibilityChecker``), version selection and the
Confluent error vocabulary.

Everything here is a plain function over plain data so it can be unit-tested without a database.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum, StrEnum
from typing import Any, Literal

import avro.errors
import avro.name
import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
)

# ---------------------------------------------------------------------------------------------------------
# Errors, in Confluent's vocabulary: an HTTP status plus an ``error_code`` the clients switch on.
# ---------------------------------------------------------------------------------------------------------


class ErrorCode(IntEnum):
    BAD_REQUEST = 400
    UNAUTHORIZED = 40101
    FORBIDDEN = 40301
    NOT_FOUND = 404
    SUBJECT_NOT_FOUND = 40401
    VERSION_NOT_FOUND = 40402
    SCHEMA_NOT_FOUND = 40403
    SUBJECT_SOFT_DELETED = 40404
    SUBJECT_NOT_SOFT_DELETED = 40405
    VERSION_SOFT_DELETED = 40406
    VERSION_NOT_SOFT_DELETED = 40407
    SUBJECT_COMPATIBILITY_NOT_CONFIGURED = 40408
    SUBJECT_MODE_NOT_CONFIGURED = 40409
    INCOMPATIBLE_SCHEMA = 409
    INVALID_SCHEMA = 42201
    INVALID_VERSION = 42202
    INVALID_COMPATIBILITY_LEVEL = 42203
    INVALID_MODE = 42204
    OPERATION_NOT_PERMITTED = 42205
    REFERENCE_EXISTS = 42206
    INVALID_SUBJECT = 42208
    SCHEMA_TOO_LARGE = 42209
    STORE_ERROR = 50001

    @property
    def http_status(self) -> int:
        # Confluent's codes are the HTTP status plus two digits (40401 -> 404); 409 and 400 stand alone.
        value = int(self)
        return value if value < 1000 else value // 100


class RegistryError(Exception):
    """An error answered to the client as ``{"error_code": ..., "message": ...}``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return self.code.http_status

    def body(self) -> dict[str, Any]:
        return {"error_code": int(self.code), "message": self.message}


def subject_not_found(subject: str) -> RegistryError:
    return RegistryError(ErrorCode.SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: object) -> RegistryError:
    return RegistryError(ErrorCode.VERSION_NOT_FOUND, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(detail: str = "Schema not found") -> RegistryError:
    return RegistryError(ErrorCode.SCHEMA_NOT_FOUND, detail)


def invalid_schema(detail: str) -> RegistryError:
    return RegistryError(ErrorCode.INVALID_SCHEMA, f"Invalid schema: {detail}")


def not_permitted(detail: str) -> RegistryError:
    return RegistryError(ErrorCode.OPERATION_NOT_PERMITTED, detail)


# ---------------------------------------------------------------------------------------------------------
# Compatibility levels and modes
# ---------------------------------------------------------------------------------------------------------


class Compatibility(StrEnum):
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")

    @property
    def new_reads_old(self) -> bool:
        """BACKWARD: consumers on the new schema can read data written with the old one."""
        return self.value.startswith(("BACKWARD", "FULL"))

    @property
    def old_reads_new(self) -> bool:
        """FORWARD: consumers still on the old schema can read data written with the new one."""
        return self.value.startswith(("FORWARD", "FULL"))


INVALID_COMPATIBILITY_MESSAGE = (
    "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, "
    "forward_transitive, and full_transitive"
)


def parse_compatibility(value: object) -> Compatibility:
    if isinstance(value, str):
        try:
            return Compatibility(value.strip().upper())
        except ValueError:
            pass
    raise RegistryError(
        ErrorCode.INVALID_COMPATIBILITY_LEVEL, f"{INVALID_COMPATIBILITY_MESSAGE} (got {value!r})"
    )


class Mode(StrEnum):
    READWRITE = "READWRITE"
    READONLY = "READONLY"
    READONLY_OVERRIDE = "READONLY_OVERRIDE"
    IMPORT = "IMPORT"

    @property
    def read_only(self) -> bool:
        return self in (Mode.READONLY, Mode.READONLY_OVERRIDE)


def parse_mode(value: object) -> Mode:
    if isinstance(value, str):
        try:
            return Mode(value.strip().upper())
        except ValueError:
            pass
    raise RegistryError(
        ErrorCode.INVALID_MODE,
        f"Invalid mode {value!r}. Valid values are READWRITE, READONLY, READONLY_OVERRIDE and IMPORT",
    )


# ---------------------------------------------------------------------------------------------------------
# Subjects, versions, query flags
# ---------------------------------------------------------------------------------------------------------

MAX_VERSION = 2**31 - 1
LATEST: Literal["latest"] = "latest"
VersionSpec = int | Literal["latest"]


#: Longest subject, in characters. Kafka topic names stop at 249 characters, so even a record-name
#: strategy subject (topic + full record name) fits; PostgreSQL's index on the subject cannot hold keys
#: much over 2.7 KB, and 512 characters are at most 2 KB of UTF-8. (Characters, not bytes, so the OpenAPI
#: document can state the limit exactly: ``maxLength``.)
MAX_SUBJECT_CHARS = 512


def validate_subject(subject: str) -> str:
    """Subjects are free text, but control characters (NUL above all, which PostgreSQL cannot store) would
    corrupt logs and URLs (Karapace's 42208), and they are bounded in length."""
    if not subject or any(ord(c) <= 31 or 127 <= ord(c) <= 159 for c in subject):
        raise RegistryError(
            ErrorCode.INVALID_SUBJECT, f"The specified subject {subject[:200]!r} is not valid."
        )
    if len(subject) > MAX_SUBJECT_CHARS:
        raise RegistryError(
            ErrorCode.INVALID_SUBJECT,
            f"The specified subject is {len(subject)} characters long; "
            f"at most {MAX_SUBJECT_CHARS} are allowed.",
        )
    if any("\ud800" <= c <= "\udfff" for c in subject):  # a lone surrogate cannot be stored as UTF-8
        raise RegistryError(ErrorCode.INVALID_SUBJECT, "The specified subject is not valid Unicode.")
    return subject


def parse_version(raw: str | int) -> VersionSpec:
    """``1``..``2^31-1``, ``latest`` or ``-1`` (an alias of latest); anything else is 42202."""
    text = str(raw).strip()
    if text.lower() == LATEST or text == "-1":
        return LATEST
    # ASCII digits only: int() would also take "+1", "1_0" and other scripts' digits (U+0661...).
    number = int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else 0
    if 1 <= number <= MAX_VERSION:
        return number
    raise RegistryError(
        ErrorCode.INVALID_VERSION,
        f"The specified version '{raw}' is not a valid version id. "
        'Allowed values are between [1, 2^31-1] and the string "latest"',
    )


def parse_bool(raw: str | None, name: str, default: bool = False) -> bool:
    """Query flags: ``true`` or ``false`` in any case (the Python client sends both ``false`` from httpx
    params and ``False`` from str.format), as the OpenAPI document's ``boolean`` says; anything else,
    the empty string included, is refused rather than guessed."""
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise RegistryError(ErrorCode.BAD_REQUEST, f"Query parameter {name!r} must be true or false, got {raw!r}")


def parse_int(raw: str | None, name: str, default: int) -> int:
    if raw is None:
        return default
    try:
        if not raw.strip().lstrip("-").isdigit() or not raw.isascii():
            raise ValueError(raw)
        return int(raw)
    except ValueError:
        raise RegistryError(
            ErrorCode.BAD_REQUEST, f"Query parameter {name!r} must be an integer, got {raw!r}"
        ) from None


def paginate(items: Sequence[Any], offset: int, limit: int) -> list[Any]:
    """Confluent's offset/limit: a negative or zero limit means 'all'."""
    start = max(offset, 0)
    return list(items[start:]) if limit <= 0 else list(items[start : start + limit])


@dataclass(frozen=True)
class VersionRow:
    version: int
    schema_id: int
    deleted: bool


class Lookup(Enum):
    """Which versions a read sees: live only (default), live and soft-deleted, or soft-deleted only."""

    LIVE = "live"
    ALL = "all"
    DELETED_ONLY = "deleted_only"

    @classmethod
    def from_flags(cls, deleted: bool, deleted_only: bool = False) -> Lookup:
        if deleted_only:
            return cls.DELETED_ONLY
        return cls.ALL if deleted else cls.LIVE

    def admits(self, row: VersionRow) -> bool:
        if self is Lookup.LIVE:
            return not row.deleted
        if self is Lookup.DELETED_ONLY:
            return row.deleted
        return True


def visible(rows: Iterable[VersionRow], lookup: Lookup) -> list[VersionRow]:
    return sorted((r for r in rows if lookup.admits(r)), key=lambda r: r.version)


def select_version(
    subject: str, rows: Sequence[VersionRow], spec: VersionSpec, include_deleted: bool
) -> VersionRow:
    """The row a ``GET /subjects/{s}/versions/{v}`` answers, or the matching 404.

    Soft-deleted versions are invisible unless ``include_deleted``; a subject with no visible version is
    "not found" (40401), like Confluent.
    """
    seen = visible(rows, Lookup.ALL if include_deleted else Lookup.LIVE)
    if not seen:
        raise subject_not_found(subject)
    if spec == LATEST:
        return seen[-1]
    for row in seen:
        if row.version == spec:
            return row
    raise version_not_found(subject, spec)


def versions_to_check(level: Compatibility, rows: Sequence[VersionRow]) -> list[VersionRow]:
    """The earlier versions a new schema must be compatible with: none for NONE, the latest live version
    for the plain levels, every live version for the transitive ones (newest first). Soft-deleted versions
    never take part, as in Confluent."""
    live = visible(rows, Lookup.LIVE)
    if level is Compatibility.NONE or not live:
        return []
    if level.transitive:
        return list(reversed(live))
    return [live[-1]]


# ---------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------

SUPPORTED_SCHEMA_TYPES = ("AVRO",)


@dataclass(frozen=True)
class SchemaReference:
    name: str
    subject: str
    version: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "version": self.version}


@dataclass(frozen=True)
class SchemaRequest:
    """The body of register / lookup / compatibility requests."""

    schema: str
    schema_type: str = "AVRO"
    references: tuple[SchemaReference, ...] = ()
    metadata: Mapping[str, Any] | None = None
    rule_set: Mapping[str, Any] | None = None
    # Only in IMPORT mode: the id and version the schema must get (migrating from another registry).
    schema_id: int | None = None
    version: int | None = None


class NotJSONError(ValueError):
    """Python's json module takes NaN, Infinity and overflowing floats; JSON (and Java's Jackson, which
    Confluent parses with) does not."""


def _no_constant(name: str) -> Any:
    raise NotJSONError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJSONError(f"{text[:40]} overflows a double")
    return value


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` refusing what is not JSON: NaN, Infinity, numbers that overflow a double. Raises
    ValueError (a JSONDecodeError, NotJSONError, or the integer-digits limit), RecursionError or
    UnicodeDecodeError."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON; malformed JSON is a 400 naming the parser's complaint, never a 500."""
    if not raw.strip():
        raise RegistryError(ErrorCode.BAD_REQUEST, "Request body is empty; expected a JSON object")
    try:
        return strict_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, NotJSONError, the int-digits limit
        raise RegistryError(ErrorCode.BAD_REQUEST, f"Malformed JSON request body: {exc}"[:500]) from None
    except RecursionError:
        raise RegistryError(ErrorCode.BAD_REQUEST, "Malformed JSON request body: nested too deeply") from None


# Real schemas nest a few levels (a record level is ~3 JSON levels); a bound keeps parsing and Avro's
# recursive compatibility checker far from Python's recursion limit.
MAX_SCHEMA_DEPTH = 128


def json_depth(value: object) -> int:
    """Nesting depth of a JSON value, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def has_nul(value: object) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000; such input is refused up front."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _optional_object(body: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_schema(f"'{key}' must be a JSON object, got {type(value).__name__}")
    if has_nul(value):
        raise invalid_schema(f"'{key}' must not contain NUL (U+0000) characters")
    if json_depth(value) > MAX_SCHEMA_DEPTH:
        raise invalid_schema(f"'{key}' nests more than {MAX_SCHEMA_DEPTH} levels deep")
    return value


def _optional_positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise invalid_schema(f"'{key}' must be a positive 32-bit integer, got {value!r}")
    return value


def parse_schema_request(body: Any) -> SchemaRequest:
    if not isinstance(body, dict):
        raise invalid_schema(
            f"the request body must be a JSON object with a 'schema' field, got {type(body).__name__}"
        )
    schema = body.get("schema")
    if schema is None or (isinstance(schema, str) and not schema.strip()):
        raise invalid_schema("Empty schema: the request needs a non-empty 'schema' field")
    if not isinstance(schema, str):
        raise invalid_schema(
            '\'schema\' must be a string holding the schema\'s JSON (e.g. "{\\"type\\": \\"string\\"}"), '
            f"got a JSON {type(schema).__name__}"
        )
    schema_type = body.get("schemaType")
    if schema_type is None:
        schema_type = "AVRO"
    if not isinstance(schema_type, str):
        raise invalid_schema(f"'schemaType' must be a string, got {schema_type!r}")
    schema_type = schema_type.upper()
    if schema_type not in SUPPORTED_SCHEMA_TYPES:
        raise invalid_schema(
            f"schemaType {schema_type} is not supported by this registry; it stores AVRO schemas only"
        )
    raw_refs = body.get("references")
    if raw_refs is None:
        raw_refs = []
    if not isinstance(raw_refs, list):
        raise invalid_schema("'references' must be a list of {name, subject, version}")
    refs: list[SchemaReference] = []
    for ref in raw_refs:
        if not isinstance(ref, dict):
            raise invalid_schema("each reference must be an object {name, subject, version}")
        name, subject, version = ref.get("name"), ref.get("subject"), ref.get("version")
        if not isinstance(name, str) or not name or not isinstance(subject, str) or not subject:
            raise invalid_schema(f"reference {ref} needs a non-empty 'name' and 'subject'")
        if isinstance(version, bool) or not isinstance(version, int) or not (version == -1 or version >= 1):
            raise invalid_schema(f"reference {ref} needs an integer 'version' (>= 1, or -1 for latest)")
        refs.append(SchemaReference(name, subject, version))
    return SchemaRequest(
        schema=schema,
        schema_type=schema_type,
        references=tuple(refs),
        metadata=_optional_object(body, "metadata"),
        rule_set=_optional_object(body, "ruleSet"),
        schema_id=_optional_positive_int(body, "id"),
        version=_optional_positive_int(body, "version"),
    )


def parse_config_request(body: Any) -> Compatibility:
    """``PUT /config``: ``{"compatibility": "FULL"}`` (``compatibilityLevel`` accepted too).

    Confluent's newer config fields (metadata and rule-set defaults, compatibility groups) would change what
    gets registered; silently ignoring them would mislead, so they are refused.
    """
    if not isinstance(body, dict):
        raise RegistryError(
            ErrorCode.INVALID_COMPATIBILITY_LEVEL, f"{INVALID_COMPATIBILITY_MESSAGE} (no body object)"
        )
    unsupported = sorted(
        k for k, v in body.items() if k not in ("compatibility", "compatibilityLevel") and v is not None
    )
    if unsupported:
        raise not_permitted(
            f"Config fields {unsupported} are not supported by this registry; only 'compatibility'"
        )
    given = [parse_compatibility(body[k]) for k in ("compatibility", "compatibilityLevel") if k in body]
    if not given:
        return parse_compatibility(None)
    if len(given) > 1:
        raise RegistryError(
            ErrorCode.INVALID_COMPATIBILITY_LEVEL,
            "Send one of 'compatibility' and 'compatibilityLevel', not both",
        )
    return given[0]


def parse_mode_request(body: Any) -> Mode:
    if not isinstance(body, dict):
        raise RegistryError(ErrorCode.INVALID_MODE, 'Expected a JSON object {"mode": ...}')
    return parse_mode(body.get("mode"))


# ---------------------------------------------------------------------------------------------------------
# Avro: parsing, validation, canonical form, identity
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedSchema:
    """A parsed Avro schema plus what the registry derives from it.

    ``named_types`` holds every named type the schema defines or pulls in through references, so a schema
    that references this one can be parsed against them.
    """

    avro_schema: avro.schema.Schema
    canonical: str
    named_types: Mapping[str, avro.schema.NamedSchema] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedReference:
    """A reference whose subject/version was found: its schema id and its parsed schema."""

    reference: SchemaReference
    version: int
    schema_id: int
    parsed: ParsedSchema


def _describe_exception(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."


def parse_avro(schema_text: str, references: Sequence[ResolvedReference] = ()) -> ParsedSchema:
    """Parse with the ``avro`` package (names and enum symbols validated), then check field defaults.

    Named types of referenced schemas are visible to this one, as Confluent resolves references. The
    canonical form is the parsed schema re-serialised as compact JSON with sorted keys — whitespace, key
    order and namespace spelling disappear; docs, defaults, aliases, logical types and custom properties
    stay (they matter to readers), and referenced types appear by name.
    """
    try:
        return _parse_avro(schema_text, references)
    except RecursionError:
        raise invalid_schema(f"the schema nests too deeply (more than {MAX_SCHEMA_DEPTH} levels)") from None


def _parse_avro(schema_text: str, references: Sequence[ResolvedReference]) -> ParsedSchema:
    try:
        data = strict_json(schema_text)
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity/overflow, the int-digits limit
        raise invalid_schema(f"the schema is not valid JSON: {exc}"[:500]) from None
    if json_depth(data) > MAX_SCHEMA_DEPTH:
        raise invalid_schema(f"the schema nests more than {MAX_SCHEMA_DEPTH} levels deep")
    names = avro.name.Names(validate_names=True)
    for ref in references:
        names.names.update(ref.parsed.named_types)
    from_references = dict(names.names)
    try:
        with warnings.catch_warnings():
            # An invalid logical type is ignored with a warning (as in Java Avro); not an error here either.
            warnings.simplefilter("ignore")
            if isinstance(data, str) and data in names.names:
                parsed: avro.schema.Schema = names.names[data]
            else:
                parsed = avro.schema.make_avsc_object(
                    data, names, validate_enum_symbols=True, validate_names=True
                )
    except (avro.errors.AvroException, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise invalid_schema(_describe_exception(exc)) from None
    validate_defaults(parsed)
    out_names = avro.name.Names(validate_names=False)
    out_names.names.update(from_references)
    canonical = json.dumps(
        parsed.to_json(out_names), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return ParsedSchema(avro_schema=parsed, canonical=canonical, named_types=dict(names.names))


def validate_defaults(schema: avro.schema.Schema) -> None:
    """Refuse field defaults that do not match the field's type (Java Avro, and so Confluent, refuse them;
    the Python parser does not check). For a union the default must match the first branch (Avro spec)."""
    seen: set[int] = set()

    def walk(s: avro.schema.Schema, path: str) -> None:
        if id(s) in seen:
            return
        seen.add(id(s))
        if isinstance(s, avro.schema.RecordSchema):
            for f in s.fields:
                where = f"{path}/{f.name}" if path else f.name
                if f.has_default and not _valid_default(f.type, f.default):
                    raise invalid_schema(
                        f"Invalid default for field {where}: {json.dumps(f.default)} "
                        f"is not a {_type_label(f.type)}"
                    )
                walk(f.type, where)
        elif isinstance(s, avro.schema.ArraySchema):
            walk(s.items, path)
        elif isinstance(s, avro.schema.MapSchema):
            walk(s.values, path)
        elif isinstance(s, avro.schema.UnionSchema):
            for branch in s.schemas:
                walk(branch, path)

    walk(schema, "")


def _type_label(s: avro.schema.Schema) -> str:
    if isinstance(s, avro.schema.UnionSchema):
        return f"{_type_label(s.schemas[0])} (the first branch of the union)" if s.schemas else "union"
    if isinstance(s, avro.schema.NamedSchema):
        return f"{s.type} {s.fullname}"
    return str(s.type)


def _valid_default(s: avro.schema.Schema, value: object) -> bool:
    kind = s.type
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("int", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        bound = 2**31 if kind == "int" else 2**63
        return -bound <= value < bound
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            # NaN/Infinity cannot come from strict JSON, but a 400-digit integer overflows a double.
            return math.isfinite(float(value))
        except OverflowError:
            return False
    if kind in ("string", "bytes", "fixed"):
        return isinstance(value, str)
    if kind == "enum":
        return isinstance(value, str) and value in s.symbols  # type: ignore[attr-defined]
    if isinstance(s, avro.schema.ArraySchema):
        return isinstance(value, list) and all(_valid_default(s.items, v) for v in value)
    if isinstance(s, avro.schema.MapSchema):
        return isinstance(value, dict) and all(_valid_default(s.values, v) for v in value.values())
    if isinstance(s, avro.schema.UnionSchema):
        return bool(s.schemas) and _valid_default(s.schemas[0], value)
    if isinstance(s, avro.schema.RecordSchema):
        if not isinstance(value, dict):
            return False
        for f in s.fields:
            if f.name in value:
                if not _valid_default(f.type, value[f.name]):
                    return False
            elif not f.has_default:
                return False
        return True
    return True


def fingerprint(
    parsed: ParsedSchema,
    schema_type: str,
    references: Sequence[ResolvedReference] = (),
    metadata: Mapping[str, Any] | None = None,
    rule_set: Mapping[str, Any] | None = None,
) -> str:
    """The identity of a schema: two registrations with the same fingerprint get the same global id.

    References count by the schema ids they resolved to, so a reference to a subject that was deleted and
    re-created with other content is a different schema.
    """
    identity = {
        "type": schema_type,
        "schema": parsed.canonical,
        "references": [[r.reference.name, r.reference.subject, r.version, r.schema_id] for r in references],
        "metadata": metadata,
        "ruleSet": rule_set,
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Compatibility
# ---------------------------------------------------------------------------------------------------------

_EXPLANATIONS = {
    SchemaIncompatibilityType.name_mismatch: "a named type changed its name (add the old name to 'aliases')",
    SchemaIncompatibilityType.fixed_size_mismatch: "a fixed type changed its size",
    SchemaIncompatibilityType.missing_enum_symbols: "the writer has enum symbols the reader lacks (give the "
    "reader enum a 'default')",
    SchemaIncompatibilityType.reader_field_missing_default_value: "the reader has a field the writer's data "
    "lacks, and that field has no default",
    SchemaIncompatibilityType.type_mismatch: "a field's type changed in a way Avro cannot resolve",
    SchemaIncompatibilityType.missing_union_branch: "the writer can write a union branch the reader lacks",
}


@dataclass(frozen=True)
class Incompatibility:
    """One failed reader/writer check against one earlier version."""

    old_version: int
    direction: Literal["BACKWARD", "FORWARD"]
    error_types: tuple[str, ...]
    messages: tuple[str, ...]
    locations: tuple[str, ...]

    def describe(self) -> str:
        if self.direction == "BACKWARD":
            who = f"the new schema (reader) cannot read data written with version {self.old_version}"
        else:
            who = f"version {self.old_version} (reader) cannot read data written with the new schema"
        why = "; ".join(_EXPLANATIONS[SchemaIncompatibilityType(t.lower())] for t in self.error_types)
        return (
            f"{{errorType:'{','.join(self.error_types)}', oldSchemaVersion:{self.old_version}, "
            f"direction:'{self.direction}', description:'{who}: {why}', "
            f"details:{list(self.messages)}, locations:{list(self.locations)}}}"
        )


def reader_can_read(
    reader: avro.schema.Schema, writer: avro.schema.Schema
) -> tuple[bool, list[str], list[str], list[str]]:
    """Apache Avro's own verdict on whether ``reader`` can decode data written with ``writer``."""
    # A fresh checker each time: it memoises by object identity.
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    try:
        result = checker.get_compatibility(reader, writer)
    except RecursionError:
        raise invalid_schema("the schema nests too deeply to check its compatibility") from None
    if result.compatibility is SchemaCompatibilityType.compatible:
        return True, [], [], []
    types = sorted({t.name.upper() for t in result.incompatibilities})
    return False, types, sorted(result.messages), sorted(result.locations)


def check_compatibility(
    level: Compatibility, candidate: ParsedSchema, previous: Sequence[tuple[int, ParsedSchema]]
) -> list[Incompatibility]:
    """Every incompatibility of ``candidate`` with the given earlier versions under ``level``.

    ``previous`` is what :func:`versions_to_check` chose (so transitivity is decided there); the direction
    of each check comes from the level: BACKWARD reads old data with the new schema, FORWARD reads new data
    with the old schema, FULL needs both.
    """
    issues: list[Incompatibility] = []
    if level is Compatibility.NONE:
        return issues
    for version, old in previous:
        if level.new_reads_old:
            ok, types, messages, locations = reader_can_read(candidate.avro_schema, old.avro_schema)
            if not ok:
                issues.append(
                    Incompatibility(version, "BACKWARD", tuple(types), tuple(messages), tuple(locations))
                )
        if level.old_reads_new:
            ok, types, messages, locations = reader_can_read(old.avro_schema, candidate.avro_schema)
            if not ok:
                issues.append(
                    Incompatibility(version, "FORWARD", tuple(types), tuple(messages), tuple(locations))
                )
    return issues


def incompatibility_messages(level: Compatibility, issues: Sequence[Incompatibility]) -> list[str]:
    return [issue.describe() for issue in issues] + [f"{{compatibility: '{level.value}'}}"]


def incompatible_error(
    subject: str, level: Compatibility, issues: Sequence[Incompatibility]
) -> RegistryError:
    details = ", ".join(incompatibility_messages(level, issues))
    return RegistryError(
        ErrorCode.INCOMPATIBLE_SCHEMA,
        f'Schema being registered is incompatible with an earlier schema for subject "{subject}", '
        f"details: [{details}]",
    )


# ---------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------


def schema_fields(
    schema_text: str,
    schema_type: str,
    references: Sequence[Mapping[str, Any]],
    metadata: Mapping[str, Any] | None,
    rule_set: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The schema part of a response, shaped like Confluent's: ``schemaType`` only when not AVRO, empty
    references, metadata and rule set left out."""
    out: dict[str, Any] = {"schema": schema_text}
    if schema_type != "AVRO":
        out["schemaType"] = schema_type
    if references:
        out["references"] = [
            {"name": r["name"], "subject": r["subject"], "version": r["version"]} for r in references
        ]
    if metadata:
        out["metadata"] = metadata
    if rule_set:
        out["ruleSet"] = rule_set
    return out


def metadata_matches(metadata: Mapping[str, Any] | None, wanted: Mapping[str, str]) -> bool:
    """``GET /subjects/{s}/metadata?key=k&value=v``: every wanted pair is among the metadata's properties."""
    properties = (metadata or {}).get("properties") or {}
    return all(properties.get(k) == v for k, v in wanted.items())
