"""Stopping the stack's processes: what ``make down`` leaves behind (real processes, no broker needed)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from services.devstack.processes import Managed, is_alive, spawn, stop

# A component that ignores SIGTERM and has a worker of its own that does too (a hung uvicorn supervisor
# with its workers, a postmaster with its backends).
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
with open(sys.argv[1], "w") as f:
    f.write(str(worker.pid))
time.sleep(600)
"""


def _wait_for_text(path: Path, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def test_a_component_killed_after_the_stop_timeout_takes_its_own_workers_with_it(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    worker_file = tmp_path / "worker.pid"
    managed = Managed("stubborn", tmp_path / "run" / "stubborn.pid", tmp_path / "logs" / "stubborn.log")
    pid = spawn(managed, [sys.executable, str(script), str(worker_file)])
    worker = int(_wait_for_text(worker_file))
    try:
        outcome = stop(managed, timeout=1.0)

        assert outcome.startswith("killed"), outcome
        assert not is_alive(pid)
        deadline = time.monotonic() + 5
        while is_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_alive(worker), "the component's worker outlived it (it would keep its port)"
        assert not managed.pidfile.exists()
    finally:
        for leftover in (worker, pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
