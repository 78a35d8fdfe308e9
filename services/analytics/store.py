"""The analytics store: one ClickHouse SQL dialect, two engines.

* **chDB** (default, ``ANALYTICS_STORE=chdb``): ClickHouse's engine inside this process, its data in a
  directory (``ANALYTICS_PATH``). No server to run; one process owns the directory at a time.
* **ClickHouse server** (``ANALYTICS_STORE=clickhouse``, ``ANALYTICS_CLICKHOUSE_URL``): the same tables and
  the same queries through ``clickhouse-connect``, for volumes one process cannot hold.

Both run exactly the SQL below (the DDL and :mod:`services.analytics.queries`), with ClickHouse's own query
parameters (``{name:Type}``) — values are never formatted into SQL text.

Why the rows carry their Kafka partition and offset: the store is the sink's source of truth for where to
resume (see :class:`services.analytics.sink.AnalyticsSink`). One ``INSERT`` into a MergeTree table without a
partition key writes one part, atomically; so after a crash a batch is either wholly in the store (and its
offsets are found there) or not at all. The insert also carries a deduplication token built from the
batch's offset ranges, so a retried insert of the same batch is dropped by the engine itself.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)

DATABASE = "plg_analytics"


#: Every table of the store. ``person`` is enrichment's person id (the identity graph's survivor) and falls
#: back to the user or anonymous id; ``historical`` marks imported history (never billed, never counted by
#: entitlements: it never reaches ``usage-events``).
def ddl(database: str) -> tuple[str, ...]:
    """The statements that create the store's tables in ``database`` (idempotent)."""
    return (
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"""CREATE TABLE IF NOT EXISTS {database}.events (
        event_id String,
        customer_id LowCardinality(String),
        name LowCardinality(String),
        ts DateTime64(3, 'UTC'),
        person String,
        user_id Nullable(String),
        anonymous_id Nullable(String),
        session_id Nullable(String),
        plan LowCardinality(String),
        properties Map(String, String),
        schema_version Nullable(Int32),
        historical UInt8,
        received_at Nullable(DateTime64(3, 'UTC')),
        enriched_at DateTime64(3, 'UTC'),
        topic LowCardinality(String),
        partition UInt32,
        offset UInt64,
        inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
        -- finds an event id among a customer's rows without reading them all (the sink's dedup)
        INDEX event_id_bloom event_id TYPE bloom_filter(0.001) GRANULARITY 1
    ) ENGINE = MergeTree
    ORDER BY (customer_id, name, ts, person)
    SETTINGS non_replicated_deduplication_window = 10000""",
        # Where each (group, topic, partition) resumes when the batch's last records wrote no row (dead
        # letters, events kept out of analytics by consent): the next offset, newest version wins.
        # stores created before the index existed get it too (new parts at once, old ones as they merge)
        f"ALTER TABLE {database}.events ADD INDEX IF NOT EXISTS event_id_bloom event_id"
        " TYPE bloom_filter(0.001) GRANULARITY 1",
        # The customer's context the health score reads (enrichment's tenant record), so the batch health
        # path can rescore past days from the store (docs/analytics.md "Health score backtest").
        f"ALTER TABLE {database}.events ADD COLUMN IF NOT EXISTS billing_status LowCardinality(String)"
        " DEFAULT ''",
        f"ALTER TABLE {database}.events ADD COLUMN IF NOT EXISTS open_tickets UInt32 DEFAULT 0",
        f"""CREATE TABLE IF NOT EXISTS {database}.offsets (
        consumer_group String,
        topic String,
        partition UInt32,
        next_offset UInt64,
        written_at DateTime64(3, 'UTC') DEFAULT now64(3)
    ) ENGINE = ReplacingMergeTree(next_offset)
    ORDER BY (consumer_group, topic, partition)""",
        # Plan-limit crossings (entitlement-events: 80/90/100 % of a limit in a billing period), for the
        # product-qualified leads' "limit hits". Written by the same sink, with their Kafka position like
        # the events (each input topic lives in exactly one table, so resuming stays exact per partition).
        f"""CREATE TABLE IF NOT EXISTS {database}.limit_hits (
        event_id String,
        customer_id LowCardinality(String),
        meter LowCardinality(String),
        plan LowCardinality(String),
        threshold_percent UInt16,
        usage Decimal(38, 9),
        limit_value Decimal(38, 9),
        hard_limit UInt8,
        occurred_at DateTime64(3, 'UTC'),
        topic LowCardinality(String),
        partition UInt32,
        offset UInt64
    ) ENGINE = MergeTree
    ORDER BY (customer_id, occurred_at, meter)
    SETTINGS non_replicated_deduplication_window = 10000""",
    )


EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "customer_id",
    "name",
    "ts",
    "person",
    "user_id",
    "anonymous_id",
    "session_id",
    "plan",
    "properties",
    "schema_version",
    "historical",
    "received_at",
    "enriched_at",
    "topic",
    "partition",
    "offset",
    "billing_status",
    "open_tickets",
)


class StoreError(Exception):
    """The store refused a statement (a bug of ours, or a server that is down)."""


class Engine(Protocol):
    """What the store needs of an engine: run a statement, read rows, insert JSON rows."""

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]], token: str | None) -> None: ...

    def close(self) -> None: ...


class _Shared:
    """chDB's embedded server: one per process, on one directory at a time. Every store of the process on
    that directory shares it (tests give each store its own database instead of its own directory)."""

    def __init__(self, path: Path) -> None:
        # Imported here: a ClickHouse-server deployment never loads chDB (nor its 900 MB of wheels' code).
        chdb_session: Any = importlib.import_module("chdb.session")

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.session: Any = chdb_session.Session(str(path))
        # chDB runs one query at a time per session: the sink's inserts and the API's queries (from a
        # thread pool) take turns instead of failing.
        self.lock = threading.Lock()
        self.users = 0


_SHARED: dict[Path, _Shared] = {}
_SHARED_LOCK = threading.Lock()


class ChdbEngine:
    """ClickHouse in-process (chDB), on a directory this process owns."""

    def __init__(self, path: Path) -> None:
        key = path.resolve()
        with _SHARED_LOCK:
            shared = _SHARED.get(key)
            if shared is None:
                if _SHARED:
                    other = next(iter(_SHARED))
                    raise StoreError(
                        f"chDB already serves {other} in this process; one directory per process"
                    )
                shared = _SHARED[key] = _Shared(key)
            shared.users += 1
        self._shared = shared
        self._closed = False

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._run(sql, "Null", params)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        out = self._run(sql, "JSONEachRow", params)
        return [orjson.loads(line) for line in out.splitlines() if line]

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]], token: str | None) -> None:
        if not rows:
            return
        settings = ""
        if token is not None:
            # The token is ours (topic names and integers): no user input reaches this SQL text.
            settings = f" SETTINGS insert_deduplication_token = '{_sql_token(token)}'"
        body = b"\n".join(orjson.dumps(row) for row in rows).decode()
        self._run(f"INSERT INTO {table}{settings} FORMAT JSONEachRow\n{body}", "Null", None)

    def close(self) -> None:
        with _SHARED_LOCK:
            if self._closed:
                return
            self._closed = True
            self._shared.users -= 1
            if self._shared.users == 0:
                with self._shared.lock:
                    self._shared.session.close()
                del _SHARED[self._shared.path]

    def _run(self, sql: str, fmt: str, params: Mapping[str, Any] | None) -> str:
        with self._shared.lock:
            try:
                result = self._shared.session.query(sql, fmt, params=_param_texts(params))
            except Exception as exc:  # chDB raises its own ChdbError/RuntimeError with the engine's text
                raise StoreError(str(exc)) from exc
        return result.data() if hasattr(result, "data") else str(result)


