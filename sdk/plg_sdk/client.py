"""The plg client: ``track`` and ``identify`` calls become queued events that a background thread sends
to ingest in gzip'd batches, retrying with exponential backoff and jitter until ingest has answered.

Every event gets its ``event_id`` (a UUIDv7) when it is tracked, and that id is stored with it in the disk
queue, so however often a batch is retried — across network failures, 503s, or a restart of the process —
ingest sees the same ids and downstream dedup keeps one copy.
"""

from __future__ import annotations

import atexit
import gzip as gzip_module
import hashlib
import http.client
import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from plg_sdk._uuid7 import uuid7
from plg_sdk.queue import DROP_NEWEST, DiskQueue

log = logging.getLogger("plg_sdk")

__version__ = "0.1.0"
USER_AGENT = f"plg-sdk-python/{__version__}"

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 500
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

Scalar = None | bool | int | float | str

# Answers after which the same batch is tried again later. 401/403/404 mean a misconfigured key or URL
# that an operator will fix: keeping the events (bounded by the queue size) loses nothing meanwhile.
_RETRY_STATUSES = frozenset({401, 403, 404, 408, 409, 425, 429})


@dataclass(frozen=True)
class Stats:
    """Counters since the client started (a snapshot)."""

    queued: int = 0  # events accepted by track()/identify() into the queue
    sent: int = 0  # events ingest accepted
    rejected: int = 0  # events ingest refused for good (per-event codes or a 4xx for the batch): logged
    dropped_queue_full: int = 0  # events dropped because the queue was full: logged
    requests: int = 0
    retries: int = 0  # failed attempts that will be retried
    last_error: str | None = None


