"""Consent and dead letters on the real stack (docs/privacy.md): an event refusing analytics is metered but
never enriched; a dead letter's bytes on the broker hold no clear personal data, ``plg dlq show`` masks
them, and only an admin's ``--reveal`` (with the services' key) shows them."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from services.kernel.topics import USAGE_EVENTS_DLQ
from tests.integration.enrichment.harness import EnrichmentWorld
from tests.integration.ingest.conftest import RunningIngest, Tenant
from tests.integration.metering.harness import now_ms, usage_event, wait_for
from tests.integration.privacy.test_erasure import admin_token, plg

pytestmark = pytest.mark.integration

HOUR = 3600 * 1000


def test_an_event_refusing_analytics_is_metered_but_never_enriched(
    world: EnrichmentWorld, start_ingest: Any, tenant: Tenant
) -> None:
    world.start()
    world.start_enrichment()
    ingest: RunningIngest = start_ingest()
    now = int(time.time() * 1000)
    refused, granted, unstated = (
        {"event_id": str(uuid.uuid4()), "name": "api_call_made", "timestamp": now, "user_id": "u-1", **extra}
        for extra in ({"consent": {"analytics": False}}, {"consent": {"analytics": True}}, {})
    )
    with ingest.client() as client:
        answer = client.post(
            "/v1/batch", json={"batch": [refused, granted, unstated]}, headers=tenant.headers
        )
        assert answer.json()["accepted"] == 3, answer.text
    # billed: all three count
    wait_for(lambda: world.period_total(tenant.customer_id) == (Decimal(3), 3), what="three metered")
    enriched = world.wait_enriched([granted["event_id"], unstated["event_id"]])
    assert set(enriched) == {granted["event_id"], unstated["event_id"]}
    time.sleep(1)  # the refused event was in the same batch: anything of it would be there by now
    assert refused["event_id"] not in world.enriched()


def test_dead_letters_hold_no_clear_personal_data_and_only_an_admin_reveals_them(
    world: EnrichmentWorld,
) -> None:
    customer = world.customer("pro")
    email = f"dana.{uuid.uuid4().hex[:8]}@example.com"
    late = usage_event(customer, ts=now_ms() - 2 * HOUR, user_id=email, contact=email)
    world.start(grace_seconds=3600)
    world.send([late])
    wait_for(lambda: [d for d in world.dead_letters() if d["event_id"] == late["event_id"]], what="letter")
    raw = [v for _, v in world.read_all(USAGE_EVENTS_DLQ) if v is not None]
    assert raw
    assert not any(email.encode() in v for v in raw), "a dead letter holds the address in clear"

    listed = json.loads(plg(world, "--json", "dlq", "list", "--reason", "late_event"))
    position = next(r["position"] for r in listed if r["event_id"] == late["event_id"])
    assert email not in json.dumps(listed)
    masked = plg(world, "dlq", "show", position)
    assert email not in masked
    assert "masked" in json.loads(masked)["value"]["original_value"]
    assert "admin operator token" in plg(world, "dlq", "show", position, "--reveal", ok=False)
    editor = admin_token(world, "editor")
    assert "needs the admin role" in plg(world, "dlq", "show", position, "--reveal", token=editor, ok=False)
    revealed = json.loads(plg(world, "dlq", "show", position, "--reveal", token=admin_token(world)))
    assert revealed["original"]["user_id"] == email
    assert revealed["original"]["event_id"] == late["event_id"]
