"""The flags API for real: definitions with ETag/304, admin changes audited and pushed to SSE subscribers,
server-side evaluation with exposure events."""

from __future__ import annotations

import time
import uuid

import httpx

from services.kernel.topics import USAGE_EVENTS, topic
from tests.auth_support import customer_key, new_customer, operator_token
from tests.integration.growth.conftest import STICKY_AB_FLAG, GrowthFactory, RunningGrowth, SseReader
from tests.integration.ingest.conftest import read_topic


def new_key() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def test_an_admin_change_is_pushed_to_an_sse_subscriber_without_waiting_for_the_periodic_reload(
    start_growth: GrowthFactory,
) -> None:
    # No periodic reload for an hour: a change that arrives came through PostgreSQL's NOTIFY, at once
    # (within a second on a quiet machine; how fast is not asserted, a loaded CI machine decides that).
    growth = start_growth(flags_poll_seconds=3600)
    reader = SseReader(f"{growth.url}/v1/flags/stream", growth.auth_headers())
    try:
        first, _ = reader.next("flags", timeout=30)
        key = new_key()
        assert key not in {f["key"] for f in first["flags"]}
        with growth.admin() as admin:
            answer = admin.put(f"/v1/admin/flags/{key}", json={"rollout": 25, "description": "from a test"})
        assert answer.status_code == 201, answer.text
        while True:
            doc, _ = reader.next("flags", timeout=60)
            if key in {f["key"] for f in doc["flags"]}:
                break
        assert doc["revision"] == answer.json()["revision"]
    finally:
        reader.close()


def test_flags_document_answers_304_to_its_etag_until_a_change(growth: RunningGrowth) -> None:
    with growth.client() as client, growth.admin() as admin:
        first = client.get("/v1/flags")
        assert first.status_code == 200
        etag = first.headers["etag"]
        assert client.get("/v1/flags", headers={"If-None-Match": etag}).status_code == 304
        assert admin.put(f"/v1/admin/flags/{new_key()}", json={}).status_code == 201
        again = client.get("/v1/flags", headers={"If-None-Match": etag})
        assert again.status_code == 200
        assert again.headers["etag"] != etag


def test_admin_changes_are_versioned_audited_and_checked(growth: RunningGrowth) -> None:
    key = new_key()
    path = f"/v1/admin/flags/{key}"
    db = growth.settings.database
    with (
        growth.client(token=None) as anonymous,
        growth.client(token=operator_token(db, "viewer")) as viewer,
        growth.admin("ann@plg.dev") as ann,
        growth.admin("bob@plg.dev") as bob,
    ):
        assert anonymous.put(path, json={}).status_code == 401
        assert viewer.put(path, json={}).status_code == 403  # below editor
        bad = ann.put(path, json={"rollout": 150, "default": {"variant": "maybe"}})
        assert bad.status_code == 422
        assert "rollout" in bad.json()["message"]
        assert "maybe" in bad.json()["message"]  # every problem at once

        assert ann.put(path, json={"rollout": 100}).json()["version"] == 1
        # The audit names the operator of the credential, never a header the caller writes.
        assert (
            bob.patch(path, json={"enabled": False}, headers={"X-Plg-Actor": "mallory"}).json()["version"]
            == 2
        )
        stale = ann.put(path, json={"rollout": 50}, headers={"If-Match": '"1"'})
        assert stale.status_code == 409
        assert stale.json()["code"] == "version_conflict"

        evaluated = viewer.post("/v1/flags/evaluate", json={"flag_key": key, "context": {"user_id": "u"}})
        assert evaluated.json()["reason"] == "DISABLED"  # the kill switch, at once

        history = ann.get(f"{path}/history").json()["changes"]
        assert [(c["version"], c["action"], c["actor"]) for c in history] == [
            (2, "update", "bob@plg.dev"),
            (1, "create", "ann@plg.dev"),
        ]
        assert history[0]["before"]["rollout"] == 100
        assert history[0]["after"]["enabled"] is False
        assert ann.delete(path).status_code == 200
        assert ann.get(path).status_code == 404
        assert ann.get(f"{path}/history").json()["changes"][0]["action"] == "delete"


