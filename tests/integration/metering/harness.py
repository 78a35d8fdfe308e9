"""Helpers for the metering tests: customers in PostgreSQL, events on usage-events, reading aggregates,
threshold events and dead letters back (read_committed), and aggregators run in threads."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn

from services.devstack.config import free_port
from services.entitlements.app import build_app as build_entitlements
from services.entitlements.config import EntitlementsSettings
from services.ingest import store
from services.kernel.errors import KafkaUnavailableError
from services.kernel.kafka import Consumer, Producer, TopicPartition
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import DatabaseSettings, KafkaSettings, PlatformSettings, SchemaRegistrySettings
from services.kernel.topics import (
    ENTITLEMENT_EVENTS,
    METERING_CHANGELOG,
    USAGE_AGGREGATES,
    USAGE_EVENTS,
    USAGE_EVENTS_DLQ,
    topic,
)
from services.metering_aggregator.app import build_app
from services.metering_aggregator.config import MeteringSettings
from tests.auth_support import operator_token


def now_ms() -> int:
    return int(time.time() * 1000)


def usage_event(
    customer_id: str,
    name: str = "api_call_made",
    *,
    event_id: str | None = None,
    ts: int | None = None,
    user_id: str | None = "u1",
    **properties: Any,
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "customer_id": customer_id,
        "name": name,
        "timestamp": now_ms() if ts is None else ts,
        "properties": properties,
        "user_id": user_id,
        "anonymous_id": None,
        "session_id": None,
        "ingest": None,
    }


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")


@dataclass
class Running:
    app: Any  # AggregatorApp, or another service's app with run(stop) and close()
    thread: threading.Thread
    stop: threading.Event
    errors: list[BaseException] = field(default_factory=list)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.app.close()


def run_in_thread(app: Any, name: str) -> Running:
    """``app.run(stop)`` on a daemon thread; what it raises is kept in ``errors`` (enrichment tests too)."""
    stop = threading.Event()
    running = Running(app, threading.Thread(), stop)

    def run() -> None:
        try:
            app.run(stop)
        except BaseException as exc:
            running.errors.append(exc)
            raise

    running.thread = threading.Thread(target=run, name=name, daemon=True)
    running.thread.start()
    return running


@dataclass
class RunningApi:
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    token: str | None = None  # sent by client(): an operator token (tests/auth_support.py)

    def client(self, token: str | None = None) -> httpx.Client:
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return httpx.Client(base_url=self.url, timeout=10, headers=headers)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(app: Any, port: int, name: str, token: str | None = None) -> RunningApi:
    """Run an ASGI app under uvicorn in a thread on ``port`` until its ``/readyz`` answers 200; its
    ``client()`` sends ``token``."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"{name}-{port}", daemon=True)
    thread.start()
    api = RunningApi(f"http://127.0.0.1:{port}", server, thread, token)
    wait_for(lambda: server.started or not thread.is_alive(), timeout=60, what=f"{name} start")
    if not thread.is_alive():
        raise AssertionError(f"{name} failed to start (see the log)")
    with api.client() as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60, what=f"{name} ready")
    return api


