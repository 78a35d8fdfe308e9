"""Helpers for the enrichment tests: the metering harness (customers, producing, reading topics back) plus
enrichment instances in threads or as processes, identity links, and the enriched records by event id."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.enrichment.app import EnrichmentApp, build_app
from services.enrichment.config import EnrichmentSettings
from services.enrichment.handlers import merge_link_key
from services.kernel.settings import PlatformSettings
from services.kernel.topics import IDENTITY_LINKS, USAGE_EVENTS_DLQ, USAGE_EVENTS_ENRICHED, topic
from tests.integration.metering.harness import Metering, Running, now_ms, run_in_thread, wait_for

ROOT = Path(__file__).resolve().parents[3]


def event(customer_id: str, name: str = "core_action_completed", *, user_id=None, anonymous_id=None, **props):
    return {
        "event_id": str(uuid.uuid4()),
        "customer_id": customer_id,
        "name": name,
        "timestamp": now_ms(),
        "properties": props,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "session_id": None,
        "ingest": None,
    }


@dataclass
class EnrichmentWorld(Metering):
    enrichers: list[Running] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        links = topic(IDENTITY_LINKS, self.prefix)
        assert links.schema_path is not None
        self.links_encoder = self.sr.encoder(links.value_subject, links.schema_path, auto_register=False)

    def enrichment_settings(self, **overrides: Any) -> EnrichmentSettings:
        values: dict[str, Any] = {
            "port": 0,
            "instance_id": f"enr-{uuid.uuid4().hex[:6]}",
            "kafka": self.kafka,
            "registry": self.registry,
            "database": self.database,
            "platform": PlatformSettings(topic_prefix=self.prefix, log_format="text"),
            "batch_wait_ms": 20,
            "session_timeout_ms": 6000,
            "pii_key": "test-pii-key",
            "state_dir": self.state_dir,  # the identity graph's local stores: removed with the world
        }
        values.update(overrides)
        return EnrichmentSettings(**values)

    def start_enrichment(self, **overrides: Any) -> Running:
        running = run_in_thread(build_app(self.enrichment_settings(**overrides)), "enrichment")
        app: EnrichmentApp = running.app
        self.enrichers.append(running)
        wait_for(
            lambda: all(check() for check in app.readiness.values()), timeout=60, what="enrichment ready"
        )
        return running

    def spawn_enrichment(self, instance_id: str, **env: str) -> subprocess.Popen[bytes]:
        """``python -m services.enrichment`` as a process (for SIGKILL)."""
        environ = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "SCHEMA_REGISTRY_URL": self.registry.url,
            "DATABASE_URL": self.database.url.get_secret_value(),
            "PLG_TOPIC_PREFIX": self.prefix,
            "PLG_LOG_FORMAT": "text",
            "ENRICHMENT_PORT": "0",
            "ENRICHMENT_INSTANCE_ID": instance_id,
            "ENRICHMENT_PII_KEY": "test-pii-key",
            "ENRICHMENT_STATE_DIR": str(self.state_dir),
            "ENRICHMENT_SESSION_TIMEOUT_MS": "6000",
            "ENRICHMENT_BATCH_WAIT_MS": "20",
            "ENRICHMENT_MAX_BATCH_EVENTS": "200",
            **env,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.enrichment"],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for r in reversed(self.enrichers):
            r.close()
        super().close()

    # -- identity links -----------------------------------------------------------------------------------

    def identify(self, customer_id: str, anonymous_id: str, user_id: str) -> None:
        link = {
            "customer_id": customer_id,
            "anonymous_id": anonymous_id,
            "user_id": user_id,
            "event_id": str(uuid.uuid4()),
            "linked_at": now_ms(),
            "kind": "identify",
        }
        self._link(f"{customer_id}|{anonymous_id}", link)

    def merge(self, customer_id: str, merged_id: str, survivor_id: str) -> str:
        link = {
            "customer_id": customer_id,
            "anonymous_id": merged_id,
            "user_id": survivor_id,
            "event_id": str(uuid.uuid4()),
            "linked_at": now_ms(),
            "kind": "merge",
        }
        self._link(merge_link_key(customer_id, merged_id, survivor_id), link)
        return link["event_id"]

    def _link(self, key: str, link: dict[str, Any]) -> None:
        self.producer.produce(self.topic(IDENTITY_LINKS), self.links_encoder.encode(link), key)
        assert self.producer.flush(30) == 0

    def wait_graph(self, running: Running, check) -> None:
        wait_for(lambda: check(running.app.handler.enricher.graph), timeout=30, what="identity graph")

    # -- outputs --------------------------------------------------------------------------------------------

    def enriched_raw(self) -> list[bytes]:
        return [v for _, v in self.read_all(USAGE_EVENTS_ENRICHED) if v is not None]

    def enriched(self) -> dict[str, dict[str, Any]]:
        """Enriched records by event_id (asserting each appears once)."""
        out: dict[str, dict[str, Any]] = {}
        for raw in self.enriched_raw():
            value = self.decoder.decode(raw)
            assert value["event_id"] not in out, f"duplicate {value['event_id']}"
            out[value["event_id"]] = value
        return out

    def wait_enriched(self, event_ids: list[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        wanted = set(event_ids)
        return wait_for(
            lambda: (lambda got: got if wanted <= got.keys() else None)(self.enriched()),
            timeout=timeout,
            interval=0.3,
            what=f"{len(wanted)} enriched events",
        )

    def wait_dead_letters(self, event_ids: list[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        wanted = set(event_ids)

        def found() -> dict[str, dict[str, Any]] | None:
            letters = {d["event_id"]: d for d in self.dead_letters() if d["event_id"] in wanted}
            return letters if wanted <= letters.keys() else None

        return wait_for(found, timeout=timeout, interval=0.3, what="dead letters")

    def dlq_topic(self) -> str:
        return self.topic(USAGE_EVENTS_DLQ)


def elapsed(start: float) -> float:
    return time.monotonic() - start
