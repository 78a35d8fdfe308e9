"""The handler side of the runtime: what a service writes, and the hooks stateful services add."""

from __future__ import annotations

from collections.abc import Sequence

from services.kernel.kafka import Consumer, TopicPartition
from services.kernel.processing.messages import Batch, Emit


class StreamHandler:
    """Base class of a service's logic on the runtime. Only :meth:`process` is required.

    The hooks exist for services that keep state in memory, backed by a changelog they write in the same
    transaction (the metering aggregator): the runtime calls them at the points where that state must be
    restored, dropped or made to match the committed offsets again. Every hook runs on the polling thread,
    between transactions, so no locking is needed.
    """

    #: Seconds between calls to :meth:`tick` (``None``: never). A tick runs inside a transaction of its
    #: own when no records arrive, or inside the batch's transaction when they do.
    tick_interval: float | None = None
    _consumer: Consumer | None = None

    def bind(self, consumer: Consumer) -> None:
        """Called by the loop that runs this handler, with its consumer (before any hook)."""
        self._consumer = consumer

    @property
    def consumer(self) -> Consumer:
        """The loop's consumer, for hooks that ask the group's committed offsets (a state restore).
        Only for that: polling, seeking and committing are the loop's."""
        if self._consumer is None:
            raise RuntimeError(f"{type(self).__name__} is not run by a loop yet")
        return self._consumer

    def process(self, batch: Batch, out: Emit) -> None:
        """Handle one batch: write outputs and dead letters with ``out``. Raise
        :class:`~services.kernel.processing.RetryBatch` when the batch cannot be done now; any other
        exception dead-letters the message being iterated (``processing_failed``)."""
        raise NotImplementedError

    def tick(self, out: Emit) -> None:
        """Periodic work that writes (e.g. expiring state and its changelog tombstones)."""

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions were assigned: restore their state. An exception is logged and :meth:`rollback` is
        called before the next batch, which must then build what is missing."""

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions were revoked or lost: forget their state (their offsets are committed already)."""

    def prepare_commit(self, positions: Sequence[TopicPartition], out: Emit) -> Sequence[TopicPartition]:
        """Called inside the transaction just before the offsets are added to it, with the consumer's
        positions on its whole assignment. Returns the offsets to commit (by default every valid one);
        a stateful handler writes its checkpoints here and leaves out partitions it holds no state for."""
        return [tp for tp in positions if tp.offset >= 0]

    def committed(self, positions: Sequence[TopicPartition]) -> None:
        """The transaction committed these offsets: apply what waits for durability (gauges, caches)."""

    def rollback(self, assigned: Sequence[TopicPartition]) -> None:
        """A transaction was aborted, or its outcome is known only now: make the state of the assigned
        partitions match their committed offsets again (the consumer is rewound to them next). Stateless
        handlers have nothing to do."""
