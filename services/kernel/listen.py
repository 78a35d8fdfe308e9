"""PostgreSQL LISTEN/NOTIFY for every service that follows a table's changes: one reconnecting listener.

A :class:`Listener` holds its own autocommit connection (a pooled one would be handed back mid-LISTEN),
LISTENs on one channel from its own thread and calls

* ``on_notify(payloads)`` with each burst of notifications (a seed that writes a thousand rows is one
  call, not a thousand reloads), and
* ``on_resync()`` after every (re)connect — whatever changed while nobody listened — and, with
  ``resync_seconds``, that often anyway (a notification lost with a connection costs at most that long).

A lost connection is logged and retried with back-off until ``close()``; ``listening`` (a readiness
check) is set while LISTEN is in place. A callback that raises is logged; the listener goes on::

    listener = life.push(Listener(dsn, "plg_customers_changed", name="customer-changes",
                                  on_notify=lambda ids: [directory.reload(i) for i in ids if i],
                                  on_resync=directory.refresh).start(), "customer changes")
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import psycopg

from services.kernel.lifecycle import backoff_delays, wait_or_stop

log = logging.getLogger(__name__)

#: How long one wait for a notification lasts: the stop event is checked this often.
WAIT_SECONDS = 1.0


class Listener:
    """LISTEN on ``channel`` (see the module docstring)."""

    def __init__(
        self,
        dsn: str | Callable[[], str],
        channel: str,
        *,
        name: str,
        on_notify: Callable[[list[str]], object],
        on_resync: Callable[[], object] | None = None,
        resync_seconds: float | None = None,
    ) -> None:
        if not channel.replace("_", "").isalnum():
            raise ValueError(f"channel {channel!r}: letters, digits and _ only (it is an identifier)")
        self._dsn = dsn
        self.channel = channel
        self.name = name
        self._on_notify = on_notify
        self._on_resync = on_resync
        self._resync_seconds = resync_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.listening = threading.Event()

    def start(self) -> Listener:
        self._thread.start()
        return self

    def ready(self) -> bool:
        return self.listening.is_set()

    def _run(self) -> None:
        for delay in backoff_delays(0.2, 5.0):
            if self._stop.is_set():
                return
            try:
                dsn = self._dsn() if callable(self._dsn) else self._dsn
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    self._follow(conn)
            except psycopg.Error as exc:
                self.listening.clear()
                if self._stop.is_set():
                    return
                log.warning(
                    "%s lost its PostgreSQL connection; reconnecting", self.name, extra={"error": str(exc)}
                )
            if wait_or_stop(self._stop, delay):
                return

    def _follow(self, conn: psycopg.Connection[object]) -> None:
        self._call(self._on_resync)
        resynced = time.monotonic()
        while not self._stop.is_set():
            payloads = [n.payload for n in conn.notifies(timeout=WAIT_SECONDS, stop_after=1)]
            if payloads:
                payloads.extend(n.payload for n in conn.notifies(timeout=0.01))  # the rest of the burst
                self._call(partial(self._on_notify, payloads))
            elif self._resync_seconds is not None and time.monotonic() - resynced >= self._resync_seconds:
                self._call(self._on_resync)
                resynced = time.monotonic()

    def _call(self, callback: Callable[[], object] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except psycopg.Error:
            raise  # the connection is the likely culprit: reconnect
        except Exception:
            log.exception("%s: handling a change failed", self.name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_SECONDS * 5)
        self.listening.clear()
