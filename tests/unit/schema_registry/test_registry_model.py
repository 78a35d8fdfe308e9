"""The registry's pure rules: canonical form and identity, validation, version selection, compatibility
decisions per level (through Avro's own checker) and request parsing."""

from __future__ import annotations

import json

import pytest

from services.schema_registry import model
from services.schema_registry.model import (
    LATEST,
    Compatibility,
    ErrorCode,
    Lookup,
    RegistryError,
    ResolvedReference,
    SchemaReference,
    VersionRow,
)


def record(*fields: dict, name: str = "User", namespace: str | None = "io.plg.test.v1") -> str:
    schema: dict = {"type": "record", "name": name, "fields": list(fields)}
    if namespace:
        schema["namespace"] = namespace
    return json.dumps(schema)


def f(name: str, type_: object = "string", **extra: object) -> dict:
    return {"name": name, "type": type_, **extra}


def parse(text: str) -> model.ParsedSchema:
    return model.parse_avro(text)


def error_code(exc_info: pytest.ExceptionInfo[RegistryError]) -> int:
    return int(exc_info.value.code)


# -- identity ------------------------------------------------------------------------------------------------


def test_whitespace_and_key_order_do_not_change_a_schemas_identity():
    compact = '{"type":"record","name":"User","fields":[{"name":"a","type":"string"}]}'
    spaced = '{ "fields": [ { "type": "string", "name": "a" } ],\n  "name": "User", "type": "record" }'
    assert model.fingerprint(parse(compact), "AVRO") == model.fingerprint(parse(spaced), "AVRO")


def test_namespace_spelled_inside_the_name_is_the_same_schema():
    dotted = '{"type":"record","name":"io.plg.User","fields":[{"name":"a","type":"string"}]}'
    separate = '{"type":"record","name":"User","namespace":"io.plg","fields":[{"name":"a","type":"string"}]}'
    assert parse(dotted).canonical == parse(separate).canonical


def test_primitive_written_as_object_or_string_is_the_same_schema():
    assert parse('{"type": "string"}').canonical == parse('"string"').canonical


@pytest.mark.parametrize(
    "changed",
    [
        record(f("a", doc="what a is")),  # docs are shown to humans: a different schema
        record(f("a", default="x")),  # defaults change how old data is read
        record(f("a"), name="Account"),
        record(f("a", {"type": "string", "avro.java.string": "String"})),
    ],
)
def test_meaningful_changes_make_a_different_schema(changed):
    assert model.fingerprint(parse(record(f("a"))), "AVRO") != model.fingerprint(parse(changed), "AVRO")


def test_metadata_and_rule_set_are_part_of_the_identity():
    parsed = parse(record(f("a")))
    plain = model.fingerprint(parsed, "AVRO")
    assert model.fingerprint(parsed, "AVRO", metadata={"properties": {"owner": "growth"}}) != plain
    assert model.fingerprint(parsed, "AVRO", rule_set={"domainRules": []}) != plain


# -- validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_in_message"),
    [
        ('{"type": "recrd", "name": "X"}', "recrd"),
        ('{"type": "record", "name": "X"}', "fields"),
        (record(f("a", "strin")), "strin"),
        (record(f("a"), f("a")), "already in use"),
        ('{"type": "enum", "name": "E", "symbols": ["A", "A"]}', "Duplicate symbol"),
        ("not json at all", "not valid JSON"),
        ("42", "42"),
        ('{"type": "record", "name": "1bad", "fields": []}', "1bad"),
    ],
)
def test_invalid_avro_is_refused_with_42201_and_the_parsers_reason(text, expected_in_message):
    with pytest.raises(RegistryError) as exc_info:
        model.parse_avro(text)
    assert error_code(exc_info) == 42201
    assert exc_info.value.http_status == 422
    assert expected_in_message in exc_info.value.message


@pytest.mark.parametrize(
    ("field", "ok"),
    [
        (f("n", "int", default=1), True),
        (f("n", "int", default="one"), False),
        (f("n", "int", default=2**31), False),
        (f("n", "long", default=2**40), True),
        (f("n", "boolean", default=0), False),
        (f("n", "double", default=1), True),
        (f("n", ["null", "string"], default=None), True),
        (f("n", ["null", "string"], default="x"), False),  # a union default matches its first branch
        (f("n", ["string", "null"], default="x"), True),
        (f("n", {"type": "enum", "name": "E", "symbols": ["A", "B"]}, default="C"), False),
        (f("n", {"type": "map", "values": "long"}, default={"a": 1}), True),
        (f("n", {"type": "array", "items": "long"}, default=["x"]), False),
        (f("n", "bytes", default="\u00ff"), True),
    ],
)
def test_field_defaults_must_match_the_field_type(field, ok):
    text = record(field)
    if ok:
        model.parse_avro(text)
    else:
        with pytest.raises(RegistryError) as exc_info:
            model.parse_avro(text)
        assert error_code(exc_info) == 42201
        assert "Invalid default for field n" in exc_info.value.message


