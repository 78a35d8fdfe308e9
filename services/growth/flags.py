"""The flags at run time: the current snapshot (reloaded on every change), its SSE subscribers,
server-side evaluation with exposures and sticky assignments."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from plg_sdk.flags import ERROR, SPLIT, Evaluation
from psycopg_pool import ConnectionPool

from services.growth.flagstore import FlagStore, Snapshot
from services.growth.telemetry import TelemetryWriter, stable_event_id, usage_event
from services.kernel import metrics
from services.kernel.caches import BoundedCache
from services.kernel.lifecycle import wait_or_stop
from services.kernel.sse import event as sse_event

log = logging.getLogger(__name__)

EVALUATIONS = metrics.counter(
    "plg_growth_flag_evaluations", "Server-side flag evaluations, by reason.", ("reason",)
)
SUBSCRIBERS = metrics.gauge("plg_growth_sse_subscribers", "Open SSE streams, by stream.", ("stream",))
RELOADS = metrics.counter("plg_growth_flag_reloads", "Flag snapshots loaded (a change or a poll).")
REVISION = metrics.gauge("plg_growth_flags_revision", "Revision (last change id) of the flags served.")

EXPOSURES_REMEMBERED = metrics.gauge(
    "plg_growth_exposure_log_entries",
    "(identity, flag, version, variant) exposures remembered as sent (bounded by GROWTH_EXPOSURE_MEMORY).",
)
STICKY_CACHED = metrics.gauge(
    "plg_growth_sticky_cache_entries",
    "Sticky assignments cached in memory (bounded by GROWTH_STICKY_CACHE_SIZE; the table holds them all).",
)
STICKY_PRUNED = metrics.counter(
    "plg_growth_sticky_assignments_pruned",
    "Sticky assignment rows deleted after GROWTH_STICKY_RETENTION_DAYS unused.",
)

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
    same flag on every request sends one exposure, not thousands (bounded LRU, per process: one evicted
    and seen again is reported again, which analytics counts once per identity anyway)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: BoundedCache[tuple[str, str, int | None, str | None], bool] = BoundedCache(
            max(0, capacity), gauge=EXPOSURES_REMEMBERED
        )

    def first(self, identity: str, result: Evaluation) -> bool:
        if self.capacity <= 0:
            return True
        return self._seen.add((identity, result.flag_key, result.version, result.variant), True)

    def forget(self, matches: Callable[[str], bool]) -> int:
        """Drop the exposures remembered for identities that ``matches`` (an erasure)."""
        return self._seen.discard_where(lambda key: matches(key[0]))

    def __len__(self) -> int:
        return len(self._seen)


class StickyAssignments:
    """Server-side sticky store: an LRU in memory in front of ``growth_sticky_assignments``, one namespace
    per customer (two customers' users with the same id never share, or steer, an assignment). The engine
    reads and writes a customer's :meth:`view` synchronously, so the keys a request may need are fetched
    first (:meth:`prefetch`) and the new ones written after (:meth:`flush`), off the event loop.

    Bounded (issue 14): the memory by ``capacity``; the table by ``retention_days``: a row unused that long
    is deleted by :meth:`prune` (the growth service runs it every ``prune_interval`` seconds), and a row in
    use has its ``last_used_at`` moved forward at most once per ``touch_interval``, so an active person
    keeps their variant. Rows are written only for the evaluation's customer, which growth has bound to the
    caller's key or checked to exist (``_bind_customer``): without a customer nothing is stored. Rows of
    before the customer column (``customer_id = ''``) are still read, after the customer's own.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        capacity: int,
        *,
        retention_days: int = 90,
        touch_interval: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.capacity = capacity
        self.retention_days = retention_days
        self.touch_interval = touch_interval
        self._clock = clock
        # (customer, key) -> (variant, when the row's last_used_at was last known to be set, epoch s)
        self._cache: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._new: dict[tuple[str, str], str] = {}
        self._touch: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def view(self, customer_id: str | None) -> CustomerSticky:
        """What the engine reads and writes for one evaluation; ``None``: read-only (nothing is stored)."""
        return CustomerSticky(self, customer_id)

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

    def prefetch(self, customer_id: str | None, keys: list[str]) -> None:
        owner = customer_id or ""
        with self._lock:
            missing = [k for k in keys if (owner, k) not in self._cache]
        if not missing:
            return
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT customer_id, sticky_key, variant, extract(epoch FROM last_used_at)::float8"
                " FROM growth_sticky_assignments WHERE sticky_key = ANY(%s) AND customer_id IN (%s, '')"
                " ORDER BY customer_id = '' DESC",  # legacy rows first, so the customer's own win
                (missing, owner),
            ).fetchall()
        own = {k for c, k, _, _ in rows if c == owner}
        with self._lock:
            for row_customer, k, v, used in rows:
                self._put((owner, k), v, used)
                if row_customer == owner:
                    self._touch_if_due((owner, k))
                elif owner and k not in own:
                    self._new[(owner, k)] = v  # a row of before customers: kept as the customer's own

    def flush(self) -> None:
        with self._lock:
            new, self._new = self._new, {}
            touch, self._touch = self._touch, set()
        if not new and not touch:
            return
        with self.pool.connection() as conn:
            if new:
                conn.cursor().executemany(
                    "INSERT INTO growth_sticky_assignments (customer_id, sticky_key, variant)"
                    " VALUES (%s, %s, %s) ON CONFLICT (customer_id, sticky_key) DO NOTHING",
                    [(c, k, v) for (c, k), v in new.items()],
                )
            if touch:
                conn.execute(
                    "UPDATE growth_sticky_assignments s SET last_used_at = now()"
                    " FROM unnest(%s::text[], %s::text[]) AS t(c, k)"
                    " WHERE s.customer_id = t.c AND s.sticky_key = t.k",
                    ([c for c, _ in touch], [k for _, k in touch]),
                )

    def prune(self) -> int:
        """Delete the rows unused for ``retention_days``, in batches; returns how many."""
        deleted = 0
        while True:
            with self.pool.connection() as conn:
                n = conn.execute(
                    "DELETE FROM growth_sticky_assignments WHERE ctid = ANY(ARRAY(SELECT ctid"
                    " FROM growth_sticky_assignments WHERE last_used_at < now() - make_interval(days => %s)"
                    " LIMIT 10000))",
                    (self.retention_days,),
                ).rowcount
            deleted += n
            if n < 10_000:
                break
        if deleted:
            STICKY_PRUNED.inc(deleted)
            log.info("pruned unused sticky assignments", extra={"rows": deleted, "days": self.retention_days})
        return deleted

    def run_pruning(self, stop: threading.Event, interval: float) -> None:
        """:meth:`prune` now and every ``interval`` seconds until ``stop`` (a worker thread's target); a
        failure (PostgreSQL down) is logged and tried again next time."""
        while True:
            try:
                self.prune()
            except Exception as exc:
                log.warning("could not prune sticky assignments", extra={"error": str(exc)})
            if wait_or_stop(stop, interval):
                return

    def _put(self, key: tuple[str, str], value: str, used: float) -> None:
        self._cache[key] = (value, used)
        self._cache.move_to_end(key)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        STICKY_CACHED.set(len(self._cache))

    def _touch_if_due(self, key: tuple[str, str]) -> None:
        """Under the lock: queue a ``last_used_at`` update when the row's is older than the interval."""
        value, used = self._cache[key]
        now = self._clock()
        if now - used >= self.touch_interval:
            self._touch.add(key)
            self._cache[key] = (value, now)

    def forget(self, matches: Callable[[str], bool]) -> int:
        """Drop cached (and not yet written) assignments whose stickiness value ``matches`` — an erasure;
        the CLI deletes the rows (docs/privacy.md)."""
        with self._lock:
            doomed = [k for k in {*self._cache, *self._new} if matches(k[1].split("|", 2)[-1])]
            for key in doomed:
                self._cache.pop(key, None)
                self._new.pop(key, None)
                self._touch.discard(key)
            STICKY_CACHED.set(len(self._cache))
        return len(doomed)

    def __len__(self) -> int:
        return len(self._cache)


