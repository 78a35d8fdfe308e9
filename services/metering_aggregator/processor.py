"""The metering logic on the kernel's exactly-once loop: usage events in, aggregates, changelog and
threshold events out, all in the batch's transaction (``services.kernel.processing`` owns the loop).

Per batch the handler looks up new customers, applies each event to its partition's state (or
dead-letters it, or moves it to its home partition), and writes the changed aggregates, the changelog
deltas and the threshold events; just before the offsets join the transaction it writes each partition's
checkpoint (the input offset that transaction commits).

State lives in memory per assigned partition and is rebuilt from the changelog on assignment (read
``read_committed`` up to the last stable offset, *after* the group's committed offsets are known to be
stable, and until the changelog's checkpoint has reached them), so after any crash, rebalance or abort the
state matches the committed offsets exactly: an aborted transaction makes the loop call ``rollback``,
which rebuilds every partition the batch had changed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.customers import CustomerDirectory
from services.kernel import metrics
from services.kernel.kafka import TopicPartition
from services.kernel.processing import Batch, Emit, RetryBatch, StreamHandler
from services.kernel.processing.state import restore_partitions, sealed_at_committed
from services.kernel.processing.store import StoreFold
from services.kernel.serde import header
from services.kernel.settings import KafkaSettings
from services.kernel.topics import (
    ABUSE_SIGNALS,
    ENTITLEMENT_EVENTS,
    METERING_CHANGELOG,
    USAGE_AGGREGATES,
    USAGE_EVENTS,
    USAGE_PERIODS,
)
from services.metering_aggregator import avro_aggregate
from services.metering_aggregator.abuse import AbuseDetector, Signal
from services.metering_aggregator.avro_aggregate import AggregateEncoder
from services.metering_aggregator.changelog import encode_value, restore
from services.metering_aggregator.handlers import abuse_record, aggregate_record, threshold_record
from services.metering_aggregator.model import PartitionState, Rules
from services.metering_aggregator.store import (
    REPLAY,
    DiskDedupIndex,
    DiskWindows,
    PartitionStore,
    replay,
)
from services.metering_aggregator.values import nanounits_to_decimal
from services.plans.model import PlansConfig
from services.plans.periods import Granularity

log = logging.getLogger(__name__)

EVENTS = metrics.counter(
    "plg_metering_events", "Usage events read by the aggregator, by outcome.", ("outcome",)
)
RESTORE_SECONDS = metrics.histogram(
    "plg_metering_restore_seconds", "Time to rebuild partition state from the changelog."
)
THRESHOLDS = metrics.counter(
    "plg_metering_threshold_events", "Threshold events emitted, by percent.", ("percent",)
)
DEDUP_IDS = metrics.gauge("plg_metering_dedup_ids", "Event ids held for deduplication.")
WINDOWS = metrics.gauge("plg_metering_windows", "Aggregation windows held in memory.")
SPILLED_SERIES = metrics.gauge(
    "plg_metering_spilled_series",
    "Series (customer, meter, group) whose windows are only in the local store (memory bound).",
)
ASSIGNED = metrics.gauge("plg_metering_assigned_partitions", "usage-events partitions this instance owns.")
ABUSE = metrics.counter(
    "plg_metering_abuse_signals", "Abuse signals emitted (committed), by kind and action.", ("kind", "action")
)
RESTORES = metrics.counter(
    "plg_metering_restores",
    "Partition states rebuilt, by source: the local store (warm) or the changelog (replayed).",
    ("source",),
)
SPILLED_IDS = metrics.counter(
    "plg_metering_dedup_spilled_ids", "Dedup ids moved from memory to the local store (memory bound)."
)
ABUSE_TRACKED = metrics.gauge(
    "plg_metering_abuse_tracked_customers", "Customers whose rate baseline the abuse guard keeps in memory."
)

SERVICE = "metering-aggregator"
REROUTED = "rerouted"
#: What the loop reads and writes (catalogue names; the changelog is schemaless JSON).
INPUTS = (USAGE_EVENTS,)
OUTPUTS = (
    USAGE_EVENTS,
    USAGE_AGGREGATES,
    USAGE_PERIODS,
    ENTITLEMENT_EVENTS,
    ABUSE_SIGNALS,
    METERING_CHANGELOG,
)
_PERIOD = Granularity.BILLING_PERIOD


@dataclass(frozen=True)
class Topics:
    """Physical names (with the deployment's prefix) of the topics the state hooks address directly."""

    usage_events: str
    changelog: str


class MeteringHandler(StreamHandler):
    """Owns the partition states; the kernel's exactly-once loop runs its batches in transactions."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        directory: CustomerDirectory,
        config: PlansConfig,
        rules: Rules,
        topics: Topics,
        home_partition: Callable[[str], int],
        upgrade_url: str,
        eviction_interval: float = 10.0,
        checkpoint_wait: float = 30.0,
        on_abuse: Callable[[list[dict[str, Any]]], None] | None = None,
        store_factory: Callable[[int], PartitionStore] | None = None,
        dedup_memory_ids: int = 5_000_000,
        window_memory_windows: int = 1_000_000,
    ) -> None:
        self.kafka = kafka
        self.directory = directory
        self.config = config
        self.rules = rules
        self.topics = topics
        self.home_partition = home_partition
        self.upgrade_url = upgrade_url
        self.tick_interval = eviction_interval
        # How long a restore waits for the changelog to reach the committed offsets (see _restore).
        self.checkpoint_wait = checkpoint_wait
        self.states: dict[int, PartitionState] = {}
        # The abuse guard's per-customer rates, per partition (memory only: see abuse.py).
        self.detectors: dict[int, AbuseDetector] = {}
        # Committed signals go here (records as written): the app suspends and keeps them in PostgreSQL.
        self.on_abuse = on_abuse
        self._signals: list[dict[str, Any]] = []
        self._state_changed = False
        self._evicted = False
        # Tombstones of the open transaction's eviction tick, per partition (see rollback).
        self._tick_tombstones: dict[int, list[bytes]] = {}
        # Outcomes of the open transaction, counted once it commits.
        self._outcomes: dict[str, int] = {}
        self._thresholds: dict[str, int] = {}
        # The local store per partition (None: state in memory only, replayed from the changelog on every
        # restore). Dedup ids beyond ``dedup_memory_ids`` (this instance's, shared by its partitions) go to
        # disk; the store mirrors the changelog and is sealed when a partition is revoked or at close.
        self.store_factory = store_factory
        self.dedup_memory_ids = dedup_memory_ids
        # Windows beyond ``window_memory_windows`` (this instance's, shared by its partitions) go to disk
        # with their whole series, least recently touched first (store.DiskWindows).
        self.window_memory_windows = window_memory_windows
        self.stores: dict[int, PartitionStore] = {}
        # The input offset each partition's state is complete at, as committed (what a seal vouches for).
        self._committed_offsets: dict[int, int] = {}
        # Changelog records of the open transaction, per partition: mirrored into the store once committed.
        self._txn_changelog: dict[int, list[tuple[bytes, bytes | None]]] = {}
        # What the last restore did, per partition: "store" or "changelog" (tests and logs read it).
        self.restored_from: dict[int, str] = {}
        self._aggregate_schema_id: int | None = None
        self._encode_aggregate: Callable[[Any, int], bytes] = lambda _w, _now: b""

    # -- the loop's state hooks -----------------------------------------------------------------------

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        mine = [tp.partition for tp in partitions if tp.topic == self.topics.usage_events]
        if mine:
            self.states.update(self._restore(mine))
        ASSIGNED.set(len(self.states))

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.topics.usage_events:
                state = self.states.pop(tp.partition, None)
                self.detectors.pop(tp.partition, None)
                self._close_store(tp.partition, state)
        ASSIGNED.set(len(self.states))

    def close(self) -> None:
        """Seal and close every local store (after the loop has stopped: the lifecycle closes it later)."""
        for partition in list(self.stores):
            self._close_store(partition, self.states.get(partition))

    def _close_store(self, partition: int, state: PartitionState | None) -> None:
        """Seal the partition's store when its state is exactly the committed one, then close it.

        Revocations and the final close come between transactions; a state changed by a batch that did not
        commit (``_state_changed``), or never committed at all, is not sealed: the next owner replays."""
        store = self.stores.pop(partition, None)
        if store is None:
            return
        try:
            offset = self._committed_offsets.pop(partition, None)
            if state is not None and offset is not None and offset >= 0 and not self._state_changed:
                started = time.monotonic()
                store.seal(state, offset, self.rules)
                log.info(
                    "local state store sealed",
                    extra={
                        "partition": partition,
                        "offset": offset,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                )
        except Exception:
            log.exception("could not seal the local state store", extra={"partition": partition})
        finally:
            store.close()

    def rollback(self, assigned: Sequence[TopicPartition]) -> None:
        """Rebuild what the aborted transaction changed (every assigned partition, as its changes are
        mixed in memory) or what a failed restore left without state."""
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.topics.usage_events)
        missing = [p for p in partitions if p not in self.states]
        rebuild = partitions if self._state_changed else missing
        if not self._state_changed:
            # Only an eviction tick was lost: memory (and the local store) already dropped that state, which
            # no event can reach any more, so its tombstones go out with the next transaction instead.
            for partition, tombstones in self._tick_tombstones.items():
                state = self.states.get(partition)
                if state is not None and partition not in rebuild:
                    state.pending_tombstones.extend(tombstones)
        self._tick_tombstones.clear()
        if rebuild:
            self.states.update(self._restore(rebuild))
        for state in self.states.values():
            state.forget_checkpoint()  # it may have gone with the aborted transaction
        self._state_changed = False
        self._txn_changelog.clear()
        self._outcomes.clear()
        self._thresholds.clear()
        self._signals.clear()
        # Their counts may hold the aborted batch: start again from the plans' norms (less sensitive for a
        # while, never a false positive from counting a batch twice).
        self.detectors.clear()
        ASSIGNED.set(len(self.states))

    def committed(self, positions: Sequence[TopicPartition]) -> None:
        self._state_changed = False
        self._tick_tombstones.clear()
        if self.stores:
            self._after_commit(positions)
        for outcome, n in self._outcomes.items():
            EVENTS.labels(outcome).inc(n)
        for percent, n in self._thresholds.items():
            THRESHOLDS.labels(percent).inc(n)
        self._outcomes.clear()
        self._thresholds.clear()
        if self._signals:
            signals, self._signals = self._signals, []
            for record in signals:
                ABUSE.labels(record["kind"], record["action"]).inc()
            if self.on_abuse is not None:
                try:
                    self.on_abuse(signals)
                except Exception:  # the database is down: the signals are on their topic; an abuse that
                    # goes on signals again within a minute
                    log.exception("could not apply abuse signals", extra={"signals": len(signals)})
        if self._evicted:
            self._evicted = False
            DEDUP_IDS.set(sum(len(s.dedup) for s in self.states.values()))
            WINDOWS.set(sum(s.windows_in_memory for s in self.states.values()))
            SPILLED_SERIES.set(sum(s.spilled_series for s in self.states.values()))

    def _after_commit(self, positions: Sequence[TopicPartition]) -> None:
        """The transaction is durable: mirror its changelog records into the stores and spill dedup ids
        beyond the memory bound (only committed ids ever reach a store)."""
        for tp in positions:
            self._committed_offsets[tp.partition] = tp.offset
        changes, self._txn_changelog = self._txn_changelog, {}
        for partition, records in changes.items():
            store = self.stores.get(partition)
            if store is not None:
                store.mirror(records)
        bound = self._memory_ids_per_partition()
        windows_bound = self._memory_windows_per_partition()
        for state in self.states.values():
            dedup = state.dedup
            if isinstance(dedup, DiskDedupIndex):
                dedup.memory_ids = bound
                moved = dedup.spill()
                if moved:
                    SPILLED_IDS.inc(moved)
                    self._evicted = True  # refresh the gauges
            spill = state.spill
            if spill is not None:
                spill.bound = windows_bound
                if state.windows_in_memory > windows_bound and spill.spill(state):
                    self._evicted = True

    def _memory_ids_per_partition(self) -> int:
        return max(1, self.dedup_memory_ids // max(1, len(self.states)))

    def _memory_windows_per_partition(self) -> int:
        return max(1, self.window_memory_windows // max(1, len(self.states)))

    def _store(self, partition: int) -> PartitionStore:
        store = self.stores.get(partition)
        if store is None:
            assert self.store_factory is not None
            store = self.stores[partition] = self.store_factory(partition)
        return store

    def _new_state(self, partition: int) -> PartitionState:
        if self.store_factory is None:
            return PartitionState(partition, self.config, self.rules)
        store = self._store(partition).store
        dedup = DiskDedupIndex(store, self._memory_ids_per_partition())
        state = PartitionState(partition, self.config, self.rules, dedup)
        state.spill = DiskWindows(store, self._memory_windows_per_partition())
        return state

    def _warm(self, partitions: list[int]) -> dict[int, PartitionState]:
        """States of ``partitions`` whose local store is sealed at exactly the group's committed offset.

        The committed offsets are asked for as *stable* offsets (read_committed, KIP-447): a previous
        owner's pending transaction is settled first. A seal at that offset means the store holds the fold
        of every changelog record committed up to it — nothing of a later or aborted transaction ever
        reaches a store — so it is the state a replay would rebuild (docs/metering.md#incremental-restore).
        """
        if self.store_factory is None:
            return {}
        seals = {p: self._store(p).seal_under(self.rules) for p in partitions}
        warm: dict[int, PartitionState] = {}
        for p, offset in sealed_at_committed(self.consumer, self.topics.usage_events, seals).items():
            store = self._store(p)
            state = self._new_state(p)
            records, ids = store.load(state)
            state.checkpoint_offset = offset
            warm[p] = state
            self._committed_offsets[p] = offset
            log.info(
                "partition state reused from the local store",
                extra={
                    "partition": p,
                    "offset": offset,
                    "records": records,
                    "ids_in_memory": ids,
                    "windows_in_memory": state.windows_in_memory,
                    "spilled_series": state.spilled_series,
                },
            )
        return warm

    def _restore(self, partitions: list[int]) -> dict[int, PartitionState]:
        """Rebuild the state of ``partitions`` as of the group's committed offsets.

        Every path that (re)builds state goes through here — assignment, and rollback after a failed batch
        or a failed restore — so every one first asks for the committed offsets: under ``read_committed``
        librdkafka asks for *stable* offsets (KIP-447), and the broker answers only once no transaction
        carrying offsets for these partitions is pending (e.g. the previous owner's, still in flight).
        The changelog is then read to its last stable offset, and its checkpoint must have reached the
        committed offset; if it has not, the commit markers are still landing and it is read again.
        """
        started = time.monotonic()
        records = 0
        for p in partitions:
            self._txn_changelog.pop(p, None)
        states = self._warm(partitions)
        for p in states:
            self.restored_from[p] = "store"
            RESTORES.labels("store").inc()

        def build(partition: int, latest: Any) -> tuple[PartitionState, int | None]:
            nonlocal records
            state = self._new_state(partition)
            if isinstance(latest, StoreFold):  # the store holds the changelog just read: bounded memory
                records += replay(state, latest)
            else:
                restore(state, latest.items())
                records += len(latest)
            return state, state.checkpoint_offset

        fold = None
        if self.store_factory is not None:

            def fold(partition: int) -> StoreFold:
                store = self._store(partition).store
                store.clear()  # rebuilt from the changelog, unsealed until revoked
                return StoreFold(store, REPLAY)  # a scratch prefix: replay() builds the layout from it

        cold = [p for p in partitions if p not in states]
        if cold:
            replayed = restore_partitions(
                kafka=self.kafka,
                consumer=self.consumer,
                input_topic=self.topics.usage_events,
                changelog_topic=self.topics.changelog,
                partitions=cold,
                build=build,
                checkpoint_wait=self.checkpoint_wait,
                fold=fold,
            )
            for p, state in replayed.items():
                self.restored_from[p] = "changelog"
                RESTORES.labels("changelog").inc()
                if state.checkpoint_offset is not None:
                    self._committed_offsets[p] = state.checkpoint_offset
            states.update(replayed)
        elapsed = time.monotonic() - started
        RESTORE_SECONDS.observe(elapsed)
        log.info(
            "partition state restored",
            extra={
                "partitions": partitions,
                "from_store": sorted(p for p in partitions if self.restored_from.get(p) == "store"),
                "seconds": round(elapsed, 3),
                "records": records,
                "dedup_ids": sum(len(s.dedup) for s in states.values()),
                "windows": sum(s.windows_in_memory for s in states.values()),
                "spilled_series": sum(s.spilled_series for s in states.values()),
            },
        )
        return states

    # -- a batch ----------------------------------------------------------------------------------------

    def process(self, batch: Batch, out: Emit) -> None:
        states = self.states
        # Every partition whose offset this transaction moves must have its state, so that its checkpoint
        # moves with it — also when its records are only rerouted.
        messages = batch.messages
        missing = {m.record.partition() for m in messages} - states.keys()
        if missing:  # its restore failed: rebuild it and redo the batch
            raise RetryBatch(f"partitions {missing} have no restored state")
        try:
            self.directory.ensure({m.value["customer_id"] for m in messages})  # type: ignore[index]
        except Exception as exc:  # database down: nothing applied yet, redo the batch later
            raise RetryBatch(f"customer directory unavailable: {exc}") from exc

        now_ms = out.now_ms
        outcomes = self._outcomes
        counted = 0
        first_offsets: dict[int, int] = {}
        # Per customer: events counted and persons seen in this batch, for the abuse guard (run once per
        # customer and batch: the per-event cost is one dict update and, with a person, one set add).
        counts: dict[str, int] = {}
        persons: dict[str, set[str]] = {}
        customers = self.directory.snapshot()
        home = self.home_partition
        usage_events = USAGE_EVENTS
        # Customer -> (home partition, customer row) for this batch: one look-up per event for both.
        homes: dict[str, tuple[int, Any]] = {}
        # A batch holds its messages in partition order: the partition's state is looked up when it changes.
        current = -1
        apply: Callable[[dict[str, Any], int, Any], Any] | None = None
        if messages:
            # Conservatively before the first apply (rollback then rebuilds): no per-event flag write.
            self._state_changed = True
        for message in batch:
            event: dict[str, Any] = message.value  # type: ignore[assignment]
            record = message.record
            partition: int = record.partition()  # type: ignore[assignment]
            customer_id = event["customer_id"]
            # When the event reached Kafka (the producer's timestamp), never ahead of our own clock: the
            # partition's clock, which lateness is judged on, whatever our lag (see model.py).
            arrival = record.timestamp()[1]
            if arrival <= 0 or arrival > now_ms:
                arrival = now_ms
            known = homes.get(customer_id)
            if known is None:
                known = homes[customer_id] = (
                    home(customer_id) if customer_id else partition,
                    customers.get(customer_id),
                )
            at_home, customer = known
            if at_home != partition:
                # Keyed by another partitioner (or not keyed): count it where the customer's state lives,
                # keeping its arrival time.
                out.send_raw(
                    usage_events,
                    record.value(),
                    record.key(),
                    headers=record.headers(),
                    partition=at_home,
                    timestamp_ms=arrival,
                )
                outcomes[REROUTED] = outcomes.get(REROUTED, 0) + 1
                continue
            if partition != current:
                current = partition
                apply = states[partition].apply
                if partition not in first_offsets:
                    first_offsets[partition] = message.offset
            # The decoder resolved the record to our reader schema, so every field exists with its type;
            # apply() validates values before it changes anything.
            rejection = apply(event, arrival, customer)  # type: ignore[misc]
            if rejection is None:
                counted += 1
                counts[customer_id] = counts.get(customer_id, 0) + 1
                person = event["user_id"] or event["anonymous_id"]
                if person is not None:
                    seen = persons.get(customer_id)
                    if seen is None:
                        persons[customer_id] = {person}
                    else:
                        seen.add(person)
                continue
            outcomes[rejection.code] = outcomes.get(rejection.code, 0) + 1
            if rejection.dead_letter:
                out.dead_letter(
                    message,
                    rejection.code,
                    rejection.message,
                    event_id=event["event_id"],
                    customer_id=customer_id,
                )
        if counted:
            outcomes["counted"] = outcomes.get("counted", 0) + counted
        signals = self._detect(counts, persons, customers)
        self._write_state(first_offsets, out, signals)
        encode_signal = out.encoder(ABUSE_SIGNALS).encode
        for signal in signals:
            evidence = abuse_record(signal, now_ms)
            out.send_raw(ABUSE_SIGNALS, encode_signal(evidence), signal.customer_id)
            self._signals.append(evidence)

    def _detect(
        self, counts: dict[str, int], persons: dict[str, set[str]], customers: dict[str, Any]
    ) -> list[Signal]:
        signals: list[Signal] = []
        config = self.config
        none: set[str] = set()
        for customer_id, count in counts.items():
            customer = customers.get(customer_id)
            plan = config.plan(customer.plan) if customer is not None else None
            if plan is None:
                continue
            partition = self.home_partition(customer_id)  # counted events are all at home
            detector = self.detectors.get(partition)
            if detector is None:
                detector = self.detectors[partition] = AbuseDetector()
            clock = self.states[partition].clock_ms
            signals += detector.observe(
                customer_id, plan.slug, plan.abuse, clock, count, persons.get(customer_id, none)
            )
        return signals

    def _aggregate_encoder(self, out: Emit) -> Callable[[Any, int], bytes]:
        """The hand-written encoder of aggregates while the output's schema is the one it was written for,
        else the kernel's generic one (built once per schema id)."""
        generic = out.encoder(USAGE_AGGREGATES)
        if generic.schema_id != self._aggregate_schema_id:
            self._aggregate_schema_id = generic.schema_id
            fast = (
                AggregateEncoder(header(generic.schema_id))
                if avro_aggregate.schema_matches(json.loads(generic.schema_str))
                else None
            )

            def encode(w: Any, now_ms: int) -> bytes:
                if fast is not None:
                    data = fast.encode(w, now_ms)
                    if data is not None:
                        return data
                return generic.encode(aggregate_record(w, now_ms))

            self._encode_aggregate = encode
        return self._encode_aggregate

    def _write_state(self, first_offsets: dict[int, int], out: Emit, signals: list[Signal]) -> None:
        now_ms = out.now_ms
        send_raw = out.send_raw
        encode_aggregate = self._aggregate_encoder(out)
        encode_threshold = out.encoder(ENTITLEMENT_EVENTS).encode
        for partition, seq in first_offsets.items():
            drained = self.states[partition].drain(seq, self.directory.get)
            for w in drained.aggregates:
                value = encode_aggregate(w, now_ms)
                send_raw(USAGE_AGGREGATES, value, w.key)
                if w.granularity is _PERIOD and not w.series.group:
                    # The small topic the entitlement view reads (current periods only, see topics.py).
                    send_raw(USAGE_PERIODS, value, w.key)
                    self._check_cap(partition, w, signals)
            mirror = self._txn_changelog.setdefault(partition, []) if self.stores else None
            for key, value in drained.changelog:
                # None is a tombstone (a superseded packed record), not the JSON null.
                encoded = None if value is None else encode_value(value)
                send_raw(METERING_CHANGELOG, encoded, key, partition=partition)
                if mirror is not None:
                    mirror.append((key, encoded))
            for crossing in drained.thresholds:
                record = threshold_record(crossing, now_ms, self.config, self.upgrade_url)
                send_raw(ENTITLEMENT_EVENTS, encode_threshold(record), crossing.customer.customer_id)
                percent = str(crossing.percent)
                self._thresholds[percent] = self._thresholds.get(percent, 0) + 1

    def _check_cap(self, partition: int, w: Any, signals: list[Signal]) -> None:
        """A period total past its plan's hard cap (abuse guard) signals."""
        customer = self.directory.get(w.series.customer_id)
        plan = self.config.plan(customer.plan) if customer is not None else None
        if plan is None or w.series.meter.slug not in plan.abuse.hard_caps:
            return
        detector = self.detectors.get(partition)
        if detector is not None:
            usage = nanounits_to_decimal(w.value)
            clock = self.states[partition].clock_ms
            signals += detector.usage(
                w.series.customer_id, plan.slug, plan.abuse, clock, w.series.meter.slug, usage
            )

    def tick(self, out: Emit) -> None:
        """Expire dedup ids and windows past the horizon; their changelog entries get tombstones."""
        for partition, state in self.states.items():
            tombstones = state.evict()
            for key in tombstones:
                out.send_raw(METERING_CHANGELOG, None, key, partition=partition)
            if tombstones:
                self._tick_tombstones.setdefault(partition, []).extend(tombstones)
            if self.stores and tombstones:
                self._txn_changelog.setdefault(partition, []).extend((key, None) for key in tombstones)
            detector = self.detectors.get(partition)
            if detector is not None:
                detector.expire(state.clock_ms)
        ABUSE_TRACKED.set(sum(len(d) for d in self.detectors.values()))
        self._evicted = True

    def prepare_commit(self, positions: Sequence[TopicPartition], out: Emit) -> list[TopicPartition]:
        """Each partition's changelog says which input offset its state is complete up to: the very offset
        committed with it in this transaction (a restore checks one against the other). Returns the offsets
        to commit: only those of partitions with state (a position can move over transaction markers
        without a record, and must not be committed for a partition whose restore failed)."""
        offsets = []
        for tp in positions:
            state = self.states.get(tp.partition)
            if state is None or tp.offset < 0 or tp.topic != self.topics.usage_events:
                continue
            offsets.append(tp)
            record = state.checkpoint(tp.offset)
            if record is not None:
                key, value = record
                encoded = encode_value(value)
                out.send_raw(METERING_CHANGELOG, encoded, key, partition=tp.partition)
                if self.stores:
                    self._txn_changelog.setdefault(tp.partition, []).append((key, encoded))
        return offsets
