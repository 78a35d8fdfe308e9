"""Schema versions (issue 20, seed 001 "enforce schema_version on every event"): with the TRACKING_PLAN
``plg plan codegen --lang python`` generates, the Python SDK sends every event the plan lists with its
version in the plan's version property (track, identify, the generated typed ``track``); an unplanned event
or one whose caller set a version is left as it is, and a malformed plan is refused at construction."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from plg_sdk import Client

from services.cli import plan as plan_cli
from services.enrichment.plan import load_plan
from tests.unit.sdk.sdk_test_server import FakeIngest

KEY = "plg_testkey_" + "s" * 43


@pytest.fixture
def ingest() -> Iterator[FakeIngest]:
    fake = FakeIngest().start()
    yield fake
    fake.stop()


@pytest.fixture
def generated(tmp_path: Path) -> ModuleType:
    """The module an app generates from the repository's tracking plan, imported."""
    path = tmp_path / "plg_events_for_test.py"
    path.write_text(plan_cli.python(load_plan(None)))
    spec = importlib.util.spec_from_file_location("plg_events_for_test", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass-like TypedDicts resolve their module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def client(url: str, tmp_path: Path, **kw: Any) -> Client:
    return Client(KEY, url, flush_interval=0.05, register_atexit=False, queue_dir=tmp_path / "queue", **kw)


def sent(ingest: FakeIngest) -> list[dict[str, Any]]:
    return [e for r in ingest.requests for e in r.events]


def test_with_the_plan_every_planned_event_carries_its_version(
    ingest: FakeIngest, tmp_path: Path, generated: ModuleType
) -> None:
    plan = generated.TRACKING_PLAN
    assert plan["version_property"] == "schema_version"
    assert plan["events"]["api_call_made"] == 2  # deploy/config/tracking-plan.yaml
    c = client(ingest.url, tmp_path, plan=plan)
    c.track("api_call_made", {"endpoint": "/v1/search", "status": 200})
    c.track("project_created", {"project_type": "app"})
    c.track("api_call_made", {"path": "/old", "schema_version": 1})  # still on version 1, and says so
    c.track("not_in_the_plan", {"a": 1})
    generated.track(c, "team_invite_sent", {"role": "member", "invitee_domain": "example.com"})
    c.identify("user-1", {"plan": "pro"})
    assert c.flush(timeout=30)
    c.close()
    got = sent(ingest)
    versions = [e["properties"].get("schema_version") for e in got]
    assert versions == [2, 1, 1, None, plan["events"]["team_invite_sent"], plan["events"]["$identify"]]
    assert got[2]["properties"]["path"] == "/old"
    assert got[5]["type"] == "identify"
    assert got[5]["properties"] == {"plan": "pro", "schema_version": 1}


def test_the_generated_track_stamps_even_without_a_plan_on_the_client(
    ingest: FakeIngest, tmp_path: Path, generated: ModuleType
) -> None:
    c = client(ingest.url, tmp_path)
    generated.track(c, "api_call_made", {"endpoint": "/v1/x"})
    c.track("api_call_made", {"endpoint": "/v1/y"})
    assert c.flush(timeout=30)
    c.close()
    typed, untyped = sent(ingest)
    assert typed["properties"]["schema_version"] == 2
    assert "schema_version" not in untyped["properties"], "no plan given: nothing is made up"


@pytest.mark.parametrize(
    "plan",
    [
        {"version": 1, "events": {"a": 1}},
        {"version": 1, "version_property": "", "events": {}},
        {"version": 1, "version_property": "schema_version", "events": {"a": "2"}},
        {"version": 1, "version_property": "schema_version", "events": {"a": 0}},
        {"version": 1, "version_property": "schema_version", "events": {"a": True}},
    ],
)
def test_a_malformed_plan_is_refused_at_construction(tmp_path: Path, plan: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="plan"):
        client("http://127.0.0.1:9", tmp_path, plan=plan)
