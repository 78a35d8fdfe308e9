"""What the HTTP side knows of activation: a materialised view of the activation changelog (every
partition, read_committed, so only committed state), the answers of ``GET /v1/activation/...`` and of the
onboarding conditions' counts, and the SSE push of every crossing once the view has caught up."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from services.activation import SCOPES, ActivationConfig
from services.growth.activation import (
    DAY_MS,
    MEMORY_KEYS,
    counter_key,
    fired_key,
    in_window,
    state_map,
)
from services.growth.processor import CHECKPOINT_KEY, ERASED_PREFIX
from services.kernel.processing import Message
from services.kernel.processing.store import LocalStore
from services.kernel.processing.view import MaterializedView, ViewCheckpoint
from services.kernel.serde import ValueDecoder
from services.kernel.settings import KafkaSettings

log = logging.getLogger(__name__)

ERASED_MARKER = ERASED_PREFIX.encode()
#: Kafka's default delete.retention.ms (the changelog does not set its own): how long a tombstone stays.
TOMBSTONE_RETENTION_SECONDS = 86_400.0


class JsonDecoder:
    """The view's decoder for a JSON (not Avro) topic."""

    def decode(self, data: bytes) -> dict[str, Any]:
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value


class ActivationView:
    """Counts and crossings per (scope, customer, subject), kept from the changelog: its latest value per
    key, in the kernel's memory-bounded map (with a local store: at most ``memory_keys`` entries in memory,
    the rest on disk, sealed at the view's offsets at a clean stop so that a restart reads only what was
    written since — docs/growth.md#bounded-state)."""

    def __init__(
        self,
        config: ActivationConfig,
        on_crossing: Callable[[dict[str, Any]], None],
        *,
        store: LocalStore | None = None,
        memory_keys: int = MEMORY_KEYS,
    ) -> None:
        self.config = config
        self.on_crossing = on_crossing
        self.store = store
        # changelog key -> value (readers on HTTP threads never promote: the view's thread is the writer)
        self.entries = state_map(store, memory_keys)
        self._events = sorted({*config.by_event, *config.extra_events})
        self.view: MaterializedView | None = None

    def start(self, kafka: KafkaSettings, changelog_topic: str) -> ActivationView:
        checkpoint = None
        if self.store is not None:
            checkpoint = ViewCheckpoint(
                self.store,
                load=lambda seal: self.entries.load(int(seal.get("entries") or 0)),
                write_all=self.entries.write_all,
                seal_content=lambda: {"entries": len(self.entries)},
                max_age_seconds=TOMBSTONE_RETENTION_SECONDS,
            )
        self.view = MaterializedView(
            kafka,
            changelog_topic,
            cast(ValueDecoder, JsonDecoder()),
            self.apply,
            name="growth-activation-view",
            # Neither the checkpoint nor erasure markers (e|<erasure id>) are activation state.
            key_filter=lambda key: key != CHECKPOINT_KEY and not (key or b"").startswith(ERASED_MARKER),
            checkpoint=checkpoint,
        ).start()
        return self

    def healthy(self) -> bool:
        return self.view is not None and self.view.healthy()

    def close(self) -> None:
        if self.view is not None:
            self.view.close()

    def apply(self, message: Message) -> None:
        key = (message.key or b"").decode()
        value = message.value
        entries = self.entries
        if value is None:  # a tombstone: the activation loop erased a person (docs/privacy.md)
            entries.pop(key)
            return
        first = "threshold" in value and key not in entries
        entries[key] = value
        entries.spill(slack=0.1)
        if first and self.view is not None and self.view.ready.is_set() and "record" in value:
            self.on_crossing(value["record"])

    # -- answers -------------------------------------------------------------------------------------------

    def counts(self, scope: str, customer: str, subject: str) -> dict[str, int]:
        """Counts since the first event, per event name."""
        found = {e: self.entries.get(counter_key(scope, customer, subject, e)) for e in self._events}
        return {e: int(v["n"]) for e, v in found.items() if v is not None}

    def status(self, customer: str, person: str, now_ms: int | None = None) -> dict[str, Any]:
        today = (now_ms if now_ms is not None else time.time_ns() // 1_000_000) // DAY_MS
        scopes = {}
        crossed_any = False
        for scope in SCOPES:
            subject = person if scope == "person" else ""
            items = []
            for t in self.config.thresholds:
                if scope not in t.scopes:
                    continue
                counter = self.entries.get(counter_key(scope, customer, subject, t.event))
                if counter is None:
                    count = 0
                elif t.window_days is None:
                    count = int(counter["n"])
                else:
                    count = in_window(counter.get("d", {}), today, t.window_days)
                crossing = self.entries.get(fired_key(scope, customer, subject, t.name))
                crossed_any = crossed_any or crossing is not None
                items.append(
                    {
                        "threshold": t.name,
                        "event": t.event,
                        "required": t.count,
                        "window_days": t.window_days,
                        "north_star": t.north_star,
                        "count": count,
                        "crossed": crossing is not None,
                        "crossed_at": crossing["at"] if crossing else None,
                    }
                )
            scopes[scope] = items
        return {
            "customer_id": customer,
            "person_id": person,
            "complete": self.healthy(),
            "show_upgrade_prompt": crossed_any,
            "plans": sorted(self.config.plans),
            "person": scopes["person"],
            "customer": scopes["customer"],
        }
