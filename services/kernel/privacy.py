"""Erasure requests (``privacy-erasures``) as every service sees them, and the follower that delivers them.

``plg privacy forget`` erases a person's rows in PostgreSQL and tombstones their compacted-topic keys
itself, then announces the erasure on ``privacy-erasures`` for what only a running service can reach: its
memory (caches, in-memory state written back later) and state it owns on its own changelog. The record
names the person only by salted hashes — ``HMAC-SHA-256(salt, id)[:16]`` of each of their ids, with a salt
new for each request — so the request topic keeps no personal data of its own: a service tests the ids it
holds for that customer (:meth:`Erasure.matches`) and forgets those that match. docs/privacy.md.

A service follows the topic with :class:`ErasureFollower`: every record is handed to ``on_erasure`` with
``new`` — False for the erasures that were already on the topic when the follower started (the sources the
service loaded its state from were erased before those were written), True for the ones after. State
that a service keeps on its own changelog applies every erasure, old ones too, and records which ones it
applied (growth's activation state does: docs/growth.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.kernel import metrics
from services.kernel.lifecycle import Lifecycle
from services.kernel.processing.messages import Message
from services.kernel.processing.view import MaterializedView
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, StreamServiceSettings
from services.kernel.topics import PRIVACY_ERASURES, topic

log = logging.getLogger(__name__)

HASH_BYTES = 16
SALT_BYTES = 16

APPLIED = metrics.counter(
    "plg_privacy_erasures_applied",
    "Erasure requests a service applied to what it holds, by service and place (memory, state).",
    ("service", "place"),
)


def person_hash(salt: bytes, person_id: str) -> bytes:
    return hmac.new(salt, person_id.encode(), hashlib.sha256).digest()[:HASH_BYTES]


@dataclass(frozen=True)
class Erasure:
    """One erasure request: the customer, and the person's ids as salted hashes."""

    erasure_id: str
    customer_id: str
    salt: bytes
    person_hashes: frozenset[bytes]
    requested_at: int
    requested_by: str | None = None

    @classmethod
    def new(cls, customer_id: str, person_ids: Iterable[str], *, requested_by: str | None = None) -> Erasure:
        salt = os.urandom(SALT_BYTES)
        return cls(
            str(uuid.uuid4()),
            customer_id,
            salt,
            frozenset(person_hash(salt, p) for p in person_ids),
            int(time.time() * 1000),
            requested_by,
        )

    def matches(self, person_id: Any) -> bool:
        """True when ``person_id`` (any value a service holds as a person id) is one of the person's ids."""
        return isinstance(person_id, str) and person_hash(self.salt, person_id) in self.person_hashes

    def matching(self, person_ids: Iterable[Any]) -> list[str]:
        """The ids among ``person_ids`` (e.g. a store's distinct ids of the customer) that are the
        person's: what to delete, for a store that deletes by clear id."""
        return sorted({p for p in person_ids if self.matches(p)})

    def record(self) -> dict[str, Any]:
        """The ``privacy-erasures`` value (schemas/privacy_erasure.avsc)."""
        return {
            "erasure_id": self.erasure_id,
            "customer_id": self.customer_id,
            "salt": self.salt,
            "person_hashes": sorted(self.person_hashes),
            "requested_at": self.requested_at,
            "requested_by": self.requested_by,
        }

    @classmethod
    def from_record(cls, value: Mapping[str, Any]) -> Erasure:
        return cls(
            str(value["erasure_id"]),
            str(value["customer_id"]),
            bytes(value["salt"]),
            frozenset(bytes(h) for h in value["person_hashes"]),
            int(value["requested_at"]),
            value.get("requested_by"),
        )


OnErasure = Callable[[Erasure, bool], None]


class ErasureFollower:
    """Follows ``privacy-erasures`` from its beginning on its own thread (no consumer group: every replica
    sees every request) and hands each request to the callbacks, ``new`` telling whether it arrived after
    the follower had read what the topic held at its start. ``erasures`` keeps every request read."""

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: SchemaRegistry,
        *,
        service: str,
        topic_prefix: str = "",
        on_erasure: Iterable[OnErasure] = (),
    ) -> None:
        self.service = service
        self.callbacks: list[OnErasure] = list(on_erasure)
        self.erasures: list[Erasure] = []
        self._lock = threading.Lock()
        spec = topic(PRIVACY_ERASURES, topic_prefix)
        self.view = MaterializedView(
            kafka,
            spec.name,
            registry.decoder(reader_schema=spec.schema_path),
            self._apply,
            name=f"{service}-privacy-erasures",
            track_lag=False,
        )

    @property
    def ready(self) -> threading.Event:
        return self.view.ready

    def healthy(self) -> bool:
        return self.view.healthy()

    def subscribe(self, callback: OnErasure) -> None:
        """Add a callback; it is first handed every request read so far (as not new)."""
        with self._lock:
            self.callbacks.append(callback)
            known = list(self.erasures)
        for erasure in known:
            callback(erasure, False)

    def start(self) -> ErasureFollower:
        self.view.start()
        return self

    def close(self) -> None:
        self.view.close()

    def _apply(self, message: Message) -> None:
        if message.value is None:
            return
        erasure = Erasure.from_record(message.value)
        new = self.view.ready.is_set()
        with self._lock:
            self.erasures.append(erasure)
            callbacks = list(self.callbacks)
        for callback in callbacks:
            callback(erasure, new)
        if new:
            log.info(
                "erasure request applied",
                extra={"erasure_id": erasure.erasure_id, "customer_id": erasure.customer_id},
            )


def follow_erasures(
    life: Lifecycle,
    settings: StreamServiceSettings,
    registry: SchemaRegistry,
    service: str,
    forget: OnErasure,
) -> ErasureFollower:
    """The one wiring of every service that forgets people: an :class:`ErasureFollower` on the service's
    broker and topic prefix handing each request to ``forget``, started now and closed by ``life``."""
    follower = ErasureFollower(
        settings.kafka,
        registry,
        service=service,
        topic_prefix=settings.platform.topic_prefix,
        on_erasure=[forget],
    )
    return life.push(follower.start(), "privacy erasures")