class CustomerSticky(MutableMapping[str, str]):
    """One customer's sticky assignments, as the engine reads and writes them (engine keys
    ``<salt>|<attribute>|<value>``). A view without a customer stores nothing."""

    def __init__(self, store: StickyAssignments, customer_id: str | None) -> None:
        self._store = store
        self._customer = customer_id

    def __getitem__(self, key: str) -> str:
        store = self._store
        with store._lock:
            full = (self._customer or "", key)
            value = store._cache[full][0]
            if self._customer:
                store._touch_if_due(full)
            return value

    def __setitem__(self, key: str, value: str) -> None:
        store = self._store
        full = (self._customer or "", key)
        with store._lock:
            cached = store._cache.get(full)
            if self._customer and (cached is None or cached[0] != value):
                store._new[full] = value
            store._put(full, value, store._clock())

    def __delitem__(self, key: str) -> None:
        with self._store._lock:
            del self._store._cache[(self._customer or "", key)]
            STICKY_CACHED.set(len(self._store._cache))

    def __iter__(self) -> Iterator[str]:
        owner = self._customer or ""
        return iter([k for c, k in list(self._store._cache) if c == owner])

    def __len__(self) -> int:
        return sum(1 for _ in self)


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
        store, sticky = self.sticky, None
        if store is not None:
            wanted = store.keys_for(snapshot, keys, context)
            if wanted:
                # The context's customer is the caller's (bound by the route) or one checked to exist.
                customer = context.get("customer_id")
                customer = customer if isinstance(customer, str) and customer else None
                store.prefetch(customer, wanted)
                sticky = store.view(customer)
        results = [
            snapshot.engine.evaluate(k, context, default, expected_type=expected_type, sticky=sticky)
            for k in keys
        ]
        if store is not None and sticky is not None:
            store.flush()
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
