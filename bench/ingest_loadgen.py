"""Load generator for ``bench/ingest.py``: POSTs batches to ingest over keep-alive HTTP/1.1 connections.

Runs as its own process (so its CPU is not the server's) on uvloop with a hand-rolled HTTP/1.1 client:
a general-purpose client (httpx) would spend more CPU per request than the server. Two modes:

* ``closed``: N connections each send the next batch as soon as the previous is answered (full load);
* ``open``: batches are sent at a fixed rate whatever the answers, and latency is measured from the
  moment each was *scheduled*, so a stalled server cannot hide its queueing (no coordinated omission).
  The *send lag* (scheduled → written to a connection) is reported too: when it is large, the generator
  itself (or a lack of free connections) made the latency, not the server.

Prints one JSON object: requests, answers by status, events/s accepted, latency percentiles (ms), and the
generator's own CPU use and time spent waiting for a CPU, so a starved generator shows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import uvloop


def make_template(batch: int, run_id: str, timestamp_ms: int, name: str = "api_call") -> bytes:
    """A batch body whose event ids contain ``REQNUMBR``, replaced per request to keep every id unique.

    ``api_call_made`` (bench/pipeline.py) gets the tracking plan's properties, so enrichment passes it and
    the aggregator meters it; the default ``api_call`` is ingest's own bench event."""
    properties: dict[str, Any] = {
        "tokens": 512,
        "model": "large",
        "region": "eu-west-1",
        "ok": True,
        "latency_ms": 12.5,
    }
    if name == "api_call_made":
        properties = {"path": "/v1/things", "status_code": 200, "latency_ms": 12.5}
    events = [
        {
            "event_id": f"{run_id}-REQNUMBR-{i:03d}",
            "name": name,
            "timestamp": timestamp_ms,
            "properties": {**properties, "tokens": 512 + i} if name == "api_call" else properties,
            "user_id": f"user-{i % 17}",
            "session_id": "sess-42",
        }
        for i in range(batch)
    ]
    return orjson.dumps({"batch": events})


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


class Load:
    def __init__(self, url: str, key: str, batch: int, name: str = "api_call") -> None:
        hostport = url.split("://", 1)[1].rstrip("/")
        host, _, port = hostport.partition(":")
        self.host, self.port = host, int(port or 80)
        self.batch = batch
        self.template = make_template(batch, uuid.uuid4().hex[:10], time.time_ns() // 1_000_000 - 1000, name)
        self.head = (
            f"POST /v1/batch HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nUser-Agent: plg-bench\r\nContent-Length: "
        ).encode()
        self.counter = itertools.count()
        self.latencies: list[float] = []
        self.send_lags: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.checked = 0
        self.recording = False

    def next_request(self) -> bytes:
        body = self.template.replace(b"REQNUMBR", b"%08x" % next(self.counter))
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def record(self, status: int, body: bytes, latency: float) -> None:
        if not self.recording:
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)
        # Spot-check that "202" really means all events accepted (parsing every answer would cost CPU).
        if status == 202 and self.checked < 50 and len(self.latencies) % 97 == 0:
            doc = orjson.loads(body)
            if doc["accepted"] != self.batch:
                raise AssertionError(f"a 202 accepted only {doc['accepted']} of {self.batch}: {body[:300]!r}")
            self.checked += 1

    async def closed(self, connections: int, duration: float, warmup: float) -> float:
        conns = [await Conn.open(self.host, self.port) for _ in range(connections)]
        stop_at = time.perf_counter() + warmup + duration

        async def loop(conn: Conn) -> None:
            while time.perf_counter() < stop_at:
                data = self.next_request()
                t0 = time.perf_counter()
                status, body = await conn.request(data)
                self.record(status, body, time.perf_counter() - t0)

        tasks = [asyncio.create_task(loop(c)) for c in conns]
        await asyncio.sleep(warmup)
        self.recording = True
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        for c in conns:
            c.close()
        return elapsed

    async def open_rate(self, rate: float, duration: float, warmup: float, pool_size: int) -> float:
        pool: asyncio.Queue[Conn] = asyncio.Queue()
        for _ in range(pool_size):
            pool.put_nowait(await Conn.open(self.host, self.port))
        inflight: set[asyncio.Task[None]] = set()

        async def one(scheduled: float, record: bool) -> None:
            conn = await pool.get()
            try:
                data = self.next_request()
                sent = time.perf_counter()
                status, body = await conn.request(data)
                if record:
                    self.record(status, body, time.perf_counter() - scheduled)
                    self.send_lags.append(sent - scheduled)
            finally:
                pool.put_nowait(conn)

        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        total = int(rate * (warmup + duration))
        warm_n = int(rate * warmup)
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == warm_n:
                self.recording = True
                measured_from = scheduled
            task = loop.create_task(one(scheduled, i >= warm_n))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        await asyncio.gather(*inflight)
        elapsed = time.perf_counter() - measured_from
        while not pool.empty():
            pool.get_nowait().close()
        return elapsed

    def report(self, elapsed: float, generator: dict[str, float]) -> dict[str, Any]:
        lat = sorted(self.latencies)
        ok = self.statuses.get(202, 0)
        result: dict[str, Any] = {
            "requests": len(lat),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(len(lat) / elapsed, 1),
            "events_per_s": round(ok * self.batch / elapsed, 1),
            "latency_ms": percentiles(lat),
            "generator": generator,
        }
        if self.send_lags:
            result["send_lag_ms"] = percentiles(sorted(self.send_lags))
        return result


def percentiles(ordered: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in ms of sorted seconds."""

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    if not ordered:
        return {}
    return {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)}


def sched_wait_seconds(pid: int | str = "self") -> float:
    """Time the threads of ``pid`` have spent runnable but waiting for a CPU (Linux schedstat; 0 elsewhere).
    The benchmark's view of contention: it grows when other processes keep the cores busy."""
    total = 0.0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--mode", choices=["closed", "open"], required=True)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rate", type=float, default=0.0, help="requests/s (open mode)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--event-name", default="api_call", help="api_call_made: a metered, planned event")
    args = p.parse_args(argv)
    load = Load(args.url, args.key, args.batch, args.event_name)

    async def run() -> float:
        if args.mode == "closed":
            return await load.closed(args.connections, args.duration, args.warmup)
        return await load.open_rate(args.rate, args.duration, args.warmup, max(args.connections, 64))

    # The generator makes no reference cycles worth collecting; a collection pause here would be
    # measured as server latency.
    gc.collect()
    gc.disable()
    cpu0, wait0, wall0 = time.process_time(), sched_wait_seconds(), time.perf_counter()
    elapsed = uvloop.run(run())
    wall = time.perf_counter() - wall0
    generator = {
        # Over the whole run, warm-up included: a generator near one core would be measuring itself.
        "cpu_cores": round((time.process_time() - cpu0) / wall, 3),
        "sched_wait_ms_per_s": round((sched_wait_seconds() - wait0) / wall * 1000, 1),
    }
    sys.stdout.write(orjson.dumps(load.report(elapsed, generator)).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
