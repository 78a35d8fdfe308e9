"""The registry's REST API against real PostgreSQL, in-process: ids, versions, compatibility levels,
deletes, config, mode, references and the Confluent error codes clients switch on."""

from __future__ import annotations

import json
import uuid

import pytest

CT = {"Content-Type": "application/vnd.schemaregistry.v1+json"}


def record(*fields: dict, name: str = "User", namespace: str = "io.plg.test.v1") -> str:
    return json.dumps({"type": "record", "name": name, "namespace": namespace, "fields": list(fields)})


def f(name: str, type_: object = "string", **extra: object) -> dict:
    return {"name": name, "type": type_, **extra}


V_A = record(f("a"))
V_A_B_DEFAULT = record(f("a"), f("b", "int", default=0))
V_A_B = record(f("a"), f("b", "int"))
V_A_INT = record(f("a", "int"))


def register(api, subject: str, schema: str, **body: object):
    return api.post(f"/subjects/{subject}/versions", json={"schema": schema, **body})


def registered(api, subject: str, schema: str) -> dict:
    response = register(api, subject, schema)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status: int, code: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code, body
    for fragment in fragments:
        assert fragment in body["message"], body


def set_level(api, subject: str, level: str) -> None:
    response = api.put(f"/config/{subject}", json={"compatibility": level})
    assert response.status_code == 200, response.text
    assert response.json() == {"compatibility": level}


# -- ids and versions ----------------------------------------------------------------------------------------


def test_same_schema_gets_the_same_global_id_under_two_subjects(api, subject):
    other = f"other-{subject}"
    first = registered(api, subject, V_A)
    second = registered(api, other, json.dumps(json.loads(V_A), indent=4))  # same schema, other whitespace
    assert first["id"] == second["id"]
    assert first["version"] == second["version"] == 1
    versions = api.get(f"/schemas/ids/{first['id']}/versions").json()
    assert {"subject": subject, "version": 1} in versions
    assert {"subject": other, "version": 1} in versions
    assert sorted(api.get(f"/schemas/ids/{first['id']}/subjects").json()) == sorted([subject, other])


def test_registering_an_existing_schema_again_returns_its_version_and_adds_none(api, subject):
    first = registered(api, subject, V_A)
    registered(api, subject, V_A_B_DEFAULT)
    again = registered(api, subject, V_A)
    assert (again["id"], again["version"]) == (first["id"], 1)
    assert api.get(f"/subjects/{subject}/versions").json() == [1, 2]


def test_a_new_schema_gets_a_new_id_and_the_next_version(api, subject):
    one = registered(api, subject, V_A)
    two = registered(api, subject, V_A_B_DEFAULT)
    assert two["id"] != one["id"]
    assert two["version"] == 2
    latest = api.get(f"/subjects/{subject}/versions/latest").json()
    assert latest == {
        "subject": subject,
        "version": 2,
        "id": two["id"],
        "guid": two["guid"],
        "schema": V_A_B_DEFAULT,
    }
    assert api.get(f"/subjects/{subject}/versions/-1").json()["version"] == 2
    assert json.loads(api.get(f"/subjects/{subject}/versions/1/schema").text) == json.loads(V_A)


def test_schema_by_id_answers_the_schema_text(api, subject):
    schema_id = registered(api, subject, V_A)["id"]
    body = api.get(f"/schemas/ids/{schema_id}", params={"subject": subject}).json()
    assert body["schema"] == V_A
    assert "schemaType" not in body  # AVRO is implied, as in Confluent's answers
    assert json.loads(api.get(f"/schemas/ids/{schema_id}/schema").text) == json.loads(V_A)
    assert api.get(f"/schemas/guids/{body['guid']}").json()["id"] == schema_id


def test_lookup_finds_the_version_of_a_registered_schema(api, subject):
    created = registered(api, subject, V_A)
    found = api.post(f"/subjects/{subject}", json={"schema": V_A}).json()
    assert (found["subject"], found["version"], found["id"]) == (subject, 1, created["id"])
    assert_error(api.post(f"/subjects/{subject}", json={"schema": V_A_INT}), 404, 40403)
    assert_error(api.post(f"/subjects/no-{subject}", json={"schema": V_A}), 404, 40401)


