"""Enrichment on the real stack: PII never in the enriched topic's bytes, identity resolution, every
violation dead-lettered or flagged with its reason and path, old schema versions mapped, tenant context."""

from __future__ import annotations

import uuid

import pytest
import yaml

from services.enrichment.plan import DEFAULT_PLAN_PATH
from services.kernel.processing.store import LocalStore
from services.kernel.topics import IDENTITY_LINKS
from tests.integration.enrichment.harness import event
from tests.integration.metering.harness import now_ms

pytestmark = pytest.mark.integration

PLANTED = {
    "email": "jane.doe@example.org",
    "note": "call me at +1 415 555 2671",
    "source": "from 203.0.113.77 today",
    "referral_code": "4111 1111 1111 1111",
}


def test_planted_pii_never_appears_in_the_enriched_topic_bytes(world):
    customer = world.customer("pro")
    running = world.start_enrichment()
    events = [
        event(customer, "signup_completed", plan="pro", **PLANTED),
        event(customer, "unplanned_thing", contact="JANE.DOE@example.org", ip="2001:db8::7334"),
        # In a key, and as a value that violates the plan (violation messages must not quote it).
        event(customer, "signup_completed", plan="jane.doe@example.org", **{"to:jane.doe@example.org": True}),
        event(customer, "core_action_completed", user_id="jane.doe@example.org", card=4111111111111111),
    ]
    world.send(events)
    got = world.wait_enriched([e["event_id"] for e in events])
    raw = b"".join(world.enriched_raw())
    for needle in (
        b"jane.doe@example.org",
        b"JANE.DOE",
        b"415 555 2671",
        b"4155552671",
        b"203.0.113.77",
        b"4111 1111 1111 1111",
        b"4111111111111111",
        b"2001:db8::7334",
    ):
        assert needle not in raw, needle
    first = got[events[0]["event_id"]]
    assert set(first["scrubbed_properties"]) == {"email", "note", "source", "referral_code"}
    assert first["properties"]["note"].startswith("call me at pii:")
    with_user = got[events[3]["event_id"]]
    assert "$user_id" in with_user["scrubbed_properties"]
    # Pseudonyms join: the same address gives the same value wherever it was.
    assert with_user["user_id"] == with_user["person_id"] == first["properties"]["email"]
    assert not running.errors


def test_anonymous_events_resolve_to_the_user_after_identify_and_to_the_survivor_after_merge(world):
    customer = world.customer("pro")
    running = world.start_enrichment()
    before = event(customer, anonymous_id="anon-7")
    world.send([before])
    assert world.wait_enriched([before["event_id"]])[before["event_id"]]["person_id"] == "anon-7"

    world.identify(customer, "anon-7", "user-a")
    world.wait_graph(running, lambda g: g.user_of(customer, "anon-7") == "user-a")
    after_identify = event(customer, anonymous_id="anon-7")
    world.send([after_identify])
    got = world.wait_enriched([after_identify["event_id"]])[after_identify["event_id"]]
    assert (got["person_id"], got["resolved_user_id"]) == ("user-a", "user-a")

    merge_id = world.merge(customer, "user-a", "user-b")
    announced = world.wait_enriched([merge_id])[merge_id]
    assert announced["name"] == "$person_merged"
    assert announced["merge"]["merged_id"] == "user-a"
    assert announced["person_id"] == "user-b"
    world.wait_graph(running, lambda g: g.canonical(customer, "user-a") == "user-b")
    after_merge = [event(customer, anonymous_id="anon-7"), event(customer, user_id="user-a")]
    world.send(after_merge)
    got = world.wait_enriched([e["event_id"] for e in after_merge])
    assert {got[e["event_id"]]["person_id"] for e in after_merge} == {"user-b"}


def test_a_restarted_instance_restores_the_identity_graph_before_enriching(world):
    customer = world.customer("pro")
    world.identify(customer, "anon-r", "user-r")
    world.merge(customer, "user-r", "user-s")
    first = world.start_enrichment()
    first.close()
    second = world.start_enrichment()
    e = event(customer, anonymous_id="anon-r")
    world.send([e])
    assert world.wait_enriched([e["event_id"]])[e["event_id"]]["person_id"] == "user-s"
    assert not second.errors


