"""The ingest API against the real stack: what clients are answered and what lands on Kafka."""

from __future__ import annotations

import gzip
import time
import uuid
from typing import Any

import orjson
import psycopg

from services.ingest import store
from services.kernel.provision import provision_all
from tests.integration.ingest.conftest import IngestFactory, RunningIngest, Tenant, TenantFactory, read_topic


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event(**over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "name": "api_call",
        "timestamp": now_ms() - 1000,
        "properties": {"tokens": 7, "model": "large", "ok": True, "cost": 0.25},
    }
    e.update(over)
    return e


def post_batch(ingest: RunningIngest, tenant: Tenant, events: list[Any], **kw: Any) -> Any:
    with ingest.client() as http:
        return http.post("/v1/batch", json={"batch": events}, headers=tenant.headers, **kw)


def test_n_events_posted_are_exactly_n_records_decodable_with_confluents_avro_deserializer(
    ingest: RunningIngest, tenant: Tenant, provisioned: Any, stack: Any
) -> None:
    events = [event(properties={"i": i, "label": f"n{i}"}, user_id=f"u{i % 3}") for i in range(250)]
    with ingest.client() as http:
        for chunk in (events[:100], events[100:200], events[200:]):
            r = http.post("/v1/batch", json={"batch": chunk}, headers=tenant.headers)
            assert r.status_code == 202, r.text
            body = r.json()
            assert body["accepted"] == len(chunk)
            assert [x["status"] for x in body["results"]] == ["accepted"] * len(chunk)
    records = read_topic(stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 250)
    assert len(records) == 250
    by_id = {m.value()["event_id"]: m for m in records}
    assert set(by_id) == {e["event_id"] for e in events}
    sample = by_id[events[42]["event_id"]]
    assert sample.key() == tenant.customer_id
    value = sample.value()
    assert value["customer_id"] == tenant.customer_id
    assert value["properties"] == {"i": 42, "label": "n42"}
    assert value["user_id"] == "u0"
    assert value["ingest"]["api_key_id"] == tenant.key_id
    assert value["ingest"]["source"] == "http"
    # the whole batch of one customer shares its key, so it lands in one partition, in order
    assert len({m.partition() for m in records}) == 1


def test_missing_malformed_unknown_and_revoked_keys_get_401(
    start_ingest: IngestFactory, tenant: Tenant, database_settings: Any
) -> None:
    ingest = start_ingest(key_cache_ttl_seconds=0.5)
    with ingest.client() as http:
        body = {"batch": [event()]}
        assert http.post("/v1/batch", json=body).status_code == 401
        assert http.post("/v1/batch", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        forged = f"plg_{tenant.key_id}_" + "x" * 43
        r = http.post("/v1/batch", json=body, headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        unknown = "plg_zzzzzzzzzzzzzzzz_" + "x" * 43
        assert (
            http.post("/v1/batch", json=body, headers={"Authorization": f"Bearer {unknown}"}).status_code
            == 401
        )
        assert http.post("/v1/batch", json={"batch": [event()]}, headers=tenant.headers).status_code == 202
        with psycopg.connect(database_settings.url.get_secret_value(), autocommit=True) as conn:
            assert store.revoke_key(conn, tenant.key_id) is not None
        time.sleep(0.7)  # the configured cache TTL
        r = http.post("/v1/batch", json={"batch": [event()]}, headers=tenant.headers)
        assert r.status_code == 401
        assert "revoked" in r.json()["message"]


def test_a_key_cannot_write_events_for_another_customer(
    ingest: RunningIngest, new_tenant: TenantFactory, provisioned: Any, stack: Any
) -> None:
    acme, globex = new_tenant(), new_tenant()
    with ingest.client() as http:
        r = http.post(
            "/v1/batch",
            json={"batch": [event(), event(customer_id=globex.customer_id)]},
            headers=acme.headers,
        )
        assert r.status_code == 403
        assert r.json()["code"] == "forbidden_customer"
        r = http.post(
            "/v1/events",
            content=orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": "x1",
                    "source": "s",
                    "type": "api_call",
                    "subject": globex.customer_id,
                }
            ),
            headers={**acme.headers, "Content-Type": "application/cloudevents+json"},
        )
        assert r.status_code == 403
        ok = event()
        assert http.post("/v1/batch", json={"batch": [ok]}, headers=acme.headers).status_code == 202
    records = read_topic(stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 1)
    assert [(m.key(), m.value()["event_id"]) for m in records] == [(acme.customer_id, ok["event_id"])]


def test_bodies_that_are_not_json_or_not_the_expected_shape_get_400(
    ingest: RunningIngest, tenant: Tenant
) -> None:
    with ingest.client() as http:
        for content in (b"{not json", b"[]", b'{"events": []}', b'{"batch": {}}'):
            r = http.post(
                "/v1/batch", content=content, headers={**tenant.headers, "Content-Type": "application/json"}
            )
            assert r.status_code == 400, content
            assert r.json()["code"] in ("invalid_json", "invalid_body")
        r = http.post(
            "/v1/batch", content=b"\x1f\x8bnot gzip", headers={**tenant.headers, "Content-Encoding": "gzip"}
        )
        assert r.status_code == 400
        r = http.post("/v1/track", json=event(timestamp="yesterday"), headers=tenant.headers)
        assert r.status_code == 400
        assert r.json()["code"] == "invalid_timestamp"