def test_normalize_stores_the_canonical_form(api, subject):
    spaced = json.dumps(json.loads(record(f("only_here"))), indent=2)
    schema_id = api.post(f"/subjects/{subject}/versions?normalize=true", json={"schema": spaced}).json()["id"]
    stored = api.get(f"/schemas/ids/{schema_id}").json()["schema"]
    assert "\n" not in stored
    assert json.loads(stored) == json.loads(spaced)


# -- compatibility -------------------------------------------------------------------------------------------

LEVEL_CASES = [
    ("BACKWARD", V_A, V_A_B_DEFAULT, V_A_B),
    ("FORWARD", V_A, V_A_B, V_A_INT),
    ("FULL", V_A, V_A_B_DEFAULT, V_A_B),
    ("NONE", V_A, V_A_INT, None),
]


@pytest.mark.parametrize(
    ("level", "first", "accepted", "refused"), LEVEL_CASES, ids=[c[0] for c in LEVEL_CASES]
)
def test_each_level_accepts_a_compatible_change_and_refuses_an_incompatible_one(
    api, subject, level, first, accepted, refused
):
    set_level(api, subject, level)
    registered(api, subject, first)
    if refused is not None:
        response = register(api, subject, refused)
        assert_error(response, 409, 409, subject, level)
        assert api.get(f"/subjects/{subject}/versions").json() == [1], (
            "a refused schema must not add a version"
        )
    assert registered(api, subject, accepted)["version"] == 2


# (history oldest first, new schema): the new one is fine against the latest version only.
TRANSITIVE_CASES = {
    "BACKWARD": ((V_A, V_A_B_DEFAULT), V_A_B),
    "FORWARD": ((V_A_B, V_A_B_DEFAULT), V_A),
    "FULL": ((V_A_B, V_A_B_DEFAULT), V_A),
}


@pytest.mark.parametrize("base", sorted(TRANSITIVE_CASES))
def test_transitive_levels_check_all_versions_while_plain_ones_check_the_latest(api, base):
    history, new = TRANSITIVE_CASES[base]
    plain, transitive = f"plain-{uuid.uuid4().hex[:8]}", f"transitive-{uuid.uuid4().hex[:8]}"
    set_level(api, plain, base)
    set_level(api, transitive, f"{base}_TRANSITIVE")
    for old in history:
        registered(api, plain, old)
        registered(api, transitive, old)
    assert registered(api, plain, new)["version"] == 3
    assert_error(register(api, transitive, new), 409, 409, "oldSchemaVersion:1")


def test_soft_deleted_versions_take_no_part_in_compatibility_checks(api, subject):
    registered(api, subject, V_A)
    assert_error(register(api, subject, V_A_INT), 409, 409)
    assert api.delete(f"/subjects/{subject}/versions/1").json() == 1
    assert registered(api, subject, V_A_INT)["version"] == 2


def test_subject_level_overrides_the_global_level(api, subject):
    assert api.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    assert_error(api.get(f"/config/{subject}"), 404, 40401)
    set_level(api, subject, "NONE")
    assert api.get(f"/config/{subject}").json() == {"compatibilityLevel": "NONE"}
    registered(api, subject, V_A)
    assert registered(api, subject, V_A_INT)["version"] == 2
    assert api.delete(f"/config/{subject}").json() == {"compatibilityLevel": "NONE"}
    assert_error(api.get(f"/config/{subject}"), 404, 40408)
    assert api.get(f"/config/{subject}?defaultToGlobal=true").json() == {"compatibilityLevel": "BACKWARD"}
    assert_error(register(api, subject, V_A_B), 409, 409)  # back under the global BACKWARD level


def test_global_level_applies_to_subjects_without_their_own(api, subject):
    try:
        assert api.put("/config", json={"compatibility": "forward"}).json() == {"compatibility": "FORWARD"}
        assert api.get("/config").json() == {"compatibilityLevel": "FORWARD"}
        registered(api, subject, V_A)
        assert registered(api, subject, V_A_B)["version"] == 2  # FORWARD allows adding a required field
    finally:
        assert api.delete("/config").json() == {"compatibilityLevel": "FORWARD"}
    assert api.get("/config").json() == {"compatibilityLevel": "BACKWARD"}