def test_every_platform_contract_is_a_valid_schema():
    from services.kernel.topics import SCHEMAS_DIR

    files = sorted(SCHEMAS_DIR.glob("*.avsc"))
    assert files
    for path in files:
        model.parse_avro(path.read_text())


# -- references ----------------------------------------------------------------------------------------------


def _address_reference(schema_id: int = 7) -> ResolvedReference:
    address = model.parse_avro(record(f("city"), name="Address", namespace="io.plg.common"))
    return ResolvedReference(
        SchemaReference("io.plg.common.Address", "address-value", 1), 1, schema_id, address
    )


def test_a_schema_can_use_named_types_of_its_references_which_stay_references_in_the_canonical_form():
    ref = _address_reference()
    parsed = model.parse_avro(record(f("home", "io.plg.common.Address")), [ref])
    assert json.loads(parsed.canonical)["fields"][0]["type"] == "io.plg.common.Address"


def test_an_unresolved_named_type_is_an_invalid_schema():
    with pytest.raises(RegistryError) as exc_info:
        model.parse_avro(record(f("home", "io.plg.common.Address")))
    assert error_code(exc_info) == 42201


def test_references_count_by_the_schema_they_resolved_to():
    text = record(f("home", "io.plg.common.Address"))
    one, other = _address_reference(7), _address_reference(8)
    assert model.fingerprint(model.parse_avro(text, [one]), "AVRO", [one]) != model.fingerprint(
        model.parse_avro(text, [other]), "AVRO", [other]
    )


# -- requests ------------------------------------------------------------------------------------------------


def test_schema_request_reads_confluents_fields():
    request = model.parse_schema_request(
        {
            "schema": '"string"',
            "schemaType": "avro",
            "references": [{"name": "X", "subject": "x-value", "version": 2}],
            "metadata": {"properties": {"owner": "growth"}},
        }
    )
    assert request.schema_type == "AVRO"
    assert request.references == (SchemaReference("X", "x-value", 2),)
    assert request.metadata == {"properties": {"owner": "growth"}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Empty schema"),
        ({"schema": ""}, "Empty schema"),
        ({"schema": {"type": "string"}}, "must be a string"),
        ({"schema": '"string"', "schemaType": "PROTOBUF"}, "AVRO schemas only"),
        ({"schema": '"string"', "schemaType": "JSON"}, "AVRO schemas only"),
        ({"schema": '"string"', "references": [{"name": "X"}]}, "reference"),
        ({"schema": '"string"', "metadata": "owner=growth"}, "metadata"),
        (["schema"], "JSON object"),
    ],
)
def test_malformed_schema_requests_are_42201_with_a_clear_message(body, message):
    with pytest.raises(RegistryError) as exc_info:
        model.parse_schema_request(body)
    assert error_code(exc_info) == 42201
    assert message in exc_info.value.message


@pytest.mark.parametrize("raw", [b"{bad", b"", b"  ", b'{"schema": "x"', b"\xff\xfe"])
def test_malformed_json_body_is_a_400_not_a_crash(raw):
    with pytest.raises(RegistryError) as exc_info:
        model.parse_json_body(raw)
    assert exc_info.value.http_status == 400
    assert exc_info.value.message


def test_config_request_accepts_any_case_and_refuses_unknown_levels_and_fields():
    assert model.parse_config_request({"compatibility": "full_transitive"}) is Compatibility.FULL_TRANSITIVE
    assert model.parse_config_request({"compatibilityLevel": "NONE"}) is Compatibility.NONE
    with pytest.raises(RegistryError) as exc_info:
        model.parse_config_request({"compatibility": "SIDEWAYS"})
    assert error_code(exc_info) == 42203
    with pytest.raises(RegistryError) as exc_info:
        model.parse_config_request({})
    assert error_code(exc_info) == 42203
    with pytest.raises(RegistryError) as exc_info:
        model.parse_config_request({"compatibility": "FULL", "defaultRuleSet": {"domainRules": []}})
    assert error_code(exc_info) == 42205


