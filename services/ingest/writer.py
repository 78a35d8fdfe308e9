"""Kafka adapter: write a request's records and wait until the broker has acknowledged every one.

Records are produced with the kernel's idempotent producer (``acks=all``), keyed by customer id, encoded
with the registered schemas. ``write`` returns only when the broker acknowledged all of them; any failure
(broker unreachable, timeout, local queue full) raises :class:`KafkaUnavailableError`, and the HTTP layer
answers 503 without reporting anything accepted. Records of a failed request that did reach the broker
are retried by the client with the same ``event_id``s, which downstream dedup collapses.

Delivery reports are served by the kernel producer's poll thread. Serving them on the event loop instead
(``poll(0)`` on a timer, no thread, so no GIL hand-over per report) was measured: ~20% more events/s on
idle cores, but three times the half-load p99 when other processes compete for the CPU (docs/ingest.md).
"""

from __future__ import annotations

import asyncio
import logging

from services.ingest.avro_usage import UsageEventEncoder
from services.kernel.errors import KafkaClientError, KafkaUnavailableError
from services.kernel.kafka import Producer, Record
from services.kernel.serde import ValueEncoder

log = logging.getLogger(__name__)


class _Acks:
    """Counts delivery reports of one request on the producer's poll thread; resolves an asyncio future
    on the event loop when the last one arrives or at the first failure."""

    __slots__ = ("error", "future", "loop", "remaining")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self.remaining = n
        self.error: KafkaClientError | None = None
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def on_delivery(self, error: KafkaClientError | None, _record: Record) -> None:
        if error is not None:
            if self.error is None:
                self.error = error
                self.loop.call_soon_threadsafe(self._resolve)
            return
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(None)


class EventWriter:
    """Writes usage-events (and identity-links) records for one request at a time, concurrently."""

    def __init__(
        self,
        producer: Producer,
        *,
        events_topic: str,
        links_topic: str,
        events: ValueEncoder,
        links: ValueEncoder,
        timeout: float,
        fast: UsageEventEncoder | None = None,
        registry_version: int | None = None,
    ) -> None:
        self.producer = producer
        self.events_topic = events_topic
        self.links_topic = links_topic
        self.events = events
        self.links = links
        self.timeout = timeout
        # The specialised usage-events encoder, when the registered schema is the one it was written for.
        self.fast = fast
        # The registry's version of the events subject for ``events``' schema (recorded on each event).
        self.registry_version = registry_version

    async def write(self, customer_id: str, values: list[bytes], links: list[tuple[str, bytes]]) -> None:
        """Produce ``values`` (usage-events, keyed by ``customer_id``) and ``links`` (key, value) and wait
        for every acknowledgement. Raises :class:`KafkaUnavailableError` when Kafka cannot take them."""
        acks = _Acks(len(values) + len(links), asyncio.get_running_loop())
        on_delivery = acks.on_delivery
        try:
            self.producer.produce_many(self.events_topic, values, customer_id, on_delivery)
            for key, value in links:
                self.producer.produce(self.links_topic, value, key, None, on_delivery)
        except KafkaClientError as exc:
            acks.future.cancel()
            raise _unavailable(exc) from exc
        try:
            # A little past librdkafka's own message timeout: its precise error normally arrives first.
            await asyncio.wait_for(acks.future, self.timeout + 2.0)
        except TimeoutError:
            raise KafkaUnavailableError(
                f"no acknowledgement from Kafka within {self.timeout + 2.0:.0f} s"
            ) from None
        except KafkaClientError as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: KafkaClientError) -> KafkaUnavailableError:
    if isinstance(exc, KafkaUnavailableError):
        return exc
    # Not the client's fault either way (topic missing, record refused by the broker...): log it loudly
    # for the operator, tell the client to retry later.
    log.error("kafka refused a write", extra={"error": str(exc), "code": exc.code_name})
    return KafkaUnavailableError(str(exc), code=exc.code, code_name=exc.code_name, retriable=True)
