"""The flags at run time: the current snapshot (reloaded on every change), its SSE subscribers,
server-side evaluation with exposures and sticky assignments."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from plg_sdk.flags import ERROR, SPLIT, Evaluation
from psycopg_pool import ConnectionPool

from services.growth.flagstore import FlagStore, Snapshot
from services.growth.telemetry import TelemetryWriter, stable_event_id, usage_event
from services.kernel import metrics
from services.kernel.sse import event as sse_event

log = logging.getLogger(__name__)

EVALUATIONS = metrics.counter(
    "plg_growth_flag_evaluations", "Server-side flag evaluations, by reason.", ("reason",)
)
SUBSCRIBERS = metrics.gauge("plg_growth_sse_subscribers", "Open SSE streams, by stream.", ("stream",))
RELOADS = metrics.counter("plg_growth_flag_reloads", "Flag snapshots loaded (a change or a poll).")
REVISION = metrics.gauge("plg_growth_flags_revision", "Revision (last change id) of the flags served.")

EXPOSURE_EVENT = "$flag_exposure"


class Broadcaster:
    """Fan-out of server-sent events to the open streams. ``publish`` may be called from any thread; each
    subscriber has a small queue of its own, and one that falls behind keeps only the newest message (a
    flags stream needs the latest document, not every intermediate one)."""

    def __init__(self, name: str, queue_size: int = 4) -> None:
        self.name = name
        self.queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: set[asyncio.Queue[Any]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.queue_size)
        self._queues.add(queue)
        SUBSCRIBERS.labels(self.name).set(len(self._queues))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        self._queues.discard(queue)
        SUBSCRIBERS.labels(self.name).set(len(self._queues))

    def publish(self, message: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._deliver, message)

    def _deliver(self, message: Any) -> None:
        for queue in list(self._queues):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)

    def __len__(self) -> int:
        return len(self._queues)


class FlagsRuntime:
    """What the API serves: the latest snapshot, swapped whole on every change."""

    def __init__(self, store: FlagStore, broadcaster: Broadcaster) -> None:
        self.store = store
        self.broadcaster = broadcaster
        self._lock = threading.Lock()
        self.snapshot: Snapshot = store.snapshot()
        REVISION.set(self.snapshot.revision)

    def reload(self) -> bool:
        """Read the flags again; publishes and returns True when they changed."""
        with self._lock:
            fresh = self.store.snapshot()
            RELOADS.inc()
            if fresh.etag == self.snapshot.etag:
                return False
            self.snapshot = fresh
        REVISION.set(fresh.revision)
        log.info("flags changed", extra={"revision": fresh.revision, "flags": len(fresh.engine)})
        self.broadcaster.publish(self.message(fresh))
        return True

    @staticmethod
    def message(snapshot: Snapshot) -> bytes:
        return sse_event("flags", snapshot.body, str(snapshot.revision))


class ExposureLog:
    """Remembers which (identity, flag, version, variant) was already reported, so an app evaluating the
    same flag on every request sends one exposure, not thousands (bounded LRU, per process)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str, int | None, str | None], None] = OrderedDict()

    def first(self, identity: str, result: Evaluation) -> bool:
        if self.capacity <= 0:
            return True
        key = (identity, result.flag_key, result.version, result.variant)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def forget(self, matches: Callable[[str], bool]) -> int:
        """Drop the exposures remembered for identities that ``matches`` (an erasure)."""
        doomed = [k for k in list(self._seen) if matches(k[0])]
        for key in doomed:
            self._seen.pop(key, None)
        return len(doomed)


