"""``make bench-growth``: the growth service's four figures.

1. the Python SDK's local evaluation cost per flag of deploy/config/flags.yaml (µs per call; a warm
   identity — its buckets cached — and a first-seen identity), goal < 2 µs;
2. server-side flag evaluations/s and latency (``POST /v1/flags/evaluate``, ``--clients`` keep-alive
   connections for ``--seconds``), with the service's CPU per evaluation;
3. the time from an admin change to every one of ``--subscribers`` SSE subscribers seeing it (p50/p99 over
   ``--changes`` changes);
4. ``GET /v1/onboarding/.../next`` latency (p50/p99), goal p99 < 10 ms.

Uses the stack named by KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL and DATABASE_URL when all are set,
otherwise starts a private one; the service runs as its own process (``python -m services.growth``) on a
fresh topic prefix. Prints the load average before and after: on a shared 2-core machine the figures move
with it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import threading
import time
import uuid
from typing import Any

from plg_sdk.flags import compile_document

from bench.common import bench_credentials, cpu_seconds, load_average, pct, service, stack
from services.devstack.config import free_port
from services.growth.flagstore import load_flags_file
from services.kernel.provision import provision_all
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings

# Credentials made in main(): the bench customer's secret key (evaluations, onboarding, the stream) and an
# admin operator's token (flag changes).
CUSTOMER = "bench"
AUTH: dict[str, str] = {}
OPERATOR: dict[str, str] = {}


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    payload = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    conn.request(method, path, body=payload, headers=hdrs)
    response = conn.getresponse()
    return response.status, response.read()


# -- 2. server-side evaluations -------------------------------------------------------------------------


def server_evaluations(port: int, pid: int, clients: int, seconds: float) -> None:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds
    errors: list[str] = []

    def run(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        rng = random.Random(i)
        mine = latencies[i]
        while time.monotonic() < stop:
            ctx = {
                "user_id": f"user-{rng.randrange(100_000)}",
                "plan": rng.choice(["free", "pro"]),
                "country": "NZ",
            }
            started = time.perf_counter()
            status, _ = request(
                conn, "POST", "/v1/flags/evaluate", {"flag_key": "new_dashboard", "context": ctx}
            )
            mine.append(time.perf_counter() - started)
            if status != 200:
                errors.append(str(status))
        conn.close()

    cpu_before = cpu_seconds(pid)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    cpu = cpu_seconds(pid) - cpu_before
    every = [x for xs in latencies for x in xs]
    print(
        f"2. server-side evaluations: {len(every) / elapsed:,.0f}/s over {elapsed:.1f} s with {clients} "
        f"connections; latency p50 {pct(every, 50) * 1e3:.2f} ms, p99 {pct(every, 99) * 1e3:.2f} ms; "
        f"service CPU {cpu / max(1, len(every)) * 1e6:.0f} µs per evaluation; errors {len(errors)}"
    )


# -- 1. SDK local evaluation ------------------------------------------------------------------------------


def sdk_local(calls: int) -> None:
    engine = compile_document(load_flags_file())
    warm = [
        {"user_id": f"user-{i}", "anonymous_id": f"anon-{i}", "plan": "free", "country": "NZ"}
        for i in range(1000)
    ]
    print("1. SDK local evaluation (µs per call; warm: identity seen before, cold: first-seen identity)")
    worst = 0.0
    for key in engine.flags:
        for ctx in warm:  # warm the bucket cache
            engine.evaluate(key, ctx)
        started = time.perf_counter()
        n = 0
        while n < calls:
            for ctx in warm:
                engine.evaluate(key, ctx)
            n += len(warm)
        warm_us = (time.perf_counter() - started) / n * 1e6
        cold = [{"user_id": uuid.uuid4().hex, "plan": "free"} for _ in range(20_000)]
        started = time.perf_counter()
        for ctx in cold:
            engine.evaluate(key, ctx)
        cold_us = (time.perf_counter() - started) / len(cold) * 1e6
        worst = max(worst, warm_us)
        print(f"   {key:24s} warm {warm_us:5.2f}   cold {cold_us:5.2f}")
    print(f"   worst warm {worst:.2f} µs: goal < 2 µs {'met' if worst < 2 else 'NOT met'}")


# -- 3. admin change -> SSE subscribers -------------------------------------------------------------------


def sse_propagation(port: int, subscribers: int, changes: int) -> None:
    arrivals: list[dict[int, float]] = [{} for _ in range(subscribers)]
    connected = threading.Barrier(subscribers + 1)
    stop = threading.Event()

    def follow(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("GET", "/v1/flags/stream", headers={"Accept": "text/event-stream", **AUTH})
        response = conn.getresponse()
        first = True
        while not stop.is_set():
            line = response.readline()
            if not line:
                return
            if line.startswith(b"id:"):
                revision = int(line[3:].strip())
                arrivals[i][revision] = time.monotonic()
                if first:
                    first = False
                    connected.wait()

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(subscribers)]
    for t in threads:
        t.start()
    connected.wait(timeout=60)
    admin = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = OPERATOR
    key = f"bench_{uuid.uuid4().hex[:8]}"
    samples: list[float] = []
    for n in range(changes):
        sent = time.monotonic()
        status, body = request(admin, "PUT", f"/v1/admin/flags/{key}", {"rollout": n % 100}, headers)
        assert status in (200, 201), body
        revision = json.loads(body)["revision"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(revision in a for a in arrivals):
            time.sleep(0.005)
        samples.extend(a[revision] - sent for a in arrivals if revision in a)
        time.sleep(0.05)
    stop.set()
    missing = changes * subscribers - len(samples)
    print(
        f"3. admin change -> {subscribers} SSE subscribers: p50 {pct(samples, 50) * 1e3:.1f} ms, p99 "
        f"{pct(samples, 99) * 1e3:.1f} ms, max {max(samples) * 1e3:.1f} ms over {changes} changes "
        f"({len(samples)} deliveries, {missing} missing); goal: within a second"
    )


# -- 4. onboarding next ------------------------------------------------------------------------------------


def onboarding_next(port: int, requests: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    rng = random.Random(4)
    for i in range(50):  # some progress to read
        request(conn, "POST", f"/v1/onboarding/{CUSTOMER}/p{i}/steps/create-project/complete")
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        status, _ = request(conn, "GET", f"/v1/onboarding/{CUSTOMER}/p{rng.randrange(200)}/next")
        latencies.append(time.perf_counter() - started)
        assert status == 200
    print(
        f"4. onboarding next: p50 {pct(latencies, 50) * 1e3:.2f} ms, p99 {pct(latencies, 99) * 1e3:.2f} ms, "
        f"mean {statistics.mean(latencies) * 1e3:.2f} ms over {requests} requests (one connection); "
        f"goal p99 < 10 ms {'met' if pct(latencies, 99) < 0.010 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sdk-calls", type=int, default=200_000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    print(f"load average before: {load_average()}")
    sdk_local(args.sdk_calls)
    with stack() as info:
        prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        provision_all(
            KafkaSettings(bootstrap_servers=info.kafka),
            SchemaRegistrySettings(url=info.registry),
            prefix=prefix,
        )
        key, operator = bench_credentials(info.database, CUSTOMER)
        AUTH["Authorization"] = f"Bearer {key}"
        OPERATOR["Authorization"] = f"Bearer {operator}"
        port = free_port()
        env = {
            "PATH": "/usr/bin:/bin",
            "KAFKA_BOOTSTRAP_SERVERS": info.kafka,
            "SCHEMA_REGISTRY_URL": info.registry,
            "DATABASE_URL": info.database,
            "PLG_TOPIC_PREFIX": prefix,
            "PLG_LOG_LEVEL": "WARNING",
            "GROWTH_PORT": str(port),
            "GROWTH_INSTANCE_ID": f"bench-{port}",
        }
        with service("services.growth", env, port, "growth") as proc:
            server_evaluations(port, proc.pid, args.clients, args.seconds)
            sse_propagation(port, args.subscribers, args.changes)
            onboarding_next(port, args.requests)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
