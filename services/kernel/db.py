"""PostgreSQL access shared by the services: a connection pool and the schema migrations.

Migrations are plain SQL files in ``deploy/postgres/migrations`` named ``NNNN_description.sql``, applied in
order, each once, inside one transaction per file. A session advisory lock makes concurrent start-ups
(several replicas of a service) apply them one at a time, so running ``migrate`` again is always safe.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from services.kernel.settings import DatabaseSettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "migrations"
# Arbitrary constant: the advisory lock key every plg process uses while migrating.
_MIGRATION_LOCK_KEY = 0x706C67_0001


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = [Migration(p.stem, p) for p in sorted(directory.glob("*.sql"))]
    seen: set[str] = set()
    for m in migrations:
        number = m.version.split("_", 1)[0]
        if not number.isdigit():
            raise ValueError(f"migration {m.path.name} must start with a number, e.g. 0001_name.sql")
        if number in seen:
            raise ValueError(f"two migrations share the number {number}")
        seen.add(number)
    return migrations


def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet applied; returns the versions applied now.

    A migration already applied whose file changed is an error: edit the schema with a new file instead.
    """
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done: dict[str, str] = dict(
                conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            )
            for m in discover(directory):
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise RuntimeError(
                            f"migration {m.path.name} changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                        (m.version, m.checksum),
                    )
                log.info("applied migration %s", m.version)
                applied_now.append(m.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now


def open_pool(settings: DatabaseSettings, name: str = "plg") -> ConnectionPool:
    """A connection pool opened and checked; the caller owns it and must ``close()`` it."""
    pool = ConnectionPool(
        settings.url.get_secret_value(),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        name=name,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool
