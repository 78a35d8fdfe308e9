"""Flag definitions: the file as code (``deploy/config/flags.yaml``) and their PostgreSQL store, where the
admin API changes them at run time — every change versioned, audited (who, when, before/after) and
NOTIFY'd so every replica reloads within milliseconds."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plg_sdk.flags import FlagConfigError, FlagSet, compile_document, flag_errors
from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from services.kernel.config import ConfigFileError, config_path, load_yaml

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FLAGS_FILE = REPO / "deploy" / "config" / "flags.yaml"


def flags_path(path: Path | None = None) -> Path:
    """``path``, else ``$PLG_FLAGS_CONFIG``, else deploy/config/flags.yaml."""
    return config_path(path, "PLG_FLAGS_CONFIG", DEFAULT_FLAGS_FILE)


def load_flags_file(path: Path | None = None) -> dict[str, Any]:
    """The flags document of ``path``, validated (every error at once, as :class:`ConfigFileError`)."""
    source = flags_path(path)
    doc = load_yaml(source, "flags document")
    try:
        compile_document(doc, source=str(source))
    except FlagConfigError as exc:  # the SDK's own (it has no kernel); the service speaks the kernel's
        raise ConfigFileError(source, exc.errors, "flags document") from None
    assert isinstance(doc, dict)
    return doc


# -- the PostgreSQL store -----------------------------------------------------------------------------------

#: NOTIFY channel of every flag change (payload: the change id), so every replica reloads at once.
CHANNEL = "plg_growth_flags"
CONFIG_ACTOR = "config:flags.yaml"


class FlagConflict(Exception):
    """The flag changed since the version the caller based its change on (optimistic concurrency)."""

    def __init__(self, key: str, expected: int, actual: int | None) -> None:
        super().__init__(f"flag {key!r} is at version {actual}, not {expected}: read it again and retry")
        self.key, self.expected, self.actual = key, expected, actual


class FlagNotFound(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(f"no flag {key!r}")
        self.key = key


class InvalidFlag(ValueError):
    """An admin change that would not compile; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Snapshot:
    """The flags as served: the document, its compiled engine, its revision (the last change id) and ETag."""

    document: dict[str, Any]
    engine: FlagSet
    revision: int
    etag: str
    body: bytes


@dataclass(frozen=True)
class Change:
    change_id: int
    flag_key: str
    version: int
    action: str
    actor: str
    changed_at: str
    request_id: str | None
    before: Any
    after: Any


def _canonical(definition: Mapping[str, Any]) -> str:
    return json.dumps(definition, sort_keys=True, separators=(",", ":"))