def test_a_restart_reuses_the_identity_store_and_one_that_cannot_trust_it_reads_the_topic(world):
    """Links past the memory bound (1000) live on disk; a clean stop seals the store at the view's
    offsets, so the next start reads only the records written since; an unsealed store (a crash) is
    wiped and identity-links is read whole. Every event resolves the same in all three runs."""
    customer = world.customer("pro")
    links = world.topic(IDENTITY_LINKS)
    for i in range(1500):
        link = {
            "customer_id": customer,
            "anonymous_id": f"anon-{i}",
            "user_id": f"user-{i}",
            "event_id": str(uuid.uuid4()),
            "linked_at": now_ms(),
            "kind": "identify",
        }
        world.producer.produce(links, world.links_encoder.encode(link), f"{customer}|anon-{i}")
    assert world.producer.flush(30) == 0

    def check(running, expected: dict[str, str]) -> None:
        sent = [event(customer, anonymous_id=anon) for anon in expected]
        world.send(sent)
        got = world.wait_enriched([e["event_id"] for e in sent], timeout=60)
        assert {e["anonymous_id"]: got[e["event_id"]]["person_id"] for e in sent} == expected
        assert not running.errors

    first = world.start_enrichment(instance_id="enr-store", state_memory_keys=1000)
    graph = first.app.handler.enricher.graph
    world.wait_graph(first, lambda g: len(g.links) == 1500)
    assert graph.links.disk >= 400  # the oldest links are on disk only
    check(first, {"anon-0": "user-0", "anon-700": "user-700", "anon-1499": "user-1499"})
    assert first.app.identity_view.restored_from == "topic"
    first.close()

    world.identify(customer, "anon-new", "user-new")  # written while it was down
    world.identify(customer, "anon-1", "user-moved")  # a link changed
    second = world.start_enrichment(instance_id="enr-store", state_memory_keys=1000)
    view = second.app.identity_view
    assert view.restored_from == "store"
    assert view.records == 2  # only what was written since the seal
    expected = {"anon-0": "user-0", "anon-1": "user-moved", "anon-1498": "user-1498", "anon-new": "user-new"}
    check(second, expected)
    second.close()

    store = LocalStore(world.state_dir / "enr-store" / links)
    assert store.seal_of() is not None
    store.unseal()  # as after a crash
    store.close()
    third = world.start_enrichment(instance_id="enr-store", state_memory_keys=1000)
    assert third.app.identity_view.restored_from == "topic"
    assert third.app.identity_view.records >= 1502
    check(third, expected)


def _plan_with(tmp_path, **changes):
    plan = yaml.safe_load(DEFAULT_PLAN_PATH.read_text())
    plan["events"]["strict_event"] = {
        "mode": "enforce",
        "properties": {
            "kind": {"type": "string", "required": True, "enum": ["a", "b"]},
            "count": {"type": "integer", "min": 0, "max": 10},
        },
    }
    plan.update(changes)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


CASES = {
    "required_missing": ({}, "properties.kind"),
    "datatype_mismatch": ({"kind": "a", "count": "3"}, "properties.count"),
    "additional_property": ({"kind": "a", "extra": True}, "properties.extra"),
    "enum_mismatch": ({"kind": "z"}, "properties.kind"),
    "out_of_range": ({"kind": "a", "count": 11}, "properties.count"),
}


