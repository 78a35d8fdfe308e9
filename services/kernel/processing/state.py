"""State that a stream handler keeps in memory, backed by a changelog it writes in its own transactions.

The pattern (the metering aggregator and growth's activation counters both use it): partition *p* of a
compacted changelog topic holds the state of input partition *p*, written only in the transactions that
also commit *p*'s input offsets, together with a **checkpoint** record — the input offset that transaction
commits. On assignment (and after an abort) the state is rebuilt with :func:`restore_partitions`: the
group's committed offsets first (under ``read_committed`` librdkafka asks for *stable* offsets, KIP-447,
so the answer waits for a previous owner's pending transaction), then the changelog read to its last
stable offset, again until each partition's checkpoint has reached its committed offset (the commit
markers land on the changelog and on ``__consumer_offsets`` in parallel).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TypeVar

from services.kernel.errors import KafkaUnavailableError
from services.kernel.kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from services.kernel.settings import KafkaSettings

log = logging.getLogger(__name__)

S = TypeVar("S")


class RestoreError(RuntimeError):
    """The changelog could not be read to its end in time."""


# How long a restore waits for the group's offsets to become stable. A previous owner's open transaction
# settles within its transaction timeout (`*_TRANSACTION_TIMEOUT_MS`, 30 s by default for plg's services);
# a wait beyond that is retried by the loop.
STABLE_OFFSETS_TIMEOUT = 60.0


def stable_committed(consumer: Consumer, input_topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The group's committed offsets of ``partitions`` once they are *stable* (KIP-447: under
    ``read_committed`` the broker answers only when no open transaction holds offsets for them).

    A timeout says which wait it was: when it repeats well past every producer's transaction timeout, the
    open transaction is a *hanging* one — its commit marker never reached ``__consumer_offsets`` — and only
    an operator can end it (docs/operations.md#hanging-transactions).
    """
    wanted = [TopicPartition(input_topic, p) for p in partitions]
    try:
        found = consumer.committed(wanted, timeout=STABLE_OFFSETS_TIMEOUT)
    except KafkaUnavailableError as exc:
        raise KafkaUnavailableError(
            f"committed offsets of {input_topic} {sorted(tp.partition for tp in wanted)} not stable within "
            f"{STABLE_OFFSETS_TIMEOUT:.0f}s: the broker is away, or a transaction holding offsets for them "
            "is still open (a hanging one if this repeats: docs/operations.md#hanging-transactions)",
            code=exc.code,
            code_name=exc.code_name,
            retriable=exc.retriable,
        ) from exc
    return {tp.partition: tp.offset for tp in found}


def read_changelog(
    kafka: KafkaSettings,
    topic: str,
    partitions: Iterable[int],
    timeout: float = 120.0,
    client_id: str = "changelog-restore",
    folds: dict[int, MutableMapping[bytes, bytes]] | None = None,
) -> dict[int, MutableMapping[bytes, bytes]]:
    """The latest value per key of each changelog partition (read_committed, up to the stable end;
    tombstoned keys left out): folded into a dict per partition, or into ``folds`` (a handler's own mapping:
    :class:`~services.kernel.processing.store.StoreFold`, the partition's wiped local store, so a big
    partition is not held in memory while it is read — only a fetch of up to 10 000 records is)."""
    parts = sorted(partitions)
    latest: dict[int, MutableMapping[bytes, bytes]] = folds if folds is not None else {p: {} for p in parts}
    if not parts:
        return latest
    reader = Consumer(kafka, None, client_id=client_id, fetch_wait_max_ms=10)
    try:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        ends = reader.end_offsets([TopicPartition(topic, p) for p in parts])
        deadline = time.monotonic() + timeout
        while not reader.caught_up(ends):
            if time.monotonic() > deadline:
                raise RestoreError(f"changelog {topic} {parts} not read to its end within {timeout:.0f}s")
            for record in reader.consume(10_000, 0.2):
                key = record.key()
                if key is None:
                    continue
                by_key = latest[record.partition()]  # type: ignore[index]
                value = record.value()
                if value is None:
                    by_key.pop(key, None)
                else:
                    by_key[key] = value
    finally:
        reader.close()
    return latest