def test_compatibility_endpoint_answers_without_registering(api, subject):
    registered(api, subject, V_A)
    ok = api.post(f"/compatibility/subjects/{subject}/versions/latest", json={"schema": V_A_B_DEFAULT})
    assert ok.json() == {"is_compatible": True}
    bad = api.post(f"/compatibility/subjects/{subject}/versions/1?verbose=true", json={"schema": V_A_B})
    assert bad.json()["is_compatible"] is False
    assert any("READER_FIELD_MISSING_DEFAULT_VALUE" in m for m in bad.json()["messages"])
    everything = api.post(f"/compatibility/subjects/{subject}/versions", json={"schema": V_A_INT})
    assert everything.json() == {"is_compatible": False}
    assert api.get(f"/subjects/{subject}/versions").json() == [1]
    fresh = api.post(f"/compatibility/subjects/new-{subject}/versions", json={"schema": V_A})
    assert fresh.json() == {"is_compatible": True}
    assert_error(
        api.post(f"/compatibility/subjects/new-{subject}/versions/latest", json={"schema": V_A}), 404, 40401
    )
    assert_error(api.post(f"/compatibility/subjects/{subject}/versions/7", json={"schema": V_A}), 404, 40402)


# -- error codes ---------------------------------------------------------------------------------------------


def test_not_found_error_codes(api, subject):
    registered(api, subject, V_A)
    assert_error(api.get(f"/subjects/missing-{subject}/versions"), 404, 40401)
    assert_error(api.get(f"/subjects/missing-{subject}/versions/1"), 404, 40401)
    assert_error(api.get(f"/subjects/{subject}/versions/99"), 404, 40402)
    assert_error(api.get("/schemas/ids/2147483000"), 404, 40403)
    assert_error(api.get("/schemas/ids/not-a-number"), 404, 40403)
    assert_error(api.get("/schemas/guids/not-a-guid"), 404, 40403)


def test_invalid_versions_and_levels_are_422(api, subject):
    registered(api, subject, V_A)
    for bad in ("abc", "0", "-2", "2147483648"):
        assert_error(api.get(f"/subjects/{subject}/versions/{bad}"), 422, 42202, bad)
    assert_error(api.put(f"/config/{subject}", json={"compatibility": "SIDEWAYS"}), 422, 42203, "SIDEWAYS")
    assert_error(api.put("/mode", json={"mode": "SOMETIMES"}), 422, 42204)


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ('{"type": "recrd", "name": "X"}', "recrd"),
        (record(f("a", "strin")), "strin"),
        (record(f("n", "int", default="zero")), "Invalid default for field n"),
        ("{not json", "not valid JSON"),
    ],
)
def test_invalid_avro_is_refused_with_42201_and_the_reason(api, subject, schema, reason):
    assert_error(register(api, subject, schema), 422, 42201, reason)
    assert_error(api.get(f"/subjects/{subject}/versions"), 404, 40401)


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        (b"{bad json", 400, 400, "Malformed JSON"),
        (b"", 400, 400, "empty"),
        (b'{"schema": {"type": "string"}}', 422, 42201, "must be a string"),
        (b'{"schemaType": "AVRO"}', 422, 42201, "Empty schema"),
        (b'{"schema": "\\"string\\"", "schemaType": "PROTOBUF"}', 422, 42201, "AVRO schemas only"),
        (b"[1, 2]", 422, 42201, "JSON object"),
    ],
)
def test_malformed_requests_get_a_clear_4xx_never_a_500(api, subject, body, status, code, fragment):
    assert_error(api.post(f"/subjects/{subject}/versions", content=body), status, code, fragment)
    assert_error(api.post(f"/subjects/{subject}", content=body), status, code, fragment)


def test_hostile_input_gets_a_precise_4xx_never_a_500(api, subject):
    assert_error(api.get("/subjects/a%00b/versions"), 422, 42208)
    assert_error(api.post("/subjects/tab%09name/versions", json={"schema": V_A}), 422, 42208)
    assert_error(api.get("/subjects", params={"subjectPrefix": "a\x00"}), 400, 400, "NUL")
    nul_metadata = {"schema": V_A, "metadata": {"properties": {"owner": "x\u0000y"}}}
    assert_error(api.post(f"/subjects/{subject}/versions", json=nul_metadata), 422, 42201, "NUL")
    deep_body = b'{"schema": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(api.post(f"/subjects/{subject}/versions", content=deep_body), 400, 400, "deeply")
    deep_schema = '{"type": "array", "items": ' * 300 + '"string"' + "}" * 300
    assert_error(register(api, subject, deep_schema), 422, 42201, "levels deep")
    huge = json.dumps({"schema": V_A, "padding": "x" * (5 * 1024 * 1024)})
    assert_error(api.post(f"/subjects/{subject}/versions", content=huge), 422, 42209, "larger than")
    assert_error(api.get(f"/subjects/{subject}/versions"), 404, 40401)