def test_each_violation_is_dead_lettered_in_enforce_mode_with_reason_and_path(world, tmp_path):
    customer = world.customer("pro")
    world.start_enrichment(plan_path=_plan_with(tmp_path, unplanned_events="reject"))
    events = {code: event(customer, "strict_event", **props) for code, (props, _) in CASES.items()}
    events["unplanned_event"] = event(customer, "never_planned")
    # A metered event with violations is only flagged, even when the plan would reject it.
    bad_metered = event(customer, "api_call_made", status="oops")
    world.send([*events.values(), bad_metered])
    letters = world.wait_dead_letters([e["event_id"] for e in events.values()])
    for code, e in events.items():
        letter = letters[e["event_id"]]
        assert letter["error_code"] == code
        path = CASES[code][1] if code in CASES else "name"
        assert f"{code} at {path}" in letter["error_message"]
        assert letter["error_path"] == path
        assert letter["service"] == "enrichment"
        assert letter["customer_id"] == customer
    got = world.wait_enriched([bad_metered["event_id"]])
    assert [(v["code"], v["path"]) for v in got[bad_metered["event_id"]]["violations"]] == [
        ("datatype_mismatch", "properties.status")
    ]


def test_each_violation_is_flagged_on_the_record_in_flag_mode(world, tmp_path):
    customer = world.customer("pro")
    plan = yaml.safe_load(_plan_with(tmp_path).read_text())
    plan["events"]["strict_event"]["mode"] = "flag"
    path = tmp_path / "flag.yaml"
    path.write_text(yaml.safe_dump(plan))
    world.start_enrichment(plan_path=path)
    events = {code: event(customer, "strict_event", **props) for code, (props, _) in CASES.items()}
    events["unplanned_event"] = event(customer, "never_planned")
    world.send(list(events.values()))
    got = world.wait_enriched([e["event_id"] for e in events.values()])
    for code, e in events.items():
        path_ = CASES[code][1] if code in CASES else "name"
        assert (code, path_) in {(v["code"], v["path"]) for v in got[e["event_id"]]["violations"]}
    assert not world.dead_letters()


def test_old_schema_version_events_are_mapped_to_the_current_property_names(world):
    customer = world.customer("pro")
    world.start_enrichment()
    old = event(customer, "api_call_made", schema_version=1, path="/v1/search", status_code=200)
    new = event(customer, "api_call_made", schema_version="2.0.0", endpoint="/v1/search", status=201)
    world.send([old, new])
    got = world.wait_enriched([old["event_id"], new["event_id"]])
    assert got[old["event_id"]]["properties"] == {"endpoint": "/v1/search", "status": 200}
    assert got[old["event_id"]]["schema_version"] == 1
    assert got[new["event_id"]]["properties"] == {"endpoint": "/v1/search", "status": 201}
    assert got[old["event_id"]]["violations"] == [] == got[new["event_id"]]["violations"]


def test_events_without_a_schema_version_are_marked_not_passed_off_as_the_default(world):
    # Issue 20 (seed 001: "enforce schema_version on every event"): an event that states no version is
    # still read by its default_version's names, and the enriched record says the version was assumed.
    customer = world.customer("pro")
    world.start_enrichment()
    unversioned = event(customer, "api_call_made", path="/v1/search", status_code=200)
    versioned = event(customer, "api_call_made", schema_version=2, endpoint="/v1/search", status=200)
    unplanned = event(customer, "never_planned_either")
    world.send([unversioned, versioned, unplanned])
    got = world.wait_enriched([e["event_id"] for e in (unversioned, versioned, unplanned)])
    assumed, stated, other = (got[e["event_id"]] for e in (unversioned, versioned, unplanned))
    assert assumed["schema_version_missing"] is True
    assert assumed["schema_version"] == 1  # the plan's default_version for api_call_made
    assert assumed["properties"] == {"endpoint": "/v1/search", "status": 200}
    assert stated["schema_version_missing"] is False
    assert stated["schema_version"] == 2
    assert other["schema_version_missing"] is True
    assert other["schema_version"] is None


def test_tenant_context_is_stamped_and_unknown_customers_have_none(world):
    customer = world.customer("pro")
    world.start_enrichment()
    known, unknown = event(customer), event("nobody-" + customer)
    world.send([known, unknown])
    got = world.wait_enriched([known["event_id"], unknown["event_id"]])
    assert got[known["event_id"]]["tenant"] == {
        "plan": "pro",
        "support_tier": "standard",
        "open_tickets": 0,
        "csm_owner": None,
        "billing_status": "active",
    }
    assert got[known["event_id"]]["plan"] == "pro"
    assert got[unknown["event_id"]]["tenant"] is None