def test_mode_request_accepts_known_modes_only():
    assert model.parse_mode_request({"mode": "readonly"}) is model.Mode.READONLY
    with pytest.raises(RegistryError) as exc_info:
        model.parse_mode_request({"mode": "SOMETIMES"})
    assert error_code(exc_info) == 42204


# -- versions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("latest", LATEST), ("-1", LATEST), (" 7 ", 7)])
def test_version_ids(raw, expected):
    assert model.parse_version(raw) == expected


@pytest.mark.parametrize("raw", ["0", "-2", "abc", "1.5", str(2**31), ""])
def test_invalid_version_ids_are_42202(raw):
    with pytest.raises(RegistryError) as exc_info:
        model.parse_version(raw)
    assert error_code(exc_info) == 42202


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("True", True), ("false", False), ("False", False), (None, False)]
)
def test_query_flags_accept_both_spellings_the_python_client_sends(raw, expected):
    assert model.parse_bool(raw, "deleted") is expected


ROWS = [VersionRow(1, 10, False), VersionRow(2, 11, True), VersionRow(3, 12, False), VersionRow(4, 13, True)]


def test_soft_deleted_versions_are_invisible_unless_asked_for():
    assert model.select_version("s", ROWS, LATEST, include_deleted=False).version == 3
    assert model.select_version("s", ROWS, LATEST, include_deleted=True).version == 4
    assert model.select_version("s", ROWS, 2, include_deleted=True).schema_id == 11
    with pytest.raises(RegistryError) as exc_info:
        model.select_version("s", ROWS, 2, include_deleted=False)
    assert error_code(exc_info) == 40402


def test_a_subject_with_only_deleted_versions_is_not_found():
    rows = [VersionRow(1, 10, True)]
    with pytest.raises(RegistryError) as exc_info:
        model.select_version("s", rows, LATEST, include_deleted=False)
    assert error_code(exc_info) == 40401


def test_lookup_filters():
    assert [r.version for r in model.visible(ROWS, Lookup.LIVE)] == [1, 3]
    assert [r.version for r in model.visible(ROWS, Lookup.ALL)] == [1, 2, 3, 4]
    assert [r.version for r in model.visible(ROWS, Lookup.from_flags(True, deleted_only=True))] == [2, 4]


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (Compatibility.NONE, []),
        (Compatibility.BACKWARD, [3]),
        (Compatibility.FORWARD, [3]),
        (Compatibility.FULL, [3]),
        (Compatibility.BACKWARD_TRANSITIVE, [3, 1]),
        (Compatibility.FORWARD_TRANSITIVE, [3, 1]),
        (Compatibility.FULL_TRANSITIVE, [3, 1]),
    ],
)
def test_which_live_versions_a_new_schema_is_checked_against(level, expected):
    assert [r.version for r in model.versions_to_check(level, ROWS)] == expected


def test_pagination():
    assert model.paginate([1, 2, 3, 4], 1, 2) == [2, 3]
    assert model.paginate([1, 2, 3, 4], 0, -1) == [1, 2, 3, 4]
    assert model.paginate([1, 2, 3], 5, 1) == []


# -- compatibility -------------------------------------------------------------------------------------------

V_A = record(f("a"))
V_A_B_DEFAULT = record(f("a"), f("b", "int", default=0))
V_A_B = record(f("a"), f("b", "int"))
V_A_INT = record(f("a", "int"))


def verdict(level: Compatibility, new: str, *history: str) -> bool:
    """Would ``new`` be accepted after ``history`` (oldest first) under ``level``?"""
    rows = [VersionRow(i + 1, i + 1, False) for i in range(len(history))]
    parsed = {i + 1: parse(text) for i, text in enumerate(history)}
    previous = [(r.version, parsed[r.version]) for r in model.versions_to_check(level, rows)]
    return not model.check_compatibility(level, parse(new), previous)


