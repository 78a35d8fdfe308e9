"""``plg import FILE``: historical events into plg through ingest's ``POST /v1/import`` (analytics only,
never billed), in chunks of at most 500 events and 500 KB, as the customer's secret key
(``PLG_API_KEY``, never a flag) at ``--url`` / ``PLG_INGEST_URL`` (default ``http://127.0.0.1:8080``).

The file is JSON lines or one JSON array, in plg's event shape or as PostHog and Segment export them
(docs/analytics.md "Historical import"). Importing the same file twice stores it once (event ids).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

DEFAULT_URL = "http://127.0.0.1:8080"
MAX_EVENTS = 500
MAX_BYTES = 480 * 1024  # under ingest's 500 KB per request, with room for the newlines


class ImportFailed(Exception):
    """A problem the user can fix; the CLI prints it and exits 1."""


def add_parser(groups: Any) -> None:
    p = groups.add_parser("import", help="import historical events (analytics only, never billed)")
    p.add_argument("file", help="JSON lines or a JSON array: plg, PostHog or Segment export shapes")
    p.add_argument("--url", default=None, help=f"ingest (default $PLG_INGEST_URL or {DEFAULT_URL})")


def read_events(path: Path) -> list[Any]:
    text = path.read_bytes()
    stripped = text.lstrip()
    try:
        if stripped.startswith(b"["):
            doc = orjson.loads(text)
            return list(doc)
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise ImportFailed(f"{path} is neither JSON lines nor a JSON array: {exc}") from None


def chunks(events: list[Any]) -> Iterator[bytes]:
    """NDJSON bodies of at most MAX_EVENTS events and MAX_BYTES bytes."""
    lines: list[bytes] = []
    size = 0
    for event in events:
        line = orjson.dumps(event)
        if lines and (len(lines) >= MAX_EVENTS or size + len(line) + 1 > MAX_BYTES):
            yield b"\n".join(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        yield b"\n".join(lines)


def run(args: argparse.Namespace) -> int:
    key = os.environ.get("PLG_API_KEY", "").strip()
    if not key:
        raise ImportFailed("set PLG_API_KEY to the customer's secret key (`plg keys create CUSTOMER`)")
    base = (args.url or os.environ.get("PLG_INGEST_URL") or DEFAULT_URL).rstrip("/")
    events = read_events(Path(args.file))
    accepted = rejected = 0
    examples: list[str] = []
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for body in chunks(events):
            try:
                response = client.post(
                    f"{base}/v1/import", content=body, headers={"Content-Type": "application/x-ndjson"}
                )
            except httpx.HTTPError as exc:
                raise ImportFailed(f"cannot reach ingest at {base}: {exc}") from None
            answer = response.json() if response.content else {}
            if response.status_code != 202:
                raise ImportFailed(f"{response.status_code} {answer.get('code')}: {answer.get('message')}")
            for result in answer.get("results", []):
                if result.get("status") == "accepted":
                    accepted += 1
                else:
                    rejected += 1
                    if len(examples) < 5:
                        examples.append(
                            f"  {result.get('event_id')}: {result.get('code')}: {result.get('message')}"
                        )
    print(f"imported {accepted} event(s) from {args.file}; {rejected} rejected")
    for line in examples:
        print(line)
    return 1 if rejected else 0
