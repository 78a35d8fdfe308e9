"""Activation on the kernel's exactly-once loop: ``usage-events-enriched`` in; ``activation-events``, the
``activation_threshold_crossed`` telemetry event (``usage-events``) and the state changelog out, all in the
batch's transaction — so a crossing is written exactly once, also across crashes and restarts.

State (:class:`~services.growth.activation.Tracker`, one per input partition) lives in memory up to its
bound and in a local store past it, and is reused from a store sealed at the committed offset or rebuilt
on assignment from the compacted changelog ``growth-activation-changelog`` (co-partitioned with the
input), read ``read_committed`` after the group's committed offsets are known stable, until the
partition's checkpoint (the input offset committed with the state) has reached them — the metering
aggregator's restore protocol, whose changelog reader this reuses; with a store the records are folded
straight into it as they are read (the kernel's ``StoreFold``), so a replay stays within the bound.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.activation import ActivationConfig
from services.growth.activation import (
    MAX_PERSONS_PER_CUSTOMER,
    MEMORY_KEYS,
    STATE_PREFIX,
    Tracker,
    activation_record,
    count_folded,
    count_persons,
    fired_key,
)
from services.growth.telemetry import stable_event_id, usage_event
from services.kernel import metrics
from services.kernel.kafka import TopicPartition
from services.kernel.privacy import APPLIED, ErasureFollower
from services.kernel.processing import Batch, Emit, RetryBatch, StreamHandler
from services.kernel.processing.state import restore_partitions, sealed_at_committed
from services.kernel.processing.store import LocalStore, StoreFold
from services.kernel.settings import KafkaSettings
from services.kernel.topics import (
    ACTIVATION_EVENTS,
    GROWTH_CHANGELOG,
    HISTORICAL_PROPERTY,
    USAGE_EVENTS,
    USAGE_EVENTS_ENRICHED,
)

log = logging.getLogger(__name__)

SERVICE = "growth-activation"
INPUTS = (USAGE_EVENTS_ENRICHED,)
OUTPUTS = (ACTIVATION_EVENTS, USAGE_EVENTS, GROWTH_CHANGELOG)
CHECKPOINT_KEY = b"__checkpoint__"
#: Changelog key prefix of "erasure <id> was applied to this partition" (docs/privacy.md).
ERASED_PREFIX = "e|"
TELEMETRY_EVENT = "activation_threshold_crossed"

CROSSINGS = metrics.counter(
    "plg_growth_activation_crossings",
    "Activation thresholds crossed, by threshold and scope.",
    ("threshold", "scope"),
)
PERSONS = metrics.gauge(
    "plg_growth_activation_persons",
    "Persons whose activation counters this instance keeps (memory and local store).",
)
REFUSED = metrics.counter(
    "plg_growth_activation_persons_refused",
    "New persons not tracked because their customer reached GROWTH_ACTIVATION_MAX_PERSONS_PER_CUSTOMER on a "
    "partition (abuse guard); their events still count in the customer scope.",
)
STATE_KEYS = metrics.gauge(
    "plg_growth_activation_state_keys",
    "Activation state entries (counters, crossings) of this instance, by where they are: memory or disk.",
    ("where",),
)
RESTORES = metrics.counter(
    "plg_growth_activation_restores",
    "Partition states rebuilt, by source: the local store (warm) or the changelog (replayed).",
    ("source",),
)
COUNTED = metrics.counter(
    "plg_growth_activation_events", "Enriched events the activation loop read, by outcome.", ("outcome",)
)


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class ActivationHandler(StreamHandler):
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        config: ActivationConfig,
        input_topic: str,
        changelog_topic: str,
        checkpoint_wait: float = 30.0,
        max_persons_per_customer: int = MAX_PERSONS_PER_CUSTOMER,
        store_factory: Callable[[int], LocalStore] | None = None,
        memory_keys: int = MEMORY_KEYS,
    ) -> None:
        self.kafka = kafka
        self.max_persons_per_customer = max_persons_per_customer
        # The local store per partition (None: state in memory only, replayed on every restore): entries
        # beyond ``memory_keys`` (this instance's, shared by its partitions) are on disk, and a store sealed
        # at the committed offset is reused instead of the changelog (the kernel's mechanism, docs/kernel.md).
        self.store_factory = store_factory
        self.memory_keys = memory_keys
        self.stores: dict[int, LocalStore] = {}
        self._committed_offsets: dict[int, int] = {}
        #: What the last restore did, per partition: "store" or "changelog" (tests and logs read it).
        self.restored_from: dict[int, str] = {}
        self.config = config
        self.input_topic = input_topic
        self.changelog_topic = changelog_topic
        self.checkpoint_wait = checkpoint_wait
        self.trackers: dict[int, Tracker] = {}
        #: Erasure requests (privacy-erasures), set by the composition root; None: none to apply.
        self.erasures: ErasureFollower | None = None
        #: Per partition: the tracker the erasures were checked against, and how many were.
        self._erasures_checked: dict[int, tuple[Tracker, int]] = {}
        self._changed = False
        self._pending: list[tuple[str, str]] = []
        self._outcomes: dict[str, int] = {}
        self._bound_metrics = False
        self._refused_reported = 0

    # -- state hooks --------------------------------------------------------------------------------------

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        mine = [tp.partition for tp in partitions if tp.topic == self.input_topic]
        if mine:
            self.trackers.update(self._restore(mine))

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.input_topic:
                tracker = self.trackers.pop(tp.partition, None)
                self._close_store(tp.partition, tracker)

    def close(self) -> None:
        """Seal and close every local store, once the loop has stopped (no transaction after this)."""
        for partition in list(self.stores):
            self._close_store(partition, self.trackers.get(partition))

    def _close_store(self, partition: int, tracker: Tracker | None) -> None:
        """Seal the partition's store when its state is exactly the committed one (between transactions,
        after a commit), then close it; otherwise the next owner replays the changelog."""
        store = self.stores.pop(partition, None)
        if store is None:
            return
        try:
            offset = self._committed_offsets.pop(partition, None)
            if tracker is not None and offset is not None and offset >= 0 and not self._changed:
                tracker.state.write_all()
                store.seal({"o": offset, "entries": len(tracker.state), "persons": tracker.persons})
                log.info("activation state store sealed", extra={"partition": partition, "offset": offset})
        except Exception:
            log.exception("could not seal the activation state store", extra={"partition": partition})
        finally:
            store.close()

    def _store(self, partition: int) -> LocalStore:
        store = self.stores.get(partition)
        if store is None:
            assert self.store_factory is not None
            store = self.stores[partition] = self.store_factory(partition)
        return store

    def _memory_keys_per_partition(self) -> int:
        return max(1, self.memory_keys // max(1, len(self.trackers)))

    def rollback(self, assigned: Sequence[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.input_topic)
        rebuild = partitions if self._changed else [p for p in partitions if p not in self.trackers]
        if rebuild:
            self.trackers.update(self._restore(rebuild))
        self._changed = False
        self._pending.clear()
        self._outcomes.clear()

    def committed(self, positions: Sequence[TopicPartition]) -> None:
        self._changed = False
        for tp in positions:
            if tp.topic == self.input_topic:
                self._committed_offsets[tp.partition] = tp.offset
        if self._bound_metrics:
            self._bound_metrics = False
            if self.stores:  # only committed state ever reaches a store
                bound = self._memory_keys_per_partition()
                for tracker in self.trackers.values():
                    tracker.spill(bound)
            PERSONS.set(sum(t.person_count() for t in self.trackers.values()))
            STATE_KEYS.labels("memory").set(sum(len(t.state.mem) for t in self.trackers.values()))
            STATE_KEYS.labels("disk").set(sum(t.state.disk for t in self.trackers.values()))
            refused = sum(t.refused for t in self.trackers.values())
            if refused > self._refused_reported:
                REFUSED.inc(refused - self._refused_reported)
            self._refused_reported = refused
        for threshold, scope in self._pending:
            CROSSINGS.labels(threshold, scope).inc()
        self._pending.clear()
        for outcome, n in self._outcomes.items():
            COUNTED.labels(outcome).inc(n)
        self._outcomes.clear()

    def _warm(self, partitions: list[int]) -> dict[int, Tracker]:
        """Trackers of ``partitions`` whose local store is sealed at exactly the group's committed offset
        (the kernel's rule, ``sealed_at_committed``): their state is the store's, read back as it is used."""
        if self.store_factory is None:
            return {}
        seals = {p: self._store(p).seal_of() for p in partitions}
        warm: dict[int, Tracker] = {}
        bound = self.memory_keys // max(1, len(self.trackers) + len(partitions))
        for p, offset in sealed_at_committed(self.consumer, self.input_topic, seals).items():
            seal = seals[p]
            assert seal is not None
            store = self._store(p)
            warm[p] = Tracker(
                self.config,
                None,
                self.max_persons_per_customer,
                store=store,
                memory_keys=bound,
                persons={str(c): int(n) for c, n in dict(seal.get("persons") or {}).items()},
            )
            warm[p].state.load(int(seal.get("entries") or 0))
            store.unseal()  # it changes from now on
            self._committed_offsets[p] = offset
        return warm

    def _restore(self, partitions: list[int]) -> dict[int, Tracker]:
        started = time.monotonic()
        trackers = self._warm(partitions)
        for p in trackers:
            self.restored_from[p] = "store"
            RESTORES.labels("store").inc()
        bound = self.memory_keys // max(1, len(self.trackers) + len(partitions))

        def build(partition: int, latest: Any) -> tuple[Tracker, int | None]:
            if isinstance(latest, StoreFold):  # folded into the wiped store while read: bounded memory
                return self._build_folded(latest, bound)
            # No local store (GROWTH_STATE_STORE=memory): the state is all in memory anyway.
            state: dict[str, dict[str, Any]] = {}
            checkpoint = None
            for key, raw in latest.items():
                if key == CHECKPOINT_KEY:
                    checkpoint = int(json.loads(raw)["offset"])
                else:
                    state[key.decode()] = json.loads(raw)
            tracker = Tracker(
                self.config,
                state,
                self.max_persons_per_customer,
                memory_keys=bound,
                persons=count_persons(state.values()),
            )
            return tracker, checkpoint

        fold = None
        if self.store_factory is not None:

            def fold(partition: int) -> StoreFold:
                store = self._store(partition)
                store.clear()  # rebuilt from the changelog; unsealed until sealed again
                # The changelog's key and JSON value are the state map's own encoding: folded straight
                # under its prefix, the store is the replayed state once the read ends.
                return StoreFold(store, STATE_PREFIX)

        cold = [p for p in partitions if p not in trackers]
        if cold:
            replayed = restore_partitions(
                kafka=self.kafka,
                consumer=self.consumer,
                input_topic=self.input_topic,
                changelog_topic=self.changelog_topic,
                partitions=cold,
                build=build,
                checkpoint_wait=self.checkpoint_wait,
                fold=fold,
            )
            for p in replayed:
                self.restored_from[p] = "changelog"
                RESTORES.labels("changelog").inc()
            trackers.update(replayed)
        self._bound_metrics = True
        log.info(
            "activation state restored",
            extra={
                "partitions": partitions,
                "from_store": sorted(p for p in partitions if self.restored_from.get(p) == "store"),
                "keys": sum(len(t.state) for t in trackers.values()),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return trackers

    def _build_folded(self, fold: StoreFold, bound: int) -> tuple[Tracker, int | None]:
        """A partition's tracker from its changelog folded into its store (``restore_partitions(fold=)``):
        the checkpoint taken out, every entry left on disk as after a warm load (memory fills again as
        persons are active), the persons counted in one scan. The replay holds one record at a time on top
        of the kernel's constants (docs/growth.md#bounded-state), however many persons the partition has."""
        checkpoint = None
        raw = fold.get(CHECKPOINT_KEY)
        if raw is not None:
            checkpoint = int(json.loads(raw)["offset"])
            del fold[CHECKPOINT_KEY]
        entries, persons = count_folded(fold)
        tracker = Tracker(
            self.config,
            None,
            self.max_persons_per_customer,
            store=fold.store,
            memory_keys=bound,
            persons=persons,
        )
        tracker.state.load(entries)
        return tracker, checkpoint

    # -- a batch ------------------------------------------------------------------------------------------

    # -- erasures ----------------------------------------------------------------------------------------

    tick_interval = 1.0  # erasures reach an idle partition within about a second

    def tick(self, out: Emit) -> None:
        if self.erasures is not None and self.erasures.ready.is_set():
            self._forget(out)

    def _forget(self, out: Emit) -> None:
        """Apply every erasure request this partition's state has not applied yet, in this transaction:
        tombstones for the person's counters and crossings, and a marker ``e|<erasure id>`` so that a
        restore (the marker is on the changelog) never applies it again to the person's new history."""
        assert self.erasures is not None
        erasures = self.erasures.erasures
        total = len(erasures)
        for partition, tracker in self.trackers.items():
            checked = self._erasures_checked.get(partition)
            start = checked[1] if checked is not None and checked[0] is tracker else 0
            if start == total:
                continue
            for erasure in erasures[start:total]:
                marker = ERASED_PREFIX + erasure.erasure_id
                if marker in tracker.state:
                    continue
                doomed = tracker.forget(erasure.customer_id, erasure.matches)
                for key in doomed:
                    out.send_raw(GROWTH_CHANGELOG, None, key.encode(), partition=partition)
                state = tracker.state
                state[marker] = {"erasure": erasure.erasure_id, "at": erasure.requested_at}
                out.send_raw(GROWTH_CHANGELOG, encode(state[marker]), marker.encode(), partition=partition)
                self._changed = True
                if doomed:
                    APPLIED.labels(SERVICE, "state").inc()
            self._erasures_checked[partition] = (tracker, total)

    # -- a batch ------------------------------------------------------------------------------------------

    def process(self, batch: Batch, out: Emit) -> None:
        missing = {m.partition for m in batch} - self.trackers.keys()
        if missing:
            raise RetryBatch(f"partitions {missing} have no restored state")
        if self.erasures is not None:
            if not self.erasures.ready.is_set():
                raise RetryBatch("the erasure requests are still being read")
            self._forget(out)
        now_ms = out.now_ms
        outcomes = self._outcomes
        touched: set[int] = set()
        for message in batch:
            event: dict[str, Any] = message.value  # type: ignore[assignment]
            if event.get("merge") is not None:  # a $person_merged record: history is not re-attributed
                outcomes["merge"] = outcomes.get("merge", 0) + 1
                continue
            if (event.get("properties") or {}).get(HISTORICAL_PROPERTY) is True:
                # Imported history: a threshold crossed months ago must not prompt anyone today.
                outcomes["historical"] = outcomes.get("historical", 0) + 1
                continue
            tracker = self.trackers[message.partition]
            self._changed = True
            crossings = tracker.apply(event)
            if tracker.dirty:
                touched.add(message.partition)
                outcomes["counted"] = outcomes.get("counted", 0) + 1
            else:
                outcomes["ignored"] = outcomes.get("ignored", 0) + 1
            for c in crossings:
                record = activation_record(c, now_ms)
                out.send(ACTIVATION_EVENTS, record, key=c.customer)
                out.send(USAGE_EVENTS, crossing_telemetry(record, now_ms), key=c.customer)
                tracker.state[fired_key(c.scope, c.customer, c.person or "", c.threshold.name)]["record"] = (
                    record
                )
                self._pending.append((c.threshold.name, c.scope))
        for partition in touched:
            tracker = self.trackers[partition]
            for key, value in tracker.take_dirty():
                # None: a person evicted past the bound, tombstoned (the activation view drops it too)
                encoded = None if value is None else encode(value)
                out.send_raw(GROWTH_CHANGELOG, encoded, key.encode(), partition=partition)
        if touched:
            self._bound_metrics = True

    def prepare_commit(self, positions: Sequence[TopicPartition], out: Emit) -> list[TopicPartition]:
        """Each partition's checkpoint is the input offset this transaction commits for it."""
        offsets = []
        for tp in positions:
            if tp.topic != self.input_topic or tp.offset < 0 or tp.partition not in self.trackers:
                continue
            offsets.append(tp)
            out.send_raw(
                GROWTH_CHANGELOG, encode({"offset": tp.offset}), CHECKPOINT_KEY, partition=tp.partition
            )
        return offsets


def crossing_telemetry(record: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """The ``activation_threshold_crossed`` telemetry event (the seeds' name) of an activation record."""
    return usage_event(
        event_id=stable_event_id("activation", record["event_id"]),
        customer_id=record["customer_id"],
        name=TELEMETRY_EVENT,
        properties={
            "threshold": record["threshold"],
            "event": record["event"],
            "count": record["count"],
            "required": record["required"],
            "scope": record["scope"],
            "north_star": record["north_star"],
            "prompt": record["prompt"],
        },
        user_id=record["person_id"],
        now_ms=now_ms,
    )