def test_config_body_must_be_json(api, subject):
    assert_error(api.put(f"/config/{subject}", content=b"FULL"), 400, 400, "Malformed JSON")


def test_unknown_routes_answer_in_the_registry_error_shape(api):
    response = api.get("/no/such/route")
    assert_error(response, 404, 404)


def test_only_avro_is_offered(api):
    assert api.get("/schemas/types").json() == ["AVRO"]


# -- deletes -------------------------------------------------------------------------------------------------


def test_soft_deleted_version_is_hidden_unless_asked_for_and_its_number_is_never_reused(api, subject):
    set_level(api, subject, "NONE")
    one, two = registered(api, subject, V_A), registered(api, subject, V_A_INT)
    assert api.delete(f"/subjects/{subject}/versions/2").json() == 2
    assert api.get(f"/subjects/{subject}/versions").json() == [1]
    assert api.get(f"/subjects/{subject}/versions?deleted=true").json() == [1, 2]
    assert api.get(f"/subjects/{subject}/versions?deleted_only=true").json() == [2]
    assert_error(api.get(f"/subjects/{subject}/versions/2"), 404, 40402)
    assert api.get(f"/subjects/{subject}/versions/2?deleted=true").json()["id"] == two["id"]
    assert api.get(f"/schemas/ids/{two['id']}").status_code == 200  # old records stay decodable
    assert api.get(f"/subjects/{subject}/versions/latest").json()["version"] == 1
    assert_error(api.delete(f"/subjects/{subject}/versions/2"), 404, 40406)
    three = registered(api, subject, V_A_B)
    assert three["version"] == 3
    # The soft-deleted schema registered again becomes a new version with its old id.
    again = registered(api, subject, V_A_INT)
    assert (again["id"], again["version"]) == (two["id"], 4)
    assert one["id"] != two["id"]


def test_permanent_delete_needs_a_soft_delete_first(api, subject):
    registered(api, subject, V_A)
    registered(api, subject, V_A_B_DEFAULT)
    assert_error(api.delete(f"/subjects/{subject}/versions/1?permanent=true"), 404, 40407)
    assert_error(api.delete(f"/subjects/{subject}?permanent=true"), 404, 40405)
    assert api.delete(f"/subjects/{subject}/versions/1").json() == 1
    assert api.delete(f"/subjects/{subject}/versions/1?permanent=true").json() == 1
    assert api.get(f"/subjects/{subject}/versions?deleted=true").json() == [2]
    assert_error(api.get(f"/subjects/{subject}/versions/1?deleted=true"), 404, 40402)
    assert_error(api.delete(f"/subjects/{subject}/versions/1"), 404, 40402)


def test_soft_then_permanent_subject_delete(api, subject):
    registered(api, subject, V_A)
    registered(api, subject, V_A_B_DEFAULT)
    set_level(api, subject, "FULL")
    assert api.delete(f"/subjects/{subject}").json() == [1, 2]
    assert subject not in api.get("/subjects").json()
    assert subject in api.get("/subjects?deleted=true").json()
    assert_error(api.get(f"/subjects/{subject}/versions"), 404, 40401)
    assert_error(api.delete(f"/subjects/{subject}"), 404, 40404)
    assert_error(api.get(f"/config/{subject}"), 404, 40408)  # a soft delete drops the subject's config
    assert api.delete(f"/subjects/{subject}?permanent=true").json() == [1, 2]
    assert subject not in api.get("/subjects?deleted=true").json()
    assert_error(api.delete(f"/subjects/{subject}?permanent=true"), 404, 40401)
    # A permanently deleted subject starts over at version 1.
    assert registered(api, subject, V_A_INT)["version"] == 1


def test_subject_listing_filters(api, subject):
    prefix = subject[:12]
    registered(api, subject, V_A)
    assert api.get("/subjects", params={"subjectPrefix": prefix}).json() == [subject]
    assert api.get("/subjects", params={"subjectPrefix": prefix, "deleted_only": "true"}).json() == []
    listed = api.get("/schemas", params={"subjectPrefix": prefix}).json()
    assert [(s["subject"], s["version"]) for s in listed] == [(subject, 1)]


# -- references ----------------------------------------------------------------------------------------------

