"""Consent on events (docs/ingest.md, docs/privacy.md): what ingest accepts and refuses, what the record
carries, and that enrichment keeps an event refusing analytics out of everything downstream of metering."""

from __future__ import annotations

import io
import json
import uuid

import fastavro
import orjson
import pytest

from services.enrichment.handlers import NO_ANALYTICS_CONSENT, Enricher
from services.enrichment.pii import Scrubber
from services.enrichment.plan import DEFAULT_PLAN_PATH, load_plan
from services.ingest.model import Code, Limits, RequestContext, normalise_batch, normalise_single
from services.kernel.topics import SCHEMAS_DIR
from services.plans import load_config

NOW = 1_760_000_000_000
USAGE = fastavro.parse_schema(json.loads((SCHEMAS_DIR / "usage_event.avsc").read_text()))


def ctx() -> RequestContext:
    return RequestContext(
        customer_id="acme", api_key_id="k1", request_id="r1", received_at_ms=NOW, library="test"
    )


def track(**over: object) -> dict[str, object]:
    return {"event_id": str(uuid.uuid4()), "name": "report_exported", "timestamp": NOW - 10, **over}


def test_consent_is_carried_on_the_record_and_round_trips_through_avro() -> None:
    n = normalise_batch(
        orjson.dumps({"batch": [track(consent={"analytics": False, "marketing": True}), track()]}),
        ctx(),
        Limits(),
    )
    assert [r["consent"] for _, r in n.records] == [{"analytics": False, "marketing": True}, None]
    for _, record in n.records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, USAGE, record)
        buf.seek(0)
        assert fastavro.schemaless_reader(buf, USAGE, USAGE)["consent"] == record["consent"]


@pytest.mark.parametrize(
    "consent",
    [
        ["analytics"],
        "analytics",
        {"analytics": "no"},
        {"analytics": 0},
        {"Analytics": True},
        {"": True},
        {f"p{i}": True for i in range(17)},
    ],
)
def test_malformed_consent_rejects_the_event_with_invalid_field(consent: object) -> None:
    n = normalise_batch(orjson.dumps({"batch": [track(consent=consent), track()]}), ctx(), Limits())
    assert [r.code for r in n.rejections] == [Code.INVALID_FIELD]
    assert len(n.records) == 1


def test_an_identify_refusing_analytics_writes_no_identity_link() -> None:
    body = {"event_id": "i1", "timestamp": NOW, "anonymous_id": "a-1", "user_id": "u-1"}
    refused = normalise_single(
        orjson.dumps({**body, "consent": {"analytics": False}}), ctx(), Limits(), kind="identify"
    )
    assert len(refused.records) == 1
    assert refused.identity_links == []
    granted = normalise_single(
        orjson.dumps({**body, "consent": {"analytics": True}}), ctx(), Limits(), kind="identify"
    )
    assert len(granted.identity_links) == 1


def usage_event(consent: dict[str, bool] | None) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "customer_id": "acme",
        "name": "signup_completed",
        "timestamp": 1_700_000_000_000,
        "properties": {"plan": "pro"},
        "user_id": "u-1",
        "anonymous_id": None,
        "session_id": None,
        "ingest": None,
        "consent": consent,
    }


def test_enrichment_skips_only_an_explicit_analytics_refusal() -> None:
    metering = load_config()
    plan = load_plan(DEFAULT_PLAN_PATH, metering)
    enricher = Enricher(plan, frozenset(m.event for m in metering.meters), Scrubber(b"k"))
    assert enricher.enrich(usage_event({"analytics": False}), None, 5) is NO_ANALYTICS_CONSENT
    for stated in (None, {}, {"analytics": True}, {"marketing": False}):
        assert isinstance(enricher.enrich(usage_event(stated), None, 5), dict), stated