def changelog_behind(checkpoint: int | None, committed: int) -> bool:
    """True when a restored state misses a transaction whose offsets the group has already committed.

    It happens for a moment after a commit: the transaction coordinator writes the commit markers to every
    partition of the transaction in parallel, so the group's offsets can be stable (the marker reached
    ``__consumer_offsets``) while the changelog's last stable offset still stops before the transaction
    (its marker has not landed on that partition's leader yet). Reading again shortly after completes it.
    A changelog without a checkpoint (written before checkpoints existed) or a partition without committed
    offsets cannot be checked and counts as complete.
    """
    return checkpoint is not None and committed >= 0 and checkpoint < committed


def restore_partitions(
    *,
    kafka: KafkaSettings,
    consumer: Consumer,
    input_topic: str,
    changelog_topic: str,
    partitions: list[int],
    build: Callable[[int, Any], tuple[S, int | None]],
    checkpoint_wait: float = 30.0,
    fold: Callable[[int], MutableMapping[bytes, bytes]] | None = None,
) -> dict[int, S]:
    """Rebuild the state of ``partitions`` as of the group's committed offsets.

    ``build(partition, latest records by key)`` makes one partition's state and says its checkpoint (the
    input offset it is complete up to, None when it has none). A partition whose checkpoint is behind its
    committed offset is read again; past ``checkpoint_wait`` seconds the gap can only be offsets moved by
    hand (markers land in milliseconds), so it is logged as an error and the state taken as it is rather
    than stalling the partition for good. ``fold(partition)``, when given, makes the (empty) mapping each
    read folds a partition's records into — a :class:`~services.kernel.processing.store.StoreFold` over the
    partition's wiped store (metering, growth) — and ``build`` then gets it instead of a dict.
    """
    started = time.monotonic()
    committed = stable_committed(consumer, input_topic, partitions)
    states: dict[int, S] = {}
    pending = list(partitions)
    while pending:
        folds = None if fold is None else {p: fold(p) for p in pending}
        latest = read_changelog(kafka, changelog_topic, pending, folds=folds)
        behind: dict[int, tuple[S, int | None]] = {}
        for p in pending:
            state, checkpoint = build(p, latest[p])
            if changelog_behind(checkpoint, committed.get(p, -1)):
                behind[p] = (state, checkpoint)
            else:
                states[p] = state
        if not behind:
            break
        gaps = {p: (checkpoint, committed[p]) for p, (_, checkpoint) in behind.items()}
        if time.monotonic() - started > checkpoint_wait:
            log.error(
                "changelog checkpoint stays behind the committed offset (reset by hand?); going on",
                extra={"changelog": changelog_topic, "partitions": gaps},
            )
            states.update({p: state for p, (state, _) in behind.items()})
            break
        log.warning(
            "changelog behind the committed offsets; reading it again",
            extra={"changelog": changelog_topic, "partitions": gaps},
        )
        pending = list(behind)
        time.sleep(0.1)
    return states


def sealed_at_committed(
    consumer: Consumer,
    input_topic: str,
    seals: dict[int, dict[str, Any] | None],
) -> dict[int, int]:
    """The partitions whose local store is sealed at exactly the group's committed offset (``{"o": offset,
    ...}`` in the seal), with that offset: those a handler may load instead of replaying the changelog.

    The committed offsets are asked for as *stable* offsets (read_committed, KIP-447): a previous owner's
    pending transaction is settled first. Every transaction that processed a record of the partition after
    the seal moved that offset, so a store sealed at it has missed none of them (docs/kernel.md#local-state-
    stores). ``seals`` maps each partition to its store's seal (None: not sealed, or sealed under other
    rules the handler refuses).
    """
    candidates = [p for p, seal in seals.items() if seal is not None and isinstance(seal.get("o"), int)]
    if not candidates:
        return {}
    committed = stable_committed(consumer, input_topic, candidates)
    warm: dict[int, int] = {}
    for p in candidates:
        seal = seals[p]
        assert seal is not None
        offset = committed.get(p, -1)
        if offset >= 0 and seal["o"] == offset:
            warm[p] = offset
        else:
            log.info(
                "local state store is not at the committed offset; replaying the changelog",
                extra={"topic": input_topic, "partition": p, "sealed_at": seal["o"], "committed": offset},
            )
    return warm