class StickyAssignments(MutableMapping[str, str]):
    """Server-side sticky store: an LRU in memory in front of ``growth_sticky_assignments``. The engine
    reads and writes it synchronously, so the keys a request may need are fetched first
    (:meth:`prefetch`) and the new ones written after (:meth:`flush`), off the event loop."""

    def __init__(self, pool: ConnectionPool, capacity: int) -> None:
        self.pool = pool
        self.capacity = capacity
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._new: dict[str, str] = {}
        self._lock = threading.Lock()

    def keys_for(self, snapshot: Snapshot, flag_keys: Iterable[str], context: Mapping[str, Any]) -> list[str]:
        keys = []
        for key in flag_keys:
            flag = snapshot.engine.flags.get(key)
            if flag is None or not flag.sticky:
                continue
            for attribute in flag.stickiness:
                v = context.get(attribute)
                if v is not None and v != "":
                    keys.append(f"{flag.salt}|{attribute}|{v}")
        return keys

    def prefetch(self, keys: list[str]) -> None:
        with self._lock:
            missing = [k for k in keys if k not in self._cache]
        if not missing:
            return
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT sticky_key, variant FROM growth_sticky_assignments WHERE sticky_key = ANY(%s)",
                (missing,),
            ).fetchall()
        with self._lock:
            for k, v in rows:
                self._put(k, v)

    def flush(self) -> None:
        with self._lock:
            new, self._new = self._new, {}
        if not new:
            return
        with self.pool.connection() as conn:
            conn.cursor().executemany(
                "INSERT INTO growth_sticky_assignments (sticky_key, variant) VALUES (%s, %s)"
                " ON CONFLICT (sticky_key) DO NOTHING",
                list(new.items()),
            )

    def _put(self, key: str, value: str) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)

    def forget(self, matches: Callable[[str], bool]) -> int:
        """Drop cached (and not yet written) assignments whose stickiness value ``matches`` — an erasure;
        the CLI deletes the rows (docs/privacy.md)."""
        with self._lock:
            doomed = [k for k in {*self._cache, *self._new} if matches(k.split("|", 2)[-1])]
            for key in doomed:
                self._cache.pop(key, None)
                self._new.pop(key, None)
        return len(doomed)

    # MutableMapping, for the engine.
    def __getitem__(self, key: str) -> str:
        with self._lock:
            return self._cache[key]

    def __setitem__(self, key: str, value: str) -> None:
        with self._lock:
            if self._cache.get(key) != value:
                self._new[key] = value
            self._put(key, value)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._cache))

    def __len__(self) -> int:
        return len(self._cache)


def exposure_record(result: Evaluation, context: Mapping[str, Any], identity: str) -> dict[str, Any] | None:
    """The ``$flag_exposure`` event of an evaluation, or None when it says nothing to analyse (an error)
    or has no customer to file it under."""
    customer = context.get("customer_id")
    if result.reason == ERROR or not isinstance(customer, str) or not customer:
        return None
    user = context.get("user_id")
    anon = context.get("anonymous_id")
    return usage_event(
        event_id=stable_event_id(
            "exposure", customer, identity, result.flag_key, str(result.version), str(result.variant)
        ),
        customer_id=customer,
        name=EXPOSURE_EVENT,
        properties={
            "flag_key": result.flag_key,
            "variant": result.variant,
            "reason": result.reason,
            "flag_version": result.version,
            "in_experiment": result.reason == SPLIT,
        },
        user_id=user if isinstance(user, str) else None,
        anonymous_id=anon if isinstance(anon, str) else None,
    )


class Evaluator:
    """Server-side evaluation: the engine on the current snapshot, plus exposures and sticky assignments."""

    def __init__(
        self,
        runtime: FlagsRuntime,
        telemetry: TelemetryWriter | None,
        exposures: ExposureLog,
        sticky: StickyAssignments | None,
    ) -> None:
        self.runtime = runtime
        self.telemetry = telemetry
        self.exposures = exposures
        self.sticky = sticky

    def evaluate(
        self,
        flag_keys: list[str] | None,
        context: Mapping[str, Any],
        default: Any = None,
        expected_type: str | None = None,
    ) -> list[Evaluation]:
        """Blocking (the sticky store may read PostgreSQL): call from a worker thread when it may."""
        snapshot = self.runtime.snapshot
        keys = list(snapshot.engine.flags) if flag_keys is None else flag_keys
        sticky = self.sticky
        if sticky is not None:
            wanted = sticky.keys_for(snapshot, keys, context)
            if wanted:
                sticky.prefetch(wanted)
            else:
                sticky = None
        results = [
            snapshot.engine.evaluate(k, context, default, expected_type=expected_type, sticky=sticky)
            for k in keys
        ]
        if sticky is not None:
            sticky.flush()
        for r in results:
            EVALUATIONS.labels(r.reason).inc()
        self._expose(results, context)
        return results

    def needs_database(self, flag_keys: list[str] | None, context: Mapping[str, Any]) -> bool:
        if self.sticky is None:
            return False
        snapshot = self.runtime.snapshot
        keys = list(snapshot.engine.flags) if flag_keys is None else flag_keys
        return bool(self.sticky.keys_for(snapshot, keys, context))

    def _expose(self, results: list[Evaluation], context: Mapping[str, Any]) -> None:
        if self.telemetry is None:
            return
        identity = context.get("user_id") or context.get("anonymous_id")
        if not identity:
            return
        for r in results:
            if not self.exposures.first(str(identity), r):
                continue
            record = exposure_record(r, context, str(identity))
            if record is not None:
                self.telemetry.fire_and_forget(record)
