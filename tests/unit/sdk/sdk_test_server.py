"""A real HTTP server on loopback that answers like ingest, scripted per test (outages, 503, lost acks)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A script step: returns (status, headers, body) or None to drop the connection without answering.
Step = Callable[[list[dict[str, Any]]], tuple[int, dict[str, str], dict[str, Any]] | None]


def accept_all(events: list[dict[str, Any]]) -> tuple[int, dict[str, str], dict[str, Any]]:
    results = [
        {"index": i, "event_id": e.get("event_id"), "status": "accepted"} for i, e in enumerate(events)
    ]
    return 202, {}, {"accepted": len(events), "rejected": 0, "results": results}


@dataclass
class Recorded:
    events: list[dict[str, Any]]
    headers: dict[str, str]
    answered: int | None


@dataclass
class FakeIngest:
    """Records every request; ``script`` answers them in order, then ``accept_all``."""

    script: list[Step] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def accepted_ids(self) -> list[str]:
        return [e["event_id"] for r in self.requests if r.answered == 202 for e in r.events]

    def all_sent_ids(self) -> list[str]:
        return [e["event_id"] for r in self.requests for e in r.events]

    def start(self) -> FakeIngest:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                events = json.loads(raw)["batch"]
                with fake.lock:
                    step = fake.script.pop(0) if fake.script else accept_all
                    answer = step(events)
                    fake.requests.append(Recorded(events, dict(self.headers), answer[0] if answer else None))
                if answer is None:
                    self.close_connection = True
                    self.connection.close()
                    return
                status, headers, body = answer
                payload = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
