"""Services run as processes by end-to-end tests (``python -m <module>``), to SIGKILL and restart them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: How long a ``python -m`` expected to exit (or log) by itself may take before it counts as hung. Not a
#: speed bound: a service's start reaching nothing takes 2-5 s of CPU, and a 2-core CI machine shared with
#: other suites stretches that many times over (60 and 90 s bounds failed so); a hang never ends.
HANG_SECONDS = 300


class Proc:
    """A service run as ``python -m <module>`` with its output in a log file."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.module, self.env, self.log = module, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
        return self

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None
