"""What the HTTP side knows of activation: a materialised view of the activation changelog (every
partition, read_committed, so only committed state), the answers of ``GET /v1/activation/...`` and of the
onboarding conditions' counts, and the SSE push of every crossing once the view has caught up."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from services.activation import SCOPES, ActivationConfig
from services.growth.activation import DAY_MS, in_window
from services.growth.processor import CHECKPOINT_KEY, ERASED_PREFIX
from services.kernel.processing import Message
from services.kernel.processing.view import MaterializedView
from services.kernel.serde import ValueDecoder
from services.kernel.settings import KafkaSettings

log = logging.getLogger(__name__)

ERASED_MARKER = ERASED_PREFIX.encode()


class JsonDecoder:
    """The view's decoder for a JSON (not Avro) topic."""

    def decode(self, data: bytes) -> dict[str, Any]:
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value


Subject = tuple[str, str, str]  # scope, customer, subject ("" for the customer scope)


class ActivationView:
    """Counts and crossings per (scope, customer, subject), kept from the changelog."""

    def __init__(self, config: ActivationConfig, on_crossing: Callable[[dict[str, Any]], None]) -> None:
        self.config = config
        self.on_crossing = on_crossing
        self.counters: dict[Subject, dict[str, dict[str, Any]]] = {}
        self.fired: dict[Subject, dict[str, dict[str, Any]]] = {}
        # Changelog key → where its value lives, so a tombstone (an erasure) can remove it.
        self._keys: dict[bytes | None, tuple[Subject, str, bool]] = {}
        self.view: MaterializedView | None = None
        self._lock = threading.Lock()

    def start(self, kafka: KafkaSettings, changelog_topic: str) -> ActivationView:
        self.view = MaterializedView(
            kafka,
            changelog_topic,
            cast(ValueDecoder, JsonDecoder()),
            self.apply,
            name="growth-activation-view",
            # Neither the checkpoint nor erasure markers (e|<erasure id>) are activation state.
            key_filter=lambda key: key != CHECKPOINT_KEY and not (key or b"").startswith(ERASED_MARKER),
        ).start()
        return self

    def healthy(self) -> bool:
        return self.view is not None and self.view.healthy()

    def close(self) -> None:
        if self.view is not None:
            self.view.close()

    def apply(self, message: Message) -> None:
        value = message.value
        if value is None:  # a tombstone: the activation loop erased a person (docs/privacy.md)
            where = self._keys.pop(message.key, None)
            if where is not None:
                erased, name, was_fired = where
                kept = self.fired if was_fired else self.counters
                entries = kept.get(erased, {})
                entries.pop(name, None)
                if not entries:
                    kept.pop(erased, None)
            return
        subject: Subject = (value["scope"], value["customer"], value["subject"])
        is_fired = "threshold" in value
        self._keys[message.key] = (subject, value["threshold"] if is_fired else value["event"], is_fired)
        if is_fired:
            known = self.fired.setdefault(subject, {})
            first = value["threshold"] not in known
            known[value["threshold"]] = value
            if first and self.view is not None and self.view.ready.is_set() and "record" in value:
                self.on_crossing(value["record"])
        else:
            self.counters.setdefault(subject, {})[value["event"]] = value

    # -- answers -------------------------------------------------------------------------------------------

    def counts(self, scope: str, customer: str, subject: str) -> dict[str, int]:
        """Counts since the first event, per event name."""
        return {e: int(v["n"]) for e, v in self.counters.get((scope, customer, subject), {}).items()}

    def status(self, customer: str, person: str, now_ms: int | None = None) -> dict[str, Any]:
        today = (now_ms if now_ms is not None else time.time_ns() // 1_000_000) // DAY_MS
        scopes = {}
        crossed_any = False
        for scope in SCOPES:
            subject = person if scope == "person" else ""
            counters = self.counters.get((scope, customer, subject), {})
            fired = self.fired.get((scope, customer, subject), {})
            items = []
            for t in self.config.thresholds:
                if scope not in t.scopes:
                    continue
                counter = counters.get(t.event)
                if counter is None:
                    count = 0
                elif t.window_days is None:
                    count = int(counter["n"])
                else:
                    count = in_window(counter.get("d", {}), today, t.window_days)
                crossing = fired.get(t.name)
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