class ClickHouseEngine:
    """A ClickHouse server through ``clickhouse-connect`` (HTTP interface)."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect  # only a server deployment needs it

        self._client = clickhouse_connect.get_client(dsn=url)

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        try:
            self._client.command(sql, parameters=dict(params or {}))
        except Exception as exc:
            raise StoreError(str(exc)) from exc

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            result = self._client.query(sql, parameters=dict(params or {}))
        except Exception as exc:
            raise StoreError(str(exc)) from exc
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]], token: str | None) -> None:
        if not rows:
            return
        body = b"\n".join(orjson.dumps(row) for row in rows)
        settings = {"insert_deduplication_token": token} if token is not None else {}
        try:
            self._client.raw_insert(table, insert_block=body, settings=settings, fmt="JSONEachRow")
        except Exception as exc:
            raise StoreError(str(exc)) from exc

    def close(self) -> None:
        self._client.close()


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"}


def _escaped(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def _param_text(value: Any) -> str:
    """A query parameter in ClickHouse's text form (what its HTTP ``param_*`` takes, and chDB too):
    strings escaped, arrays as quoted literals. chDB passes ``str(value)`` through otherwise, which breaks
    on a tab, a newline or any list."""
    if isinstance(value, str):
        return _escaped(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join("'" + _escaped(str(v)).replace("'", "\\'") + "'" for v in value) + "]"
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _param_texts(params: Mapping[str, Any] | None) -> dict[str, str]:
    return {name: _param_text(value) for name, value in (params or {}).items()}


def _sql_token(token: str) -> str:
    if not all(ch.isalnum() or ch in "-_.:,/" for ch in token):
        raise ValueError(f"deduplication token {token!r} has characters outside [A-Za-z0-9-_.:,/]")
    return token


class AnalyticsStore:
    """The tables, their writes and the sink's resume positions, over either engine."""

    def __init__(self, engine: Engine, database: str = DATABASE) -> None:
        if not database.isidentifier():
            raise ValueError(f"analytics database name {database!r} must be a plain identifier")
        self.engine = engine
        self.database = database
        self.events = f"{database}.events"
        self.offsets = f"{database}.offsets"
        self.limit_hits = f"{database}.limit_hits"

    def migrate(self) -> None:
        for statement in ddl(self.database):
            self.engine.command(statement)

    def insert_events(self, rows: Sequence[Mapping[str, Any]], token: str | None) -> None:
        self.engine.insert(self.events, rows, token)

    def insert_limit_hits(self, rows: Sequence[Mapping[str, Any]], token: str | None) -> None:
        self.engine.insert(self.limit_hits, rows, token)

    def existing_ids(self, customers: Sequence[str], ids: Sequence[str]) -> set[tuple[str, str]]:
        """Which of these ``(customer, event id)`` pairs the store already holds."""
        if not ids:
            return set()
        rows = self.engine.rows(
            f"SELECT DISTINCT customer_id, event_id FROM {self.events}"
            " WHERE customer_id IN {customers:Array(String)} AND event_id IN {ids:Array(String)}",
            {"customers": sorted(set(customers)), "ids": sorted(set(ids))},
        )
        return {(str(r["customer_id"]), str(r["event_id"])) for r in rows}

    def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        rows = [
            {"consumer_group": group, "topic": t, "partition": p, "next_offset": o}
            for (t, p), o in sorted(offsets.items())
        ]
        self.engine.insert(self.offsets, rows, None)

    def resume_offsets(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """The next offset per (topic, partition): past the newest row of each partition, or past the
        newest saved position, whichever is further."""
        found: dict[tuple[str, int], int] = {}
        for table in (self.events, self.limit_hits):
            for row in self.engine.rows(
                f"SELECT topic, partition, max(offset) + 1 AS next FROM {table} "
                "WHERE topic IN {topics:Array(String)} GROUP BY topic, partition",
                {"topics": list(topics)},
            ):
                key = (row["topic"], int(row["partition"]))
                found[key] = max(found.get(key, 0), int(row["next"]))
        for row in self.engine.rows(
            f"SELECT topic, partition, max(next_offset) AS next FROM {self.offsets} "
            "WHERE consumer_group = {group:String} AND topic IN {topics:Array(String)} "
            "GROUP BY topic, partition",
            {"group": group, "topics": list(topics)},
        ):
            key = (row["topic"], int(row["partition"]))
            found[key] = max(found.get(key, 0), int(row["next"]))
        return found

    def distinct_ids(self, customer_id: str) -> set[str]:
        """Every person, user and anonymous id the store holds for a customer (an erasure's candidates)."""
        rows = self.engine.rows(
            f"SELECT groupUniqArray(person) AS p, groupUniqArray(ifNull(user_id, '')) AS u,"
            f" groupUniqArray(ifNull(anonymous_id, '')) AS a FROM {self.events}"
            " WHERE customer_id = {customer:String}",
            {"customer": customer_id},
        )
        if not rows:
            return set()
        return {i for column in ("p", "u", "a") for i in rows[0][column] if i}

    def forget_person(self, customer_id: str, person_ids: Sequence[str], until_ms: int) -> int:
        """Erase a person's events up to the request's time (privacy erasure): a lightweight DELETE, visible
        to queries at once. Events after ``until_ms`` are the person's new history and stay — requests are
        applied again at every start."""
        params = {"customer": customer_id, "ids": list(person_ids), "until": until_ms}
        where = (
            "customer_id = {customer:String} AND (person IN {ids:Array(String)} "
            "OR user_id IN {ids:Array(String)} OR anonymous_id IN {ids:Array(String)})"
            " AND ts <= fromUnixTimestamp64Milli({until:Int64}, 'UTC')"
        )
        before = self.engine.rows(f"SELECT count() AS n FROM {self.events} WHERE {where}", params)
        self.engine.command(f"DELETE FROM {self.events} WHERE {where}", params)
        return int(before[0]["n"]) if before else 0

    def close(self) -> None:
        self.engine.close()


def open_store(kind: str, path: Path, url: str | None, database: str = DATABASE) -> AnalyticsStore:
    engine: Engine
    if kind == "clickhouse":
        if not url:
            raise ValueError("ANALYTICS_CLICKHOUSE_URL is required when ANALYTICS_STORE=clickhouse")
        engine = ClickHouseEngine(url)
    else:
        engine = ChdbEngine(path)
    store = AnalyticsStore(engine, database)
    store.migrate()
    return store
