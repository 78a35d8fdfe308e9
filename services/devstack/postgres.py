"""The local PostgreSQL: Debian's package, a private cluster with its own data directory and port.

``initdb`` and ``postgres`` refuse to run as root, so when we are root they run as the ``postgres``
user that the package creates (the data directory is chowned to it and its ancestors must be
traversable). The socket lives in the data directory so it never clashes with a system instance's
/var/run/postgresql; clients use TCP on 127.0.0.1 with trust authentication, which is for local
development only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from services.devstack.config import StackSettings

SUPERUSER = "postgres"
APP_ROLE = "plg"
APP_DATABASE = "plg"


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (``/usr/lib/postgresql/<major>/bin``), if any."""
    override = os.environ.get("PLG_STACK_POSTGRES_BIN")
    if override:
        return Path(override)
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    candidates.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return candidates[-1] if candidates else None


def ensure_installed(say: Callable[[str], None] = print) -> Path:
    """PostgreSQL's bin dir, installing Debian's ``postgresql`` package first when it is missing."""
    found = find_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("PostgreSQL is not installed: run `sudo apt-get install -y postgresql`")
    say("PostgreSQL not found: installing Debian's postgresql package ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"], check=True, env=env)
    found = find_bin_dir()
    if found is None:
        raise RuntimeError("installed postgresql but found no /usr/lib/postgresql/*/bin/initdb")
    return found


def run_as() -> str | None:
    """The user to run PostgreSQL as: ``postgres`` when we are root, else ourselves (None)."""
    return SUPERUSER if os.geteuid() == 0 else None


def make_traversable(path: Path) -> None:
    """Let the ``postgres`` user reach ``path``: add o+x to ancestors that lack it.

    Only needed as root; temporary directories (0700 by default) are the usual obstacle.
    """
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


class PostgresLayout:
    """Where one stack's cluster lives and how it is initialised, started and prepared."""

    def __init__(self, settings: StackSettings, bin_dir: Path) -> None:
        self.settings = settings
        self.bin_dir = bin_dir
        self.data = settings.postgres_data_dir

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def _prepare_dirs(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data, 0o700)
        user = run_as()
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.data.parent, self.data):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            make_traversable(self.data.parent)

    def initdb(self) -> None:
        self._prepare_dirs()
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            cwd=self.data.parent,
            user=run_as(),
            group=run_as(),
            extra_groups=[] if run_as() else None,
            capture_output=True,
        )
        self._write_config()

    def _write_config(self) -> None:
        # Appended settings win over initdb's defaults; the server is told its port on the command line.
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# plg local development cluster (services/devstack/postgres.py)\n"
                f"listen_addresses = '{self.settings.host}'\n"
                f"unix_socket_directories = '{self.data}'\n"
                "max_connections = 200\n"
                "shared_buffers = 128MB\n"
                # Durability is not what a developer cluster is for; tests run noticeably faster.
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "log_min_messages = warning\n"
            )
        (self.data / "pg_hba.conf").write_text(
            "# Local development only: trust on loopback and the private socket.\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host all all ::1/128 trust\n"
        )
        user = run_as()
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self.data / "pg_hba.conf", entry.pw_uid, entry.pw_gid)

    def server_command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.settings.postgres_port),
            "-c",
            f"listen_addresses={self.settings.host}",
        ]

    def superuser_url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.settings.host}:{self.settings.postgres_port}/postgres"

    def accepting(self) -> bool:
        try:
            with psycopg.connect(self.superuser_url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def create_app_database(self) -> None:
        """Role ``plg`` and database ``plg``, once."""
        with psycopg.connect(self.superuser_url(), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone() is None:
                conn.execute(f'CREATE ROLE "{APP_ROLE}" LOGIN CREATEDB')
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)).fetchone()
            if found is None:
                conn.execute(f'CREATE DATABASE "{APP_DATABASE}" OWNER "{APP_ROLE}"')


def remove_cluster(settings: StackSettings) -> None:
    shutil.rmtree(settings.postgres_data_dir.parent, ignore_errors=True)


def wait_stopped_postmaster(data: Path, timeout: float = 10.0) -> None:
    """Wait until postmaster.pid is gone (PostgreSQL removes it last when it shuts down)."""
    deadline = time.monotonic() + timeout
    while (data / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