def test_evaluate_answers_openfeature_details_and_writes_one_exposure(
    growth: RunningGrowth, provisioned
) -> None:
    key = new_key()
    customer = new_customer(growth.settings.database)
    # A browser's publishable key: the exposure is filed under the key's customer, named or not.
    publishable = customer_key(growth.settings.database, customer, "publishable")
    with growth.admin() as admin, growth.client(token=publishable) as client:
        assert admin.put(f"/v1/admin/flags/{key}", json={"rollout": 100}).status_code == 201
        body = {"flag_key": key, "context": {"targetingKey": "user-1"}}
        for _ in range(3):  # the same identity, flag version and variant: one exposure
            details = client.post("/v1/flags/evaluate", json=body).json()
        assert details == {
            "flag_key": key,
            "value": True,
            "variant": "on",
            "reason": "STATIC",
            "error_code": None,
            "error_message": None,
            "flag_metadata": {"version": 1, "sticky": False},
        }
        missing = client.post("/v1/flags/evaluate", json={"flag_key": "nope", "default_value": 7}).json()
        assert (missing["value"], missing["reason"], missing["error_code"]) == (7, "ERROR", "FLAG_NOT_FOUND")
        assert client.post("/v1/flags/evaluate", content=b"{").status_code == 422
    s = growth.settings
    records = read_topic(
        s.kafka.bootstrap_servers, s.registry.url, topic(USAGE_EVENTS, provisioned.prefix).name, 1, settle=1.5
    )
    exposures = [r.value() for r in records if r.value()["customer_id"] == customer]
    assert len(exposures) == 1
    assert exposures[0]["name"] == "$flag_exposure"
    assert exposures[0]["properties"]["flag_key"] == key
    assert exposures[0]["user_id"] == "user-1"


def test_sticky_assignments_survive_sign_up_server_side(growth: RunningGrowth) -> None:
    key = new_key()
    with growth.admin() as admin, growth.client() as client:
        assert admin.put(f"/v1/admin/flags/{key}", json=STICKY_AB_FLAG).status_code == 201

        def variant(ctx: dict) -> str:
            answer: httpx.Response = client.post("/v1/flags/evaluate", json={"flag_key": key, "context": ctx})
            return answer.json()["variant"]

        for i in range(20):
            anon, user = f"anon-{uuid.uuid4().hex}", f"user-{i}-{uuid.uuid4().hex[:6]}"
            before = variant({"anonymous_id": anon})
            assert variant({"anonymous_id": anon, "user_id": user}) == before
            assert variant({"user_id": user}) == before


def test_the_sdk_evaluates_locally_and_follows_admin_changes(growth: RunningGrowth) -> None:
    from plg_sdk import FlagsClient, Onboarding

    customer = new_customer(growth.settings.database)
    publishable = customer_key(growth.settings.database, customer, "publishable")  # as in a browser
    client = FlagsClient(growth.url, api_key=publishable)
    try:
        assert client.wait_ready(10)
        key = new_key()
        assert client.evaluate(key, {}).error_code == "FLAG_NOT_FOUND"
        with growth.admin() as admin:
            assert admin.put(f"/v1/admin/flags/{key}", json={"rollout": 100}).status_code == 201
            deadline = time.monotonic() + 2
            while not client.is_enabled(key, {"user_id": "u"}) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert client.is_enabled(key, {"user_id": "u"})
            assert admin.patch(f"/v1/admin/flags/{key}", json={"enabled": False}).status_code == 200
            deadline = time.monotonic() + 2
            while client.is_enabled(key, {"user_id": "u"}) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert client.evaluate(key, {"user_id": "u"}).reason == "DISABLED"
        # The same answers as the service's for the same context.
        for i in range(20):
            ctx = {"user_id": f"u{i}", "plan": "pro", "country": "NZ"}
            with growth.client() as http:
                server = http.post(
                    "/v1/flags/evaluate", json={"flag_key": "new_dashboard", "context": ctx}
                ).json()
            assert client.variant("new_dashboard", ctx) == server["variant"]
        onboarding = Onboarding(growth.url, api_key=publishable)
        step = onboarding.next_step(customer, "u-1", intent="import_data")
        assert step is not None
        assert step["id"] == "create-project"
    finally:
        client.close()