@pytest.mark.parametrize(
    ("level", "old", "new", "accepted"),
    [
        # BACKWARD: the new schema must read old data.
        (Compatibility.BACKWARD, V_A, V_A_B_DEFAULT, True),  # add a field with a default
        (Compatibility.BACKWARD, V_A_B, V_A, True),  # drop a field
        (Compatibility.BACKWARD, V_A, V_A_B, False),  # add a field without default
        (Compatibility.BACKWARD, V_A, V_A_INT, False),  # string -> int
        # FORWARD: the old schema must read new data.
        (Compatibility.FORWARD, V_A, V_A_B, True),  # add a field (old readers ignore it)
        (Compatibility.FORWARD, V_A_B_DEFAULT, V_A, True),  # drop a field that had a default
        (Compatibility.FORWARD, V_A_B, V_A, False),  # drop a field old readers need
        # FULL: both.
        (Compatibility.FULL, V_A, V_A_B_DEFAULT, True),
        (Compatibility.FULL, V_A, V_A_B, False),
        (Compatibility.FULL, V_A_B, V_A, False),
        # NONE: anything goes.
        (Compatibility.NONE, V_A, V_A_INT, True),
        # Promotions Avro allows: int written, long read.
        (Compatibility.BACKWARD, record(f("n", "int")), record(f("n", "long")), True),
        (Compatibility.FORWARD, record(f("n", "int")), record(f("n", "long")), False),
    ],
)
def test_each_level_accepts_and_refuses_the_right_changes(level, old, new, accepted):
    assert verdict(level, new, old) is accepted


# Histories where the new schema is fine against the latest version but not against the first one.
TRANSITIVE_CASES = {
    "BACKWARD": (V_A, V_A_B_DEFAULT, V_A_B),
    "FORWARD": (V_A_B, V_A_B_DEFAULT, V_A),
    "FULL": (V_A_B, V_A_B_DEFAULT, V_A),
}


@pytest.mark.parametrize("base", ["BACKWARD", "FORWARD", "FULL"])
def test_transitive_levels_check_every_version_plain_levels_only_the_latest(base):
    first, second, new = TRANSITIVE_CASES[base]
    assert verdict(Compatibility(base), new, first, second) is True
    assert verdict(Compatibility(f"{base}_TRANSITIVE"), new, first, second) is False


def test_incompatibility_message_names_the_subject_the_version_and_the_field():
    issues = model.check_compatibility(Compatibility.BACKWARD, parse(V_A_B), [(1, parse(V_A))])
    error = model.incompatible_error("users-value", Compatibility.BACKWARD, issues)
    assert error.code is ErrorCode.INCOMPATIBLE_SCHEMA
    assert error.http_status == 409
    assert '"users-value"' in error.message
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in error.message
    assert "oldSchemaVersion:1" in error.message
    assert "'b'" in error.message
    assert "BACKWARD" in error.message


def test_full_reports_both_directions():
    issues = model.check_compatibility(Compatibility.FULL, parse(V_A_INT), [(1, parse(V_A))])
    assert {i.direction for i in issues} == {"BACKWARD", "FORWARD"}


# -- errors and responses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (40401, 404),
        (40402, 404),
        (40403, 404),
        (409, 409),
        (42201, 422),
        (42202, 422),
        (40101, 401),
        (400, 400),
    ],
)
def test_confluent_error_codes_map_to_http_statuses(code, status):
    assert ErrorCode(code).http_status == status


def test_avro_responses_leave_out_schema_type_and_empty_references():
    assert model.schema_fields('"string"', "AVRO", [], None, None) == {"schema": '"string"'}
    out = model.schema_fields(
        '"string"', "AVRO", [{"name": "X", "subject": "x", "version": 1, "id": 3}], None, None
    )
    assert out["references"] == [{"name": "X", "subject": "x", "version": 1}]


def test_metadata_matching():
    metadata = {"properties": {"owner": "growth", "tier": "gold"}}
    assert model.metadata_matches(metadata, {"owner": "growth"})
    assert not model.metadata_matches(metadata, {"owner": "billing"})
    assert not model.metadata_matches(None, {"owner": "growth"})


@pytest.mark.parametrize("subject", ["bad\nsubject", "tab\there", ""])
def test_subjects_with_control_characters_are_refused(subject):
    with pytest.raises(RegistryError) as exc_info:
        model.validate_subject(subject)
    assert error_code(exc_info) == 42208


def test_json_depth_and_nul_detection():
    assert model.json_depth("x") == 0
    assert model.json_depth({"a": [1, {"b": []}]}) == 4
    assert model.has_nul({"k": ["ok", "bad\x00"]})
    assert model.has_nul({"bad\x00key": 1})
    assert not model.has_nul({"k": ["ok"]})


def test_schemas_nesting_beyond_the_bound_are_refused_not_crashed():
    deep = '{"type": "array", "items": ' * 200 + '"string"' + "}" * 200
    with pytest.raises(RegistryError) as exc_info:
        model.parse_avro(deep)
    assert error_code(exc_info) == 42201
    shallow = '{"type": "array", "items": ' * 100 + '"string"' + "}" * 100
    parsed = model.parse_avro(shallow)
    assert not model.check_compatibility(Compatibility.FULL, parsed, [(1, parsed)])