class FlagStore:
    """Flags in PostgreSQL (tables of migration 0050): seeded from the file, changed by the admin API,
    every change versioned and audited in the same transaction, and NOTIFY'd."""

    def __init__(self, pool: ConnectionPool, segments: Mapping[str, Any] | None = None) -> None:
        self.pool = pool
        # Segments are code only (the file): a rule may name them, the admin API cannot change them.
        self.segments = dict(segments or {})

    # -- reading -------------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT flag_key, version, definition FROM growth_flags WHERE NOT deleted ORDER BY flag_key"
            ).fetchall()
            revision = conn.execute("SELECT coalesce(max(change_id), 0) FROM growth_flag_audit").fetchone()
        flags = [{**definition, "key": key, "version": version} for key, version, definition in rows]
        rev = int(revision[0]) if revision else 0
        document = {"revision": rev, "segments": self.segments, "flags": flags}
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        # Rows are validated when written; a row that no longer compiles (edited by hand) is a bug to see.
        engine = compile_document(document, source="growth_flags", revision=str(rev))
        return Snapshot(document, engine, rev, etag, body)

    def get(self, key: str) -> tuple[int, dict[str, Any], str, str] | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT version, definition, source, updated_by FROM growth_flags"
                " WHERE flag_key = %s AND NOT deleted",
                (key,),
            ).fetchone()
        return None if row is None else (row[0], {**row[1], "key": key, "version": row[0]}, row[2], row[3])

    def history(self, key: str, limit: int = 100) -> list[Change]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT change_id, flag_key, version, action, actor, changed_at, request_id, before, after"
                " FROM growth_flag_audit WHERE flag_key = %s ORDER BY change_id DESC LIMIT %s",
                (key, limit),
            ).fetchall()
        return [
            Change(r[0], r[1], r[2], r[3], r[4], r[5].isoformat().replace("+00:00", "Z"), r[6], r[7], r[8])
            for r in rows
        ]

    # -- writing -------------------------------------------------------------------------------------------

    def seed(self, document: Mapping[str, Any]) -> list[str]:
        """Bring the file's flags in: new ones are created, ones the file still owns (last written from
        it) follow the file; ones changed through the admin API keep the admin's version (logged). Returns
        the keys written."""
        written: list[str] = []
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SEED_LOCK_KEY,))
            for spec in document.get("flags") or []:
                key = spec["key"]
                definition = {k: v for k, v in spec.items() if k not in ("key", "version")}
                row = conn.execute(
                    "SELECT version, definition, source, deleted FROM growth_flags WHERE flag_key = %s"
                    " FOR UPDATE",
                    (key,),
                ).fetchone()
                if row is None:
                    self._write(conn, key, 1, definition, "config", CONFIG_ACTOR, "seed", None, None)
                    written.append(key)
                    continue
                version, current, source, deleted = row
                if _canonical(current) == _canonical(definition) and not deleted:
                    continue
                if source == "admin":
                    log.warning(
                        "flag differs from the file but was changed through the admin API; keeping it",
                        extra={"flag": key, "version": version},
                    )
                    continue
                self._write(
                    conn, key, version + 1, definition, "config", CONFIG_ACTOR, "config", current, None
                )
                written.append(key)
        return written

    def put(
        self,
        key: str,
        spec: Mapping[str, Any],
        actor: str,
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> tuple[int, bool]:
        """Create or replace a flag; returns (its new version, created)."""
        definition = {k: v for k, v in spec.items() if k not in ("key", "version")}
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SEED_LOCK_KEY,))
            row = conn.execute(
                "SELECT version, definition, deleted FROM growth_flags WHERE flag_key = %s FOR UPDATE", (key,)
            ).fetchone()
            live = row is not None and not row[2]
            current = row[0] if row is not None and live else None
            if expected_version is not None and current != expected_version:
                raise FlagConflict(key, expected_version, current)
            version = 1 if row is None else row[0] + 1
            others = conn.execute(
                "SELECT flag_key, version, definition FROM growth_flags WHERE NOT deleted AND flag_key <> %s",
                (key,),
            ).fetchall()
            errors = flag_errors(
                {**definition, "key": key, "version": version},
                [{**d, "key": k, "version": v} for k, v, d in others],
                self.segments,
            )
            if errors:
                raise InvalidFlag(errors)
            before = row[1] if live and row else None
            self._write(
                conn,
                key,
                version,
                definition,
                "admin",
                actor,
                "update" if live else "create",
                before,
                request_id,
            )
        return version, not live

    def delete(
        self, key: str, actor: str, *, expected_version: int | None = None, request_id: str | None = None
    ) -> int:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SEED_LOCK_KEY,))
            row = conn.execute(
                "SELECT version, definition FROM growth_flags WHERE flag_key = %s AND NOT deleted FOR UPDATE",
                (key,),
            ).fetchone()
            if row is None:
                raise FlagNotFound(key)
            if expected_version is not None and row[0] != expected_version:
                raise FlagConflict(key, expected_version, row[0])
            dependants = [
                k
                for (k, d) in conn.execute(
                    "SELECT flag_key, definition FROM growth_flags WHERE NOT deleted AND flag_key <> %s",
                    (key,),
                ).fetchall()
                if any(p.get("flag") == key for p in d.get("prerequisites") or [])
            ]
            if dependants:
                raise InvalidFlag([f"flags {sorted(dependants)} have {key!r} as a prerequisite"])
            version: int = row[0] + 1
            conn.execute(
                "UPDATE growth_flags SET deleted = true, version = %s, source = 'admin', updated_at = now(),"
                " updated_by = %s WHERE flag_key = %s",
                (version, actor, key),
            )
            self._audit(conn, key, version, "delete", actor, row[1], None, request_id)
        return version

    def _write(
        self,
        conn: Connection[Any],
        key: str,
        version: int,
        definition: Mapping[str, Any],
        source: str,
        actor: str,
        action: str,
        before: Any,
        request_id: str | None,
    ) -> None:
        conn.execute(
            "INSERT INTO growth_flags (flag_key, version, definition, source, updated_by)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (flag_key) DO UPDATE SET version = excluded.version,"
            " definition = excluded.definition, source = excluded.source, deleted = false,"
            " updated_at = now(), updated_by = excluded.updated_by",
            (key, version, Jsonb(dict(definition)), source, actor),
        )
        self._audit(conn, key, version, action, actor, before, definition, request_id)

    def _audit(
        self,
        conn: Connection[Any],
        key: str,
        version: int,
        action: str,
        actor: str,
        before: Any,
        after: Any,
        request_id: str | None,
    ) -> None:
        row = conn.execute(
            "INSERT INTO growth_flag_audit (flag_key, version, action, actor, request_id, before, after)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING change_id",
            (
                key,
                version,
                action,
                actor,
                request_id,
                None if before is None else Jsonb(before),
                None if after is None else Jsonb(dict(after)),
            ),
        ).fetchone()
        # Delivered at commit, to every listener (this replica's included).
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(row[0] if row else 0)))


# Serialises flag writes: version numbers and validation against the other flags stay consistent.
_SEED_LOCK_KEY = 0x706C67_0050