class Client:
    """Send events to plg ingest. Thread-safe; create one per process and reuse it.

    ``queue_dir`` holds the offline queue (default: ``$PLG_SDK_QUEUE_DIR`` or
    ``~/.cache/plg-sdk/<host+key id hash>``). Events still queued when the process ends are sent by the next
    client that opens the same directory.
    """

    def __init__(
        self,
        api_key: str,
        host: str = "http://127.0.0.1:8080",
        *,
        queue_dir: str | os.PathLike[str] | None = None,
        flush_at: int = 100,
        flush_interval: float = 1.0,
        max_queue_events: int = 100_000,
        on_full: str = DROP_NEWEST,
        durable: bool = False,
        gzip: bool = True,
        timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        shutdown_timeout: float = 5.0,
        max_batch_bytes: int = 450 * 1024,
        register_atexit: bool = True,
        plan: Mapping[str, Any] | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        if not 1 <= flush_at <= MAX_BATCH_EVENTS:
            raise ValueError(f"flush_at must be between 1 and {MAX_BATCH_EVENTS}")
        self._api_key = api_key
        self._url = urllib.parse.urlsplit(host.rstrip("/"))
        if self._url.scheme not in ("http", "https") or not self._url.hostname:
            raise ValueError(f"host must be an http(s) URL, got {host!r}")
        self._flush_at = flush_at
        self._flush_interval = flush_interval
        self._gzip = gzip
        self._timeout = timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._shutdown_timeout = shutdown_timeout
        self._max_batch_bytes = max_batch_bytes
        self._batch_limit = flush_at  # shrinks after a 413, grows back after successes
        # The tracking plan's versions (``TRACKING_PLAN`` of ``plg plan codegen --lang python``): each event
        # the plan lists is sent with its version, so enrichment maps its properties by that version's names
        # rather than assuming a default (an event without one is marked ``schema_version_missing``).
        self._version_property, self._versions = _plan_versions(plan)

        self._queue = DiskQueue(
            queue_dir or _default_queue_dir(host, api_key),
            max_events=max_queue_events,
            on_full=on_full,
            durable=durable,
        )
        self._anonymous_id = self._queue.get_state("anonymous_id")
        if self._anonymous_id is None:
            self._anonymous_id = str(uuid7())
            self._queue.set_state("anonymous_id", self._anonymous_id)
        self._user_id = self._queue.get_state("user_id")
        # Purposes the person agreed to or refused, sent with every later event (docs/ingest.md).
        self._consent: dict[str, bool] | None = None

        self._stats = Stats()
        self._stats_lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._sending = False
        self._closed = False
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="plg-sdk-sender", daemon=True)
        self._thread.start()
        self._atexit = register_atexit
        if register_atexit:
            atexit.register(self.close)
        if len(self._queue):
            log.info(
                "plg: %d event(s) left from an earlier run are queued in %s",
                len(self._queue),
                self._queue.slot_dir,
            )
            self._wake.set()

    # ------------------------------------------------------------------------------------------ public API

    @property
    def anonymous_id(self) -> str:
        assert self._anonymous_id is not None
        return self._anonymous_id

    @property
    def user_id(self) -> str | None:
        return self._user_id

    @property
    def queue_dir(self) -> Path:
        return self._queue.slot_dir

    @property
    def stats(self) -> Stats:
        with self._stats_lock:
            return self._stats

    def pending(self) -> int:
        """Events queued and not yet answered by ingest."""
        return len(self._queue)

    def set_consent(self, consent: Mapping[str, bool] | None) -> None:
        """The person's consent, sent with every later event: ``{"analytics": False}`` keeps the events
        metered but out of enrichment, health scores and analytics; None stops sending it (not stated)."""
        self._consent = _check_consent(consent)

    def track(
        self,
        name: str,
        properties: Mapping[str, Scalar] | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        session_id: str | None = None,
        timestamp: datetime | int | None = None,
        event_id: str | None = None,
        consent: Mapping[str, bool] | None = None,
    ) -> str:
        """Queue one event and return its ``event_id``. Raises ``ValueError``/``TypeError`` at once for an
        event ingest would refuse (bad name, nested or non-finite properties, over 32 KB)."""
        if not isinstance(name, str) or not name or name != name.strip() or name.startswith("$"):
            raise ValueError(
                "name must be a non-empty string without surrounding spaces, not starting with '$'"
            )
        event = {
            "event_id": event_id or str(uuid7()),
            "name": name,
            "timestamp": _millis(timestamp),
            "properties": self._stamp(name, _check_properties(properties)),
            "user_id": user_id if user_id is not None else self._user_id,
            "anonymous_id": anonymous_id if anonymous_id is not None else self._anonymous_id,
        }
        if session_id is not None:
            event["session_id"] = session_id
        self._add_consent(event, consent)
        return self._enqueue(event)

    def identify(
        self,
        user_id: str,
        traits: Mapping[str, Scalar] | None = None,
        *,
        anonymous_id: str | None = None,
        timestamp: datetime | int | None = None,
        consent: Mapping[str, bool] | None = None,
    ) -> str:
        """Link the current (or given) anonymous id to ``user_id``. Later events of this client carry the
        user id; the link is remembered in the queue directory across restarts."""
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        anon = anonymous_id or self.anonymous_id
        event = {
            "event_id": str(uuid7()),
            "type": "identify",
            "timestamp": _millis(timestamp),
            "properties": self._stamp("$identify", _check_properties(traits)),
            "user_id": user_id,
            "anonymous_id": anon,
        }
        self._add_consent(event, consent)
        event_id = self._enqueue(event)
        if anonymous_id is None:
            self._user_id = user_id
            self._queue.set_state("user_id", user_id)
        return event_id

    def reset(self) -> None:
        """Forget the user (e.g. on log-out): a new anonymous id, no user id."""
        self._anonymous_id = str(uuid7())
        self._user_id = None
        self._queue.set_state("anonymous_id", self._anonymous_id)
        self._queue.set_state("user_id", None)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now; True when the queue is empty, False on timeout (events stay queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while len(self._queue) or self._sending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.set()
                self._idle.wait(timeout=min(remaining, 0.5) if remaining is not None else 0.5)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to ``timeout`` (default ``shutdown_timeout``) seconds, then stop. Whatever is still
        queued stays on disk for the next client. Called automatically at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        if self._atexit:
            atexit.unregister(self.close)
        self._deadline = time.monotonic() + (self._shutdown_timeout if timeout is None else timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + 1.0)
        if self._conn is not None:
            self._conn.close()
        if len(self._queue):
            log.warning(
                "plg: %d event(s) not yet delivered stay queued in %s", len(self._queue), self._queue.slot_dir
            )
        if not self._thread.is_alive():
            self._queue.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ internals

    def _add_consent(self, event: dict[str, Any], consent: Mapping[str, bool] | None) -> None:
        chosen = _check_consent(consent) if consent is not None else self._consent
        if chosen is not None:
            event["consent"] = chosen

    def _count(self, **delta: Any) -> None:
        with self._stats_lock:
            values = {k: getattr(self._stats, k) + v if k != "last_error" else v for k, v in delta.items()}
            self._stats = replace(self._stats, **values)

    def _stamp(self, name: str, properties: dict[str, Scalar]) -> dict[str, Scalar]:
        """``properties`` with the event's plan version, unless the plan lacks the event or the caller sent
        a version of its own (an app still sending an older shape says so)."""
        version = self._versions.get(name)
        if version is not None and properties.get(self._version_property) is None:
            properties[self._version_property] = version
        return properties

    def _enqueue(self, event: dict[str, Any]) -> str:
        if self._closed:
            raise RuntimeError("the client is closed")
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        if len(body) > MAX_EVENT_BYTES:
            raise ValueError(f"the event is {len(body)} bytes; ingest accepts at most {MAX_EVENT_BYTES}")
        dropped = self._queue.put(event["event_id"], body)
        if dropped:
            self._count(dropped_queue_full=1)
            n = self.stats.dropped_queue_full
            if n == 1 or n % 1000 == 0:
                log.warning(
                    "plg: offline queue full (%d events, policy %s): %d event(s) dropped so far",
                    self._queue.max_events,
                    self._queue.on_full,
                    n,
                )
        if not dropped or self._queue.on_full != DROP_NEWEST:
            self._count(queued=1)
        if len(self._queue) >= self._flush_at:
            self._wake.set()
        return str(event["event_id"])

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=self._flush_interval)
            self._wake.clear()
            self._drain()
            if self._stop.is_set() and (not len(self._queue) or self._past_deadline()):
                return

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _drain(self) -> None:
        """Send batches until the queue is empty, or a failure asks us to wait (then return to the loop)."""
        attempt = 0
        while True:
            batch = self._queue.peek(self._batch_limit, self._max_batch_bytes)
            if not batch:
                break
            with self._idle:
                self._sending = True
            try:
                delay = self._send(batch, attempt)
            finally:
                with self._idle:
                    self._sending = False
                    self._idle.notify_all()
            if delay is None:
                attempt = 0
                continue
            attempt += 1
            if self._stop.is_set():
                if self._past_deadline():
                    return
                delay = min(delay, max(0.0, self._deadline - time.monotonic()))  # type: ignore[operator]
            if self._wait(delay):
                return
        with self._idle:
            self._idle.notify_all()

    def _wait(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if the client is closing and its deadline has passed meanwhile."""
        end = time.monotonic() + delay
        # Wait on the stop event, not time.sleep, so close() is noticed at once...
        if not self._stop.wait(delay):
            return False
        # ...but closing does not cut a Retry-After short: wait the rest, up to close()'s deadline.
        assert self._deadline is not None
        time.sleep(max(0.0, min(end, self._deadline) - time.monotonic()))
        return self._past_deadline()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        # Full jitter (AWS architecture blog): spreads the retries of many clients after an outage.
        delay = random.uniform(0, min(self._backoff_max, self._backoff_base * (2 ** min(attempt, 30))))
        if retry_after is not None:
            delay = max(delay, retry_after + random.uniform(0, min(1.0, retry_after * 0.1)))
        return delay

    def _send(self, batch: list[tuple[int, bytes]], attempt: int) -> float | None:
        """POST one batch; None when it is settled (accepted or refused for good), else seconds to wait."""
        body = b'{"batch":[' + b",".join(b for _, b in batch) + b"]}"
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self._gzip:
            body = gzip_module.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        self._count(requests=1)
        try:
            status, retry_after, payload = self._post("/v1/batch", body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self._count(retries=1, last_error=f"{type(exc).__name__}: {exc}")
            log.warning("plg: ingest unreachable (%s); %d event(s) stay queued", exc, len(self._queue))
            return self._backoff(attempt, None)
        seqs = [seq for seq, _ in batch]
        if status == 202:
            self._settle(seqs, payload)
            if self._batch_limit < self._flush_at:
                self._batch_limit = min(self._flush_at, self._batch_limit * 2)
            return None
        message = _error_message(payload)
        if status == 413 and len(batch) > 1:
            self._batch_limit = max(1, len(batch) // 2)
            log.info(
                "plg: ingest refused a batch of %d as too large (%s); sending smaller batches",
                len(batch),
                message,
            )
            return 0.0
        if status in _RETRY_STATUSES or status >= 500:
            self._count(retries=1, last_error=f"HTTP {status}: {message}")
            log.warning("plg: ingest answered %d (%s); will retry %d event(s)", status, message, len(batch))
            return self._backoff(attempt, retry_after)
        self._queue.delete(seqs)
        self._count(rejected=len(seqs), last_error=f"HTTP {status}: {message}")
        log.error(
            "plg: ingest refused a batch of %d event(s) with %d (%s); they are dropped",
            len(seqs),
            status,
            message,
        )
        return None

    def _settle(self, seqs: list[int], payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            results = doc["results"]
        except (ValueError, KeyError, TypeError):
            results = []
        rejected = [r for r in results if isinstance(r, dict) and r.get("status") == "rejected"]
        for r in rejected[:5]:
            log.error(
                "plg: ingest rejected event %s: %s (%s)", r.get("event_id"), r.get("code"), r.get("message")
            )
        if len(rejected) > 5:
            log.error("plg: ... and %d more rejected event(s) in that batch", len(rejected) - 5)
        self._queue.delete(seqs)
        self._count(sent=len(seqs) - len(rejected), rejected=len(rejected))

    def _post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, float | None, bytes]:
        conn = self._conn
        if conn is None:
            cls = http.client.HTTPSConnection if self._url.scheme == "https" else http.client.HTTPConnection
            conn = self._conn = cls(self._url.hostname or "", self._url.port, timeout=self._timeout)
        try:
            conn.request("POST", self._url.path + path, body=body, headers=dict(headers))
            response = conn.getresponse()
            payload = response.read()
        except BaseException:
            conn.close()
            self._conn = None
            raise
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            self._conn = None
        return response.status, _retry_after(response.getheader("Retry-After")), payload


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form: ingest never sends it; fall back to our own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_message(payload: bytes) -> str:
    try:
        doc = json.loads(payload)
        return f"{doc.get('code')}: {doc.get('message')}"
    except (ValueError, AttributeError):
        return payload[:200].decode(errors="replace")


def _millis(ts: datetime | int | None) -> int:
    if ts is None:
        return time.time_ns() // 1_000_000
    if isinstance(ts, datetime):
        return math.floor(ts.timestamp() * 1000)
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    raise TypeError("timestamp must be a datetime or epoch milliseconds (int)")


def _plan_versions(plan: Mapping[str, Any] | None) -> tuple[str, dict[str, int]]:
    """(version property, event -> version) of a generated ``TRACKING_PLAN``; nothing stamped without one."""
    if plan is None:
        return "schema_version", {}
    prop, events = plan.get("version_property"), plan.get("events")
    if not isinstance(prop, str) or not prop or not isinstance(events, Mapping):
        raise ValueError(
            "plan must be the TRACKING_PLAN of `plg plan codegen --lang python`: "
            "{'version': N, 'version_property': 'schema_version', 'events': {name: version}}"
        )
    versions: dict[str, int] = {}
    for name, version in events.items():
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"plan: events[{name!r}] must be a version number >= 1, got {version!r}")
        versions[str(name)] = version
    return prop, versions


def _check_properties(properties: Mapping[str, Scalar] | None) -> dict[str, Scalar]:
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise TypeError("properties must be a mapping")
    out: dict[str, Scalar] = {}
    for key, value in properties.items():
        if not isinstance(key, str) or not key or key.startswith("$"):
            raise ValueError(f"property key {key!r} must be a non-empty string not starting with '$'")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"property {key!r} is {value}; only finite numbers can be sent")
        if isinstance(value, int) and not isinstance(value, bool) and not _LONG_MIN <= value <= _LONG_MAX:
            raise ValueError(f"property {key!r} does not fit a 64-bit integer; send it as a string")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise TypeError(
                f"property {key!r} is a {type(value).__name__}; values must be flat "
                "(None, bool, int, float, str)"
            )
        out[key] = value
    return out


def _default_queue_dir(host: str, api_key: str) -> Path:
    base = os.environ.get("PLG_SDK_QUEUE_DIR")
    if base:
        return Path(base)
    key_id = (
        api_key.split("_", 2)[1] if api_key.count("_") >= 2 else hashlib.sha256(api_key.encode()).hexdigest()
    )
    digest = hashlib.sha256(f"{host}|{key_id}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "plg-sdk" / digest


_PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _check_consent(consent: Mapping[str, bool] | None) -> dict[str, bool] | None:
    """Refuses at once what ingest would refuse: purposes are lower-case names, values booleans, <= 16."""
    if consent is None:
        return None
    if not isinstance(consent, Mapping) or len(consent) > 16:
        raise TypeError("consent must be a mapping of at most 16 purposes to booleans")
    for purpose, granted in consent.items():
        if not isinstance(purpose, str) or _PURPOSE.fullmatch(purpose) is None:
            raise ValueError(f"consent purpose {purpose!r} must be a lower-case name (a-z, 0-9, _)")
        if not isinstance(granted, bool):
            raise TypeError(f"consent {purpose!r} must be True or False")
    return dict(consent)
