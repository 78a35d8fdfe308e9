"""PostgreSQL storage of the schema registry (tables from ``0010_schema_registry.sql``).

Plain SQL over a psycopg connection; :class:`Tx` is one transaction. Writers to a subject take
``pg_advisory_xact_lock`` on the subject first, so registrations and deletes of one subject are
serialised across every registry instance on the same database, and the primary keys and unique
constraints stay the safety net.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from services.schema_registry.model import Compatibility, Lookup, Mode, VersionRow

GLOBAL_SCOPE = ""  # the sr_config / sr_mode row of the registry as a whole
# Namespace of the advisory-lock keys, so the registry's locks never collide with another service's.
_LOCK_PREFIX = "plg.schema_registry.subject:"


@dataclass(frozen=True)
class StoredSchema:
    """A row of ``sr_schemas``: immutable once written."""

    id: int
    guid: str
    schema_type: str
    schema_text: str
    canonical: str
    # [{"name", "subject", "version", "id"}]: "id" is the schema the reference resolved to.
    references: tuple[dict[str, Any], ...]
    metadata: dict[str, Any] | None
    rule_set: dict[str, Any] | None
    fingerprint: str


_SCHEMA_COLUMNS = "id, guid::text, schema_type, schema_text, canonical, refs, metadata, rule_set, fingerprint"
_SCHEMA_COLUMNS_OF_S = ", ".join("s." + c for c in _SCHEMA_COLUMNS.split(", "))


def _schema(row: tuple[Any, ...]) -> StoredSchema:
    return StoredSchema(
        id=row[0],
        guid=row[1],
        schema_type=row[2],
        schema_text=row[3],
        canonical=row[4],
        references=tuple(row[5] or ()),
        metadata=row[6],
        rule_set=row[7],
        fingerprint=row[8],
    )


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


class Tx:
    """One transaction's worth of registry queries."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    # -- locking -------------------------------------------------------------------------------------------

    def lock_subject(self, subject: str) -> None:
        """Serialise writers of one subject across instances until this transaction ends."""
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK_PREFIX + subject,))

    # -- schemas -------------------------------------------------------------------------------------------

    def schema_by_id(self, schema_id: int) -> StoredSchema | None:
        row = self.conn.execute(
            f"SELECT {_SCHEMA_COLUMNS} FROM sr_schemas WHERE id = %s", (schema_id,)
        ).fetchone()
        return _schema(row) if row else None

    def schema_by_guid(self, guid: str) -> StoredSchema | None:
        row = self.conn.execute(
            f"SELECT {_SCHEMA_COLUMNS} FROM sr_schemas WHERE guid = %s", (guid,)
        ).fetchone()
        return _schema(row) if row else None

    def schema_id_by_fingerprint(self, fingerprint: str) -> int | None:
        row = self.conn.execute("SELECT id FROM sr_schemas WHERE fingerprint = %s", (fingerprint,)).fetchone()
        return int(row[0]) if row else None

    def insert_schema(
        self,
        *,
        fingerprint: str,
        schema_type: str,
        schema_text: str,
        canonical: str,
        references: Sequence[dict[str, Any]],
        metadata: dict[str, Any] | None,
        rule_set: dict[str, Any] | None,
        schema_id: int | None = None,
    ) -> int:
        """Insert a schema (or find the one another instance inserted concurrently); returns its id.

        ``schema_id`` is only given in IMPORT mode; the identity sequence is then moved past it so later
        automatic ids never collide with imported ones.
        """
        columns = "fingerprint, schema_type, schema_text, canonical, refs, metadata, rule_set"
        values: list[Any] = [
            fingerprint,
            schema_type,
            schema_text,
            canonical,
            Jsonb(list(references)),
            _jsonb(metadata),
            _jsonb(rule_set),
        ]
        if schema_id is not None:
            columns = "id, " + columns
            values.insert(0, schema_id)
        placeholders = ", ".join(["%s"] * len(values))
        row = self.conn.execute(
            f"INSERT INTO sr_schemas ({columns}) VALUES ({placeholders}) "
            "ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
            values,
        ).fetchone()
        if schema_id is not None:
            self.conn.execute(
                "SELECT setval(pg_get_serial_sequence('sr_schemas', 'id'),"
                " GREATEST((SELECT max(id) FROM sr_schemas),"
                " (SELECT last_value FROM sr_schemas_id_seq)))"
            )
        if row is not None:
            return int(row[0])
        existing = self.schema_id_by_fingerprint(fingerprint)
        if (
            existing is None
        ):  # pragma: no cover - the conflicting row cannot vanish: schemas are never deleted
            raise RuntimeError("schema row vanished during insert")
        return existing

    def list_schemas(
        self, subject_prefix: str, lookup: Lookup, latest_only: bool
    ) -> list[tuple[str, int, StoredSchema]]:
        rows = self.conn.execute(
            f"SELECT v.subject, v.version, v.deleted, {_SCHEMA_COLUMNS_OF_S}"
            " FROM sr_subject_versions v JOIN sr_schemas s ON s.id = v.schema_id"
            " WHERE v.subject LIKE %s ESCAPE '\\' ORDER BY v.subject, v.version",
            (_like_prefix(subject_prefix),),
        ).fetchall()
        out: list[tuple[str, int, StoredSchema]] = []
        for row in rows:
            if lookup.admits(VersionRow(row[1], row[3], row[2])):
                out.append((row[0], row[1], _schema(row[3:])))
        if latest_only:
            latest: dict[str, tuple[str, int, StoredSchema]] = {}
            for item in out:
                latest[item[0]] = item
            out = list(latest.values())
        return out

    def max_schema_id(self) -> int:
        row = self.conn.execute("SELECT coalesce(max(id), 0) FROM sr_schemas").fetchone()
        return int(row[0]) if row else 0

    def referencing_schema_ids(self, subject: str, version: int, lookup: Lookup = Lookup.ALL) -> list[int]:
        """Ids of schemas whose references point at ``subject`` ``version`` and that are still registered
        under some subject version the ``lookup`` admits (live only, or live and soft-deleted)."""
        deleted_filter = "" if lookup is Lookup.ALL else " AND NOT v.deleted"
        rows = self.conn.execute(
            "SELECT s.id FROM sr_schemas s WHERE s.refs @> %s AND EXISTS ("
            f"SELECT 1 FROM sr_subject_versions v WHERE v.schema_id = s.id{deleted_filter}) ORDER BY s.id",
            (Jsonb([{"subject": subject, "version": version}]),),
        ).fetchall()
        return [int(r[0]) for r in rows]

    # -- subjects and versions -----------------------------------------------------------------------------

    def versions(self, subject: str) -> list[VersionRow]:
        rows = self.conn.execute(
            "SELECT version, schema_id, deleted FROM sr_subject_versions WHERE subject = %s ORDER BY version",
            (subject,),
        ).fetchall()
        return [VersionRow(int(r[0]), int(r[1]), bool(r[2])) for r in rows]

    def subject_exists(self, subject: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM sr_subjects WHERE subject = %s", (subject,)).fetchone()
            is not None
        )

    def subjects(self, lookup: Lookup, subject_prefix: str = "") -> list[str]:
        condition = {Lookup.LIVE: "NOT v.deleted", Lookup.ALL: "true", Lookup.DELETED_ONLY: "v.deleted"}[
            lookup
        ]
        rows = self.conn.execute(
            "SELECT DISTINCT v.subject FROM sr_subject_versions v"
            f" WHERE {condition} AND v.subject LIKE %s ESCAPE '\\' ORDER BY v.subject",
            (_like_prefix(subject_prefix),),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def any_versions(self, subject: str | None = None) -> bool:
        if subject is None:
            row = self.conn.execute("SELECT EXISTS (SELECT 1 FROM sr_subject_versions)").fetchone()
        else:
            row = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM sr_subject_versions WHERE subject = %s)", (subject,)
            ).fetchone()
        return bool(row and row[0])

    def next_version(self, subject: str, wanted: int | None = None) -> int:
        """Hand out the subject's next version number (or record ``wanted``, in IMPORT mode).

        ``last_version`` only grows, so numbers are never reused, even after a permanent delete.
        """
        self.conn.execute("INSERT INTO sr_subjects (subject) VALUES (%s) ON CONFLICT DO NOTHING", (subject,))
        if wanted is not None:
            self.conn.execute(
                "UPDATE sr_subjects SET last_version = GREATEST(last_version, %s) WHERE subject = %s",
                (wanted, subject),
            )
            return wanted
        row = self.conn.execute(
            "UPDATE sr_subjects SET last_version = last_version + 1"
            " WHERE subject = %s RETURNING last_version",
            (subject,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def insert_version(self, subject: str, version: int, schema_id: int) -> None:
        self.conn.execute(
            "INSERT INTO sr_subject_versions (subject, version, schema_id) VALUES (%s, %s, %s)",
            (subject, version, schema_id),
        )

    def soft_delete(self, subject: str, versions: Sequence[int]) -> None:
        self.conn.execute(
            "UPDATE sr_subject_versions SET deleted = true, deleted_at = now()"
            " WHERE subject = %s AND version = ANY(%s)",
            (subject, list(versions)),
        )

    def hard_delete(self, subject: str, versions: Sequence[int]) -> None:
        self.conn.execute(
            "DELETE FROM sr_subject_versions WHERE subject = %s AND version = ANY(%s)",
            (subject, list(versions)),
        )

    def drop_subject(self, subject: str) -> None:
        """Forget the subject entirely (after a permanent delete): its version counter, config and mode."""
        self.conn.execute("DELETE FROM sr_subjects WHERE subject = %s", (subject,))
        self.delete_config(subject)
        self.delete_mode(subject)

    def versions_of_schema(
        self, schema_id: int, lookup: Lookup, subject: str | None = None
    ) -> list[tuple[str, int]]:
        rows = self.conn.execute(
            "SELECT subject, version, deleted FROM sr_subject_versions WHERE schema_id = %s"
            " AND (%s::text IS NULL OR subject = %s) ORDER BY subject, version",
            (schema_id, subject, subject),
        ).fetchall()
        return [
            (str(r[0]), int(r[1]))
            for r in rows
            if lookup.admits(VersionRow(int(r[1]), schema_id, bool(r[2])))
        ]

    # -- config and mode -----------------------------------------------------------------------------------

    def get_config(self, scope: str) -> Compatibility | None:
        row = self.conn.execute("SELECT compatibility FROM sr_config WHERE scope = %s", (scope,)).fetchone()
        return Compatibility(row[0]) if row else None

    def set_config(self, scope: str, level: Compatibility) -> None:
        self.conn.execute(
            "INSERT INTO sr_config (scope, compatibility) VALUES (%s, %s) ON CONFLICT (scope)"
            " DO UPDATE SET compatibility = excluded.compatibility, updated_at = now()",
            (scope, level.value),
        )

    def delete_config(self, scope: str) -> Compatibility | None:
        row = self.conn.execute(
            "DELETE FROM sr_config WHERE scope = %s RETURNING compatibility", (scope,)
        ).fetchone()
        return Compatibility(row[0]) if row else None

    def get_mode(self, scope: str) -> Mode | None:
        row = self.conn.execute("SELECT mode FROM sr_mode WHERE scope = %s", (scope,)).fetchone()
        return Mode(row[0]) if row else None

    def set_mode(self, scope: str, mode: Mode) -> None:
        self.conn.execute(
            "INSERT INTO sr_mode (scope, mode) VALUES (%s, %s) ON CONFLICT (scope)"
            " DO UPDATE SET mode = excluded.mode, updated_at = now()",
            (scope, mode.value),
        )

    def delete_mode(self, scope: str) -> Mode | None:
        row = self.conn.execute("DELETE FROM sr_mode WHERE scope = %s RETURNING mode", (scope,)).fetchone()
        return Mode(row[0]) if row else None


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class Store:
    """Owns nothing but borrows connections from the pool handed in (the app owns the pool)."""

    def __init__(self, pool: ConnectionPool, connection_timeout: float = 5.0) -> None:
        self.pool = pool
        # How long a request waits for a connection before answering 503: short, so clients retry
        # (or fail over to another instance) instead of hanging while the database is away.
        self.connection_timeout = connection_timeout

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One read-committed transaction; committed on success, rolled back on any exception."""
        with self.pool.connection(timeout=self.connection_timeout) as conn, conn.transaction():
            yield Tx(conn)

    def ping(self, timeout: float = 2.0) -> None:
        with self.pool.connection(timeout=timeout) as conn:
            conn.execute("SELECT 1")
