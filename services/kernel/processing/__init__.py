"""The stream runtime every Kafka-consuming service runs on.

* :func:`exactly_once` → :class:`ExactlyOnceLoop`: consume-transform-produce, one Kafka transaction per
  batch (outputs, dead letters and input offsets commit together).
* :func:`at_least_once` → :class:`AtLeastOnceLoop`: sinks with an outside effect (PostgreSQL, Stripe,
  HTTP): effect first, offsets after, with redelivered records dropped below the sink's stored offsets.
* :mod:`services.kernel.processing.view`: a materialised view of a compacted topic (read to its end, then
  followed).

A service writes a :class:`StreamHandler` (or :class:`SinkHandler`): ``process(batch, out)`` reads
:class:`Message` objects and writes with :class:`Emit`. The runtime owns the rest: transactions, offsets,
abort-and-rewind, in-doubt commits, fencing, producer replacement, rebalances, restore hooks, lag, and
dead letters for records that cannot be decoded or that the handler raises on. See docs/kernel.md.
"""

from services.kernel.processing.at_least_once import AtLeastOnceLoop, SinkHandler
from services.kernel.processing.build import at_least_once, exactly_once, exactly_once_service
from services.kernel.processing.exactly_once import ExactlyOnceLoop
from services.kernel.processing.handler import StreamHandler
from services.kernel.processing.loop import HandlerFailed
from services.kernel.processing.messages import Batch, Emit, Message, OutputTopic, RetryBatch

__all__ = [
    "AtLeastOnceLoop",
    "Batch",
    "Emit",
    "ExactlyOnceLoop",
    "HandlerFailed",
    "Message",
    "OutputTopic",
    "RetryBatch",
    "SinkHandler",
    "StreamHandler",
    "at_least_once",
    "exactly_once",
    "exactly_once_service",
]