ADDRESS = record(f("city"), name="Address", namespace="io.plg.common.v1")
WITH_ADDRESS = record(f("name"), f("home", "io.plg.common.v1.Address"), name="Customer")


def test_schema_references_resolve_and_protect_what_they_reference(api, subject):
    address_subject = f"address-{subject}"
    registered(api, address_subject, ADDRESS)
    refs = [{"name": "io.plg.common.v1.Address", "subject": address_subject, "version": 1}]
    created = register(api, subject, WITH_ADDRESS, references=refs)
    assert created.status_code == 200, created.text
    schema_id = created.json()["id"]
    assert api.get(f"/schemas/ids/{schema_id}").json()["references"] == refs
    assert api.get(f"/subjects/{subject}/versions/1").json()["references"] == refs
    assert api.get(f"/subjects/{address_subject}/versions/1/referencedby").json() == [schema_id]
    assert (
        api.post(f"/subjects/{subject}", json={"schema": WITH_ADDRESS, "references": refs}).json()["id"]
        == schema_id
    )
    resolved = json.loads(api.get(f"/schemas/ids/{schema_id}?format=resolved").json()["schema"])
    assert resolved["fields"][1]["type"]["name"] == "Address"
    assert_error(api.delete(f"/subjects/{address_subject}/versions/1"), 422, 42206)
    assert_error(api.delete(f"/subjects/{address_subject}"), 422, 42206)
    # Without the reference the named type is unknown.
    assert_error(register(api, f"x-{subject}", WITH_ADDRESS), 422, 42201, "Address")
    bad_ref = [{"name": "io.plg.common.v1.Address", "subject": address_subject, "version": 9}]
    assert_error(
        register(api, f"x-{subject}", WITH_ADDRESS, references=bad_ref), 422, 42201, "does not exist"
    )


# -- mode ----------------------------------------------------------------------------------------------------


def test_read_only_subject_refuses_writes(api, subject):
    registered(api, subject, V_A)
    assert api.put(f"/mode/{subject}", json={"mode": "READONLY"}).json() == {"mode": "READONLY"}
    assert api.get(f"/mode/{subject}").json() == {"mode": "READONLY"}
    assert_error(register(api, subject, V_A_B_DEFAULT), 422, 42205, "read-only")
    assert_error(api.delete(f"/subjects/{subject}/versions/1"), 422, 42205)
    assert api.get("/mode").json() == {"mode": "READWRITE"}
    assert api.delete(f"/mode/{subject}").json() == {"mode": "READONLY"}
    assert registered(api, subject, V_A_B_DEFAULT)["version"] == 2


def test_import_mode_keeps_the_ids_and_versions_of_another_registry(api, subject):
    assert api.put(f"/mode/{subject}", json={"mode": "IMPORT"}).json() == {"mode": "IMPORT"}
    imported = register(api, subject, record(f("imported")), id=1_500_000, version=5)
    assert imported.status_code == 200, imported.text
    assert (imported.json()["id"], imported.json()["version"]) == (1_500_000, 5)
    assert api.get("/schemas/ids/1500000").json()["schema"] == record(f("imported"))
    assert_error(register(api, subject, record(f("other")), id=1_500_000), 422, 42205, "1500000")
    api.put(f"/mode/{subject}", json={"mode": "READWRITE"})
    after = registered(api, subject, record(f("imported"), f("more", default="")))
    assert after["version"] == 6
    assert after["id"] > 1_500_000, "automatic ids must move past imported ones"
    assert_error(register(api, subject, V_A, id=7), 422, 42205, "import mode")


def test_import_mode_on_a_subject_with_schemas_needs_force(api, subject):
    registered(api, subject, V_A)
    assert_error(api.put(f"/mode/{subject}", json={"mode": "IMPORT"}), 422, 42205)
    assert api.put(f"/mode/{subject}?force=true", json={"mode": "IMPORT"}).json() == {"mode": "IMPORT"}
    api.delete(f"/mode/{subject}")


# -- operations ----------------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(api, subject):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    registered(api, subject, V_A)
    text = api.get("/metrics").text
    assert (
        'schema_registry_requests_total{method="POST",route="/subjects/{subject}/versions",status="200"}'
        in text
    )
    assert "schema_registry_request_duration_seconds_bucket" in text
    assert 'schema_registry_registrations_total{outcome="ok"}' in text
    assert api.get("/").json() == {}