def test_requests_over_the_size_limits_get_413(start_ingest: IngestFactory, tenant: Tenant) -> None:
    ingest = start_ingest(max_event_bytes=2048, max_batch_bytes=20_000, max_batch_events=50)
    with ingest.client() as http:
        r = http.post("/v1/batch", json={"batch": [event() for _ in range(51)]}, headers=tenant.headers)
        assert (r.status_code, r.json()["code"]) == (413, "too_many_events")
        big = [event(properties={"s": "x" * 1500}) for _ in range(15)]
        r = http.post("/v1/batch", json={"batch": big}, headers=tenant.headers)
        assert (r.status_code, r.json()["code"]) == (413, "batch_too_large")
        r = http.post("/v1/track", json=event(properties={"s": "x" * 3000}), headers=tenant.headers)
        assert (r.status_code, r.json()["code"]) == (413, "event_too_large")
        # a gzip'd body is limited by its decompressed size
        bomb = gzip.compress(
            orjson.dumps({"batch": [event(properties={"s": "y" * 1900}) for _ in range(40)]})
        )
        assert len(bomb) < 20_000
        r = http.post(
            "/v1/batch",
            content=bomb,
            headers={**tenant.headers, "Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert r.status_code == 413
        # one oversized event in a batch is rejected on its own
        r = http.post(
            "/v1/batch",
            json={"batch": [event(properties={"s": "x" * 3000}), event()]},
            headers=tenant.headers,
        )
        assert r.status_code == 202
        assert [x.get("code", "accepted") for x in r.json()["results"]] == ["event_too_large", "accepted"]


def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(
    start_ingest: IngestFactory, new_tenant: TenantFactory
) -> None:
    ingest = start_ingest(rate_limit_events_per_second=50, rate_limit_burst=100, max_batch_events=100)
    greedy, other = new_tenant(), new_tenant()
    with ingest.client() as http:
        assert (
            http.post(
                "/v1/batch", json={"batch": [event() for _ in range(100)]}, headers=greedy.headers
            ).status_code
            == 202
        )
        r = http.post("/v1/batch", json={"batch": [event() for _ in range(100)]}, headers=greedy.headers)
        assert r.status_code == 429
        assert r.json()["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert http.post("/v1/batch", json={"batch": [event()]}, headers=other.headers).status_code == 202


def test_a_batch_mixing_good_and_bad_events_accepts_exactly_the_good_ones(
    ingest: RunningIngest, tenant: Tenant, provisioned: Any, stack: Any
) -> None:
    good = [event(), event(timestamp="2025-01-01T00:00:00Z"), event()]
    good[1]["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    bad = [
        event(timestamp=now_ms() + 10 * 60_000),
        event(timestamp=now_ms() - 40 * 86_400_000),
        event(properties={"nested": {"a": 1}}),
        event(name=""),
        "not an event",
    ]
    mixed = [bad[0], good[0], bad[1], bad[2], good[1], bad[3], bad[4], good[2]]
    r = post_batch(ingest, tenant, mixed)
    assert r.status_code == 202
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (3, 5)
    codes = [x.get("code") for x in body["results"]]
    assert codes == [
        "timestamp_in_future",
        None,
        "timestamp_too_old",
        "unrepresentable_property",
        None,
        "invalid_name",
        "invalid_event",
        None,
    ]
    records = read_topic(stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 3)
    assert sorted(m.value()["event_id"] for m in records) == sorted(e["event_id"] for e in good)


def test_cloudevents_single_and_batch_are_accepted(
    ingest: RunningIngest, tenant: Tenant, provisioned: Any, stack: Any
) -> None:
    def ce(i: int) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": f"ce-{uuid.uuid4()}",
            "source": "//billing/api",
            "type": "api_call",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "subject": tenant.customer_id,
            "datacontenttype": "application/json",
            "data": {"tokens": i},
            "userid": "u1",
        }

    one, many = ce(0), [ce(1), ce(2)]
    with ingest.client() as http:
        r = http.post(
            "/v1/events",
            content=orjson.dumps(one),
            headers={**tenant.headers, "Content-Type": "application/cloudevents+json"},
        )
        assert r.status_code == 202, r.text
        r = http.post(
            "/v1/events",
            content=orjson.dumps(many),
            headers={**tenant.headers, "Content-Type": "application/cloudevents-batch+json"},
        )
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 2
        r = http.post("/v1/events", json=many, headers=tenant.headers)
        assert r.status_code == 415
    records = read_topic(stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 3)
    values = {m.value()["event_id"]: m.value() for m in records}
    assert set(values) == {one["id"], many[0]["id"], many[1]["id"]}
    v = values[many[1]["id"]]
    assert v["properties"] == {"tokens": 2, "$ce_source": "//billing/api"}
    assert v["user_id"] == "u1"
    assert v["ingest"]["source"] == "cloudevents"


def test_identify_writes_an_identity_link_and_an_identify_event(
    ingest: RunningIngest, tenant: Tenant, provisioned: Any, stack: Any
) -> None:
    body = {
        "event_id": str(uuid.uuid4()),
        "timestamp": now_ms(),
        "anonymous_id": "anon-1",
        "user_id": "user-1",
        "properties": {"plan": "pro"},
    }
    with ingest.client() as http:
        r = http.post("/v1/identify", json=body, headers=tenant.headers)
        assert r.status_code == 202, r.text
        r = http.post(
            "/v1/identify", json={**body, "event_id": "x2", "user_id": None}, headers=tenant.headers
        )
        assert r.status_code == 400
    links = read_topic(stack.kafka_bootstrap, stack.registry_url, provisioned.topic("identity-links"), 1)
    assert [(m.key(), m.value()["user_id"], m.value()["event_id"]) for m in links] == [
        (f"{tenant.customer_id}|anon-1", "user-1", body["event_id"])
    ]
    events = read_topic(stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 1)
    assert [(m.value()["name"], m.value()["anonymous_id"], m.value()["user_id"]) for m in events] == [
        ("$identify", "anon-1", "user-1")
    ]


def test_gzip_bodies_are_accepted(ingest: RunningIngest, tenant: Tenant) -> None:
    content = gzip.compress(orjson.dumps({"batch": [event() for _ in range(20)]}))
    with ingest.client() as http:
        r = http.post(
            "/v1/batch",
            content=content,
            headers={**tenant.headers, "Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    assert r.status_code == 202
    assert r.json()["accepted"] == 20


def test_openapi_docs_and_ops_endpoints_are_served(ingest: RunningIngest, tenant: Tenant) -> None:
    post_batch(ingest, tenant, [event(), event(name="")])
    with ingest.client() as http:
        spec = http.get("/openapi.json").json()
        assert {"/v1/batch", "/v1/track", "/v1/identify", "/v1/events"} <= set(spec["paths"])
        assert "Event" in spec["components"]["schemas"]
        assert http.get("/docs").status_code == 200
        assert http.get("/livez").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        text = http.get("/metrics").text
    assert 'plg_ingest_events_total{code="accepted",outcome="accepted"}' in text
    assert 'plg_ingest_events_total{code="invalid_name",outcome="rejected"}' in text
    assert "plg_ingest_produce_seconds_bucket" in text
    assert "plg_ingest_batch_events_bucket" in text
    assert 'plg_ingest_requests_total{endpoint="batch",status="202"}' in text


def test_503_with_retry_after_while_the_broker_is_down_and_nothing_unwritten_is_reported_accepted(
    start_ingest: IngestFactory,
    tenant: Tenant,
    private_kafka: Any,
    registry_settings: Any,
    provisioned: Any,
    stack: Any,
) -> None:
    broker = private_kafka()
    provision_all(broker.settings, registry_settings, prefix=provisioned.prefix)
    # One probe of Kafka per 5 s while the breaker is open: far more than the time between two requests of
    # this test even on a loaded machine, so the second request below meets the open breaker, not a probe.
    ingest = start_ingest(kafka=broker.settings, produce_timeout_ms=3000, breaker_probe_interval_seconds=5)
    before = [event() for _ in range(10)]
    assert post_batch(ingest, tenant, before).status_code == 202
    broker.stop()
    during = [event() for _ in range(10)]
    started = time.monotonic()
    r = post_batch(ingest, tenant, during)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "kafka_unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    assert "(Kafka is unavailable)" not in r.json()["message"]  # this one tried the write and timed out
    # Bounded by the produce timeout (3 s), not librdkafka's own (5 min): a generous margin for load.
    assert time.monotonic() - started < 30
    # While the breaker is open the next request is answered without trying Kafka (so without waiting
    # for the produce timeout): the breaker's answer, and the breaker shows open.
    r = post_batch(ingest, tenant, during)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "kafka_unavailable"
    assert "(Kafka is unavailable)" in r.json()["message"], r.text
    with ingest.client() as http:
        assert "plg_ingest_kafka_breaker_open 1.0" in http.get("/metrics").text
    broker.start()
    after = [event() for _ in range(10)]
    deadline = time.monotonic() + 60
    while True:
        r = post_batch(ingest, tenant, after)
        if r.status_code == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 202, r.text
    records = read_topic(
        broker.bootstrap, stack.registry_url, provisioned.topic("usage-events"), 20, settle=2.0
    )
    written = {m.value()["event_id"] for m in records}
    assert {e["event_id"] for e in before + after} <= written
    assert not written & {e["event_id"] for e in during}
