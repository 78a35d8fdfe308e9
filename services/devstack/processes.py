"""Background processes of the local stack: start with a log file and a pid file, wait for health, stop.

A pid file holds the pid *and* the process's start time (from ``/proc``), so a stale file whose pid the
kernel has since given to an unrelated process is recognised as stale: ``down`` only ever signals a
process this stack started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartError(RuntimeError):
    """A component did not come up; the message says why and shows the end of its log."""


@dataclass(frozen=True)
class Managed:
    """One process of the stack as the pid files see it."""

    name: str
    pidfile: Path
    log: Path

    def pid(self) -> int | None:
        """The pid if the recorded process is still the one we started and alive, else None."""
        return running_pid(self.pidfile)


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill(0) is all we know
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# Processes started by this Python process, so they can be reaped (and Popen doesn't warn that they
# were left running when the stack is stopped from here).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    # Our own children (a stack started in this process) stay zombies until waited for.
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {process_start_time(pid) or '-'}\n")


def running_pid(pidfile: Path) -> int | None:
    try:
        parts = pidfile.read_text().split()
    except OSError:
        return None
    if not parts or not parts[0].isdigit():
        return None
    pid = int(parts[0])
    recorded_start = parts[1] if len(parts) > 1 else "-"
    if not is_alive(pid):
        return None
    if recorded_start != "-" and process_start_time(pid) not in (None, recorded_start):
        return None  # the pid was reused by another process
    return pid


def spawn(
    managed: Managed,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    die_with_parent: str | None = None,
) -> int:
    """Start ``command`` in its own session (so Ctrl-C in a terminal reaches only the supervisor, which
    then stops everything in order), output appended to the log, pid recorded. Returns the pid.

    ``die_with_parent`` names a signal (e.g. ``"TERM"``) the kernel sends the process when this one dies
    however it dies, for stacks that must not outlive their owner (a test run that is killed outright).
    It uses util-linux's ``setpriv``, which sets the signal and execs the command under the same pid.
    """
    managed.log.parent.mkdir(parents=True, exist_ok=True)
    rotate(managed.log)
    setpriv = shutil.which("setpriv")
    if die_with_parent is not None and setpriv is not None:
        command = [setpriv, f"--pdeathsig={die_with_parent}", "--", *command]
    with managed.log.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
        )
    _CHILDREN[proc.pid] = proc
    write_pidfile(managed.pidfile, proc.pid)
    return int(proc.pid)


LOG_ROTATE_BYTES = 20 * 1024 * 1024


def rotate(log: Path, max_bytes: int = LOG_ROTATE_BYTES) -> None:
    """Logs are appended to across restarts; past ``max_bytes`` the old one becomes ``<name>.log.1``."""
    try:
        if log.stat().st_size > max_bytes:
            log.replace(log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass


def stop(managed: Managed, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> str:
    """Stop the recorded process: ``sig``, wait up to ``timeout`` s, then SIGKILL to it and the process
    group it leads. Returns what happened."""
    pid = managed.pid()
    if pid is None:
        managed.pidfile.unlink(missing_ok=True)
        return "not running"
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        managed.pidfile.unlink(missing_ok=True)
        return "not running"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid):
            managed.pidfile.unlink(missing_ok=True)
            return f"stopped (pid {pid})"
        time.sleep(0.1)
    _kill_hard(pid)
    for _ in range(50):
        if not is_alive(pid):
            break
        time.sleep(0.1)
    managed.pidfile.unlink(missing_ok=True)
    return f"killed after {timeout:.0f}s (pid {pid})"


def _kill_hard(pid: int) -> None:
    """SIGKILL ``pid`` and, when it leads its own process group (``spawn`` starts every component in a
    session of its own), the whole group: a killed supervisor cannot stop its workers (uvicorn's, a
    postmaster's backends), which would otherwise live on holding the component's port."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        if group == pid and group != os.getpgrp():
            os.killpg(group, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URL we built
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    managed: Managed,
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    pid: int | None = None,
) -> None:
    """Poll ``ready`` until true; fail at once with the log's tail if the process dies meanwhile."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if ready():
            return
        if pid is not None and not is_alive(pid):
            raise StartError(
                f"{managed.name} exited before {what}; last lines of {managed.log}:\n{log_tail(managed.log)}"
            )
        if time.monotonic() > deadline:
            raise StartError(
                f"{managed.name}: no {what} after {timeout:.0f}s; last lines of {managed.log}:\n"
                f"{log_tail(managed.log)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
