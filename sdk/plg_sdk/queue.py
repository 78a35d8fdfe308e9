"""The disk-backed offline queue: events wait here until ingest has acknowledged them.

SQLite (standard library) in WAL mode: every ``put`` is a committed transaction, so an event that
``track()`` returned for survives the process crashing or being killed; with ``durable=True`` it also
survives power loss (``synchronous=FULL``). Events leave the queue only when ingest has answered for them.

Several processes may share one queue directory: each claims a *slot* (``slot-0``, ``slot-1``...) with an
exclusive file lock, so no two senders ever send the same rows, and a process that starts later claims a
free slot and sends whatever an earlier process left in it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import IO

log = logging.getLogger("plg_sdk")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per queue directory
    fcntl = None  # type: ignore[assignment]

MAX_SLOTS = 64
DROP_NEWEST = "drop_newest"
DROP_OLDEST = "drop_oldest"


class QueueError(RuntimeError):
    pass


class DiskQueue:
    """A bounded FIFO of serialised events. Thread-safe; one instance per slot per process."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_events: int = 100_000,
        on_full: str = DROP_NEWEST,
        durable: bool = False,
    ) -> None:
        if on_full not in (DROP_NEWEST, DROP_OLDEST):
            raise ValueError(f"on_full must be {DROP_NEWEST!r} or {DROP_OLDEST!r}")
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.directory = Path(directory)
        self.max_events = max_events
        self.on_full = on_full
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.slot_dir, self._lock_file = self._claim_slot()
        self._db = self._open(self.slot_dir / "queue.sqlite", durable)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events"
            " (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, body BLOB NOT NULL)"
        )
        self._count: int = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
        self._state = self._open(self.directory / "state.sqlite", durable)
        self._state.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT)")

    @staticmethod
    def _open(path: Path, durable: bool) -> sqlite3.Connection:
        # isolation_level=None: autocommit, each statement is its own transaction unless we BEGIN.
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        return db

    def _claim_slot(self) -> tuple[Path, IO[bytes] | None]:
        if fcntl is None:
            slot = self.directory / "slot-0"
            slot.mkdir(exist_ok=True)
            return slot, None
        for n in range(MAX_SLOTS):
            slot = self.directory / f"slot-{n}"
            slot.mkdir(exist_ok=True)
            handle = open(slot / "lock", "ab")  # noqa: SIM115 - held open for the queue's lifetime
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            return slot, handle
        raise QueueError(f"all {MAX_SLOTS} queue slots in {self.directory} are in use by other processes")

    def __len__(self) -> int:
        return self._count

    def put(self, event_id: str, body: bytes) -> int:
        """Append one event; returns how many events the full-queue policy dropped (0 or 1): with
        ``drop_newest`` the event given, with ``drop_oldest`` the oldest queued one."""
        with self._lock:
            if self._count >= self.max_events:
                if self.on_full == DROP_NEWEST:
                    return 1
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    excess = self._count - self.max_events + 1
                    self._db.execute(
                        "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                        (excess,),
                    )
                    self._db.execute("INSERT INTO events (event_id, body) VALUES (?, ?)", (event_id, body))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._count = self.max_events
                return 1
            self._db.execute("INSERT INTO events (event_id, body) VALUES (?, ?)", (event_id, body))
            self._count += 1
            return 0

    def peek(self, limit: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """The oldest events, at most ``limit`` of them and ``max_bytes`` in total (at least one)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, body FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()
        out: list[tuple[int, bytes]] = []
        total = 0
        for seq, body in rows:
            total += len(body) + 1
            if out and total > max_bytes:
                break
            out.append((seq, bytes(body)))
        return out

    def delete(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            cur = self._db.execute(f"DELETE FROM events WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
            self._count -= cur.rowcount

    def get_state(self, key: str) -> str | None:
        with self._lock:
            row = self._state.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str | None) -> None:
        with self._lock:
            self._state.execute(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._state.close()
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock
                self._lock_file = None