@dataclass
class Metering:
    """One test's metering world: fresh topics (prefix), its own customers, aggregators in threads."""

    prefix: str
    kafka: KafkaSettings
    registry: SchemaRegistrySettings
    database: DatabaseSettings
    running: list[Running] = field(default_factory=list)
    apis: list[RunningApi] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The aggregators' local state stores (one directory per instance id below it), removed at close.
        self.state_dir = Path(tempfile.mkdtemp(prefix="plg-metering-state-"))
        self.sr = SchemaRegistry(self.registry)
        spec = topic(USAGE_EVENTS, self.prefix)
        assert spec.schema_path is not None
        self.encoder = self.sr.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        self.decoder = self.sr.decoder()
        self.producer = Producer(self.kafka, client_id="metering-test")

    def topic(self, name: str) -> str:
        return topic(name, self.prefix).name

    # -- customers --------------------------------------------------------------------------------------

    def customer(self, plan: str = "free", anchor_day: int = 1) -> str:
        customer_id = f"c-{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.database.url.get_secret_value(), autocommit=True) as conn:
            store.create_customer(conn, customer_id, plan, billing_anchor_day=anchor_day)
        return customer_id

    # -- events -----------------------------------------------------------------------------------------

    def send(
        self, events: Iterable[dict[str, Any]], *, partition: int | None = None, arrival: int | None = None
    ) -> int:
        """Produce events and wait until the broker has them; ``arrival`` sets their records' Kafka timestamp
        (as if produced back then). Raises when a record was not delivered (e.g. the broker stayed away past
        the producer's message timeout), so that a caller never counts as sent what is not on the topic."""
        futures = [
            self.producer.send(
                self.topic(USAGE_EVENTS),
                self.encoder.encode(e),
                e["customer_id"],
                partition=partition,
                timestamp=arrival,
            )
            for e in events
        ]
        assert self.producer.flush(30) == 0
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(futures)} records not delivered: {failed[0]}")
        return len(futures)

    # -- aggregators ------------------------------------------------------------------------------------

    def settings(self, **overrides: Any) -> MeteringSettings:
        values: dict[str, Any] = {
            "port": 0,
            "instance_id": f"agg-{uuid.uuid4().hex[:6]}",
            "kafka": self.kafka,
            "registry": self.registry,
            "database": self.database,
            "platform": PlatformSettings(topic_prefix=self.prefix, log_format="text"),
            "batch_wait_ms": 50,
            "session_timeout_ms": 6000,
            "customers_refresh_seconds": 1.0,
            "state_dir": self.state_dir,
        }
        values.update(overrides)
        return MeteringSettings(**values)

    def start(self, **overrides: Any) -> Running:
        running = run_in_thread(build_app(self.settings(**overrides)), "aggregator")
        self.running.append(running)
        return running

    def start_entitlements(self, **overrides: Any) -> RunningApi:
        port = free_port()
        settings = EntitlementsSettings(
            port=port,
            kafka=self.kafka,
            registry=self.registry,
            database=self.database,
            platform=PlatformSettings(topic_prefix=self.prefix, log_format="text"),
            **{"customers_refresh_seconds": 1.0, **overrides},
        )
        api = serve(build_entitlements(settings), port, "entitlements", operator_token(self.database))
        self.apis.append(api)
        return api

    def close(self) -> None:
        for api in reversed(self.apis):
            api.close()
        for r in reversed(self.running):
            r.close()
        self.producer.close()
        self.sr.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- reading outputs back ---------------------------------------------------------------------------

    def read_all(self, name: str) -> list[tuple[bytes | None, bytes | None]]:
        """Every committed record of a topic, in order per partition."""
        reader = Consumer(self.kafka, None, client_id="metering-test-reader", fetch_wait_max_ms=10)
        try:
            tps = reader.assign_all([self.topic(name)])
            deadline = time.monotonic() + 60
            while True:
                try:
                    ends = reader.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
                    break
                except KafkaUnavailableError:
                    # e.g. NOT_LEADER_FOR_PARTITION while a just-created topic or a restarted broker settles
                    assert time.monotonic() < deadline, f"could not read the end offsets of {name}"
                    time.sleep(0.2)
            out: list[tuple[bytes | None, bytes | None]] = []
            while not reader.caught_up(ends):
                assert time.monotonic() < deadline, f"could not read {name} to its end"
                out.extend((r.key(), r.value()) for r in reader.consume(10_000, 0.2))
            return out
        finally:
            reader.close()

    def aggregates(self) -> dict[str, dict[str, Any]]:
        """Latest aggregate value per key (what compaction keeps)."""
        latest: dict[str, dict[str, Any]] = {}
        for key, value in self.read_all(USAGE_AGGREGATES):
            assert key is not None
            if value is not None:
                latest[key.decode()] = self.decoder.decode(value)
        return latest

    def period_total(self, customer_id: str, meter: str = "api_requests") -> tuple[Decimal, int] | None:
        found = [
            v
            for k, v in self.aggregates().items()
            if v["customer_id"] == customer_id
            and v["meter"] == meter
            and v["granularity"] == "BILLING_PERIOD"
            and not v["group"]
        ]
        if not found:
            return None
        assert len(found) == 1, found
        return found[0]["value"], found[0]["event_count"]

    def thresholds(self) -> list[dict[str, Any]]:
        return [self.decoder.decode(v) for _, v in self.read_all(ENTITLEMENT_EVENTS) if v is not None]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [self.decoder.decode(v) for _, v in self.read_all(USAGE_EVENTS_DLQ) if v is not None]

    def changelog(self) -> list[tuple[bytes | None, bytes | None]]:
        return self.read_all(METERING_CHANGELOG)
