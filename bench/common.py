"""What every benchmark needs: a stack, service processes, CPU accounting, percentiles and ranges, and
scraping a service's /metrics. Each bench is a ``python -m bench.<name>`` script built from these.

Figures from a 2-core machine vary with whatever else runs, so every bench prints, beside its rates,
the CPU seconds each process spent per event (much steadier than events/s), the median and range over
its rounds, and the load average before and after.
"""

from __future__ import annotations

import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from services.kernel.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[1]
STACK_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "DATABASE_URL")


@dataclass(frozen=True)
class StackInfo:
    kafka: str
    registry: str
    database: str
    broker_pid: int | None  # known for a private stack: its CPU is then not counted as "other processes"


@contextmanager
def stack() -> Iterator[StackInfo]:
    """The stack named by the environment when all three variables are set, otherwise a private one
    (temporary directory, free ports, loopback), stopped afterwards."""
    if all(os.environ.get(k) for k in STACK_ENV):
        print(f"using the stack at Kafka {os.environ['KAFKA_BOOTSTRAP_SERVERS']}")
        yield StackInfo(
            os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            os.environ["SCHEMA_REGISTRY_URL"],
            os.environ["DATABASE_URL"],
            None,
        )
        return
    from services.devstack.config import private_settings
    from services.devstack.stack import KAFKA, POSTGRES, REGISTRY, Stack

    root = Path(tempfile.mkdtemp(prefix="plg-bench-"))
    private = Stack(
        private_settings(root), components=(POSTGRES, KAFKA, REGISTRY), provision=False, say=lambda _m: None
    )
    print("starting a private stack (Postgres, Kafka, registry) ...")
    elapsed = private.up()
    print(f"private stack up in {elapsed:.1f} s")
    try:
        yield StackInfo(
            private.kafka_bootstrap, private.registry_url, private.database_url, private.managed(KAFKA).pid()
        )
    finally:
        private.down()
        shutil.rmtree(root, ignore_errors=True)


def wait_ready(proc: subprocess.Popen[bytes], port: int, name: str, log: str, timeout: float = 90.0) -> None:
    """Until ``GET /readyz`` on ``port`` answers 200; raises if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; log: {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {timeout:.0f} s; log: {log}")
        time.sleep(0.2)


@contextmanager
def service(
    module: str, env: Mapping[str, str], port: int, name: str, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m module`` as its own process until the block ends (SIGTERM, then SIGKILL after 30 s),
    once its ``/readyz`` on ``port`` says ready. ``cwd`` picks the source tree (another checkout runs
    that checkout's code: before/after comparisons in one run)."""
    log = tempfile.NamedTemporaryFile(prefix=f"plg-bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    env = {**env, "PYTHONPATH": str(cwd)}
    proc = subprocess.Popen(
        [sys.executable, "-m", module], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
    )
    failed = True
    try:
        wait_ready(proc, port, name, log.name)
        yield proc
        failed = False
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if failed:
            print(f"{name}: its log is kept in {log.name}")
        else:
            os.unlink(log.name)


# ------------------------------------------------------------------------------ what the machine did


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn workers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def threads(pid: int) -> dict[int, tuple[float, float]]:
    """Per thread of ``pid``'s family: (CPU seconds, seconds spent runnable but waiting for a CPU)."""
    out: dict[int, tuple[float, float]] = {}
    for p in family(pid):
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                cpu_ns, wait_ns, _ = (task / "schedstat").read_text().split()
            except (OSError, ValueError):
                continue
            out[int(task.name)] = (int(cpu_ns) / 1e9, int(wait_ns) / 1e9)
    return out


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` and its descendants have used so far."""
    return sum(cpu for cpu, _wait in threads(pid).values())


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------------------- figures


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def span(values: list[float], fmt: str = "{:,.0f}") -> str:
    """'a to b (median m)' over the rounds, or the one value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return (
        f"{fmt.format(min(values))} to {fmt.format(max(values))} "
        f"(median {fmt.format(statistics.median(values))})"
    )


def follow_usage(
    port: int,
    path: str,
    headers: Mapping[str, str],
    stamps: list[float],
    stop: threading.Event,
    visible: list[float],
    checks: list[float],
    raw: list[float],
) -> None:
    """Poll an entitlement check (``GET path`` on ``port``) until the usage counts every probe: probe k is
    the k-th of ``stamps`` (its wall time: produced, or acknowledged), and usage k means it is counted.
    Appends to ``visible`` each probe's seconds from its stamp to the first answer counting it, to
    ``checks`` each check's answer time, and to ``raw`` the answer time of a ``/livez`` on the same process
    and connection after each check: the in-run raw under the same load (no credential, no work), so the
    check's tail reads against the machine's. Runs until ``stop`` is set and every probe is seen (or the
    last one is 10 s old). For a thread of its own beside the probe sender."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    seen = 0
    while not stop.is_set() or seen < len(stamps):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=dict(headers))
        body = conn.getresponse().read()
        t1 = time.perf_counter()
        checks.append(t1 - t0)
        conn.request("GET", "/livez")
        conn.getresponse().read()
        raw.append(time.perf_counter() - t1)
        usage = int(orjson.loads(body)["usage"])
        now = time.time()
        while seen < usage and seen < len(stamps):
            visible.append(now - stamps[seen])
            seen += 1
        if stop.is_set() and time.time() - stamps[-1] > 10:
            break
        time.sleep(0.001)


def delete_topics(kafka: KafkaSettings, names: list[str]) -> None:
    """Delete a bench's topics, waiting for each (a failure is printed, not raised: the figures are out).
    The admin client is kept referenced until then, as a collected one cancels its futures."""
    from services.kernel.provision import admin_client

    if not names:
        return
    admin = admin_client(kafka)
    for future in admin.delete_topics(names, operation_timeout=30).values():
        try:
            future.result()
        except Exception as exc:
            print(f"could not delete a bench topic: {exc}")
    # Gone before a private broker stops, or librdkafka complains on stderr about the lost broker.
    del admin


def metrics_text(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    return conn.getresponse().read().decode()


def counter_values(port: int, name: str, label: str) -> dict[str, float]:
    """A Prometheus counter on a service's /metrics, by the value of one of its labels."""
    out: dict[str, float] = {}
    needle = f'{label}="'
    for line in metrics_text(port).splitlines():
        if line.startswith(name + "{") and needle in line:
            value = line.split(needle, 1)[1].split('"', 1)[0]
            out[value] = out.get(value, 0.0) + float(line.split()[-1])
    return out


def histogram_mean(port: int, name: str) -> tuple[float, float]:
    """(count, mean) of a Prometheus histogram on a service's /metrics, summed over its labels."""
    values = {"_sum": 0.0, "_count": 0.0}
    for line in metrics_text(port).splitlines():
        for suffix in values:
            if line.startswith((name + suffix + " ", name + suffix + "{")):
                values[suffix] += float(line.split()[-1])
    count = values["_count"]
    return count, values["_sum"] / count if count else 0.0


def histogram_buckets(port: int, name: str, service: str | None = None) -> dict[float, float]:
    """A Prometheus histogram's cumulative bucket counts on a service's /metrics (upper bound → count),
    summed over its labels, or only the series whose ``service`` label is ``service``."""
    out: dict[float, float] = {}
    for line in metrics_text(port).splitlines():
        if not line.startswith(name + "_bucket{"):
            continue
        labels = line[line.index("{") + 1 : line.rindex("}")]
        if service is not None and f'service="{service}"' not in labels:
            continue
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        out[bound] = out.get(bound, 0.0) + float(line.split()[-1])
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The ``q`` quantile of what a histogram observed between two snapshots, as the upper bound of the
    bucket it falls in (what the buckets can say: an upper estimate); NaN when nothing was observed."""
    delta = sorted((bound, after.get(bound, 0.0) - before.get(bound, 0.0)) for bound in after)
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return float("nan")
    for bound, count in delta:
        if count >= q * total:
            return bound
    return float("inf")


def report_against_raw(
    rounds: list[dict[str, float]], raw_label: str, label: str, goal_events_per_s: float, goal_ratio: float
) -> None:
    """Print a loop's rounds against the raw baseline measured in each round (``raw``/``raw_us`` and
    ``eos``/``eos_us``: events/s and CPU µs per event), and the goals' verdict on the medians."""
    raw = [r["raw"] for r in rounds]
    eos = [r["eos"] for r in rounds]
    ratios = [r["eos"] / r["raw"] for r in rounds]
    width = max(len(raw_label), len(label), len(label) + 6)
    raw_us = span([r["raw_us"] for r in rounds], "{:.1f}")
    eos_us = span([r["eos_us"] for r in rounds], "{:.1f}")
    print(f"  {raw_label:<{width}} {span(raw)} events/s, {raw_us} µs CPU/event")
    print(f"  {label:<{width}} {span(eos)} events/s, {eos_us} µs CPU/event")
    met = statistics.median(eos) >= goal_events_per_s and statistics.median(ratios) >= goal_ratio
    ratio_label = label.split(",")[0] + " / raw"
    print(
        f"  {ratio_label:<{width}} {span(ratios, '{:.0%}')}  (goal ≥ {goal_events_per_s:,.0f}/s "
        f"and ≥ {goal_ratio:.0%} of raw, on the medians: {'met' if met else 'NOT met'})"
    )


def bench_credentials(database_url: str, customer_id: str) -> tuple[str, str]:
    """``(secret key of customer_id, admin operator token)``, made as ``plg keys create`` and ``plg
    operators create`` make them (the customer is created if missing): every plg API needs a credential."""
    import uuid

    import psycopg

    from services.kernel import apikeys
    from services.kernel.db import migrate

    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers (customer_id, plan) VALUES (%s, 'pro') ON CONFLICT DO NOTHING",
            (customer_id,),
        )
        key = apikeys.create_key(conn, customer_id, "bench")[1]
        operator = apikeys.create_operator(conn, f"bench-{uuid.uuid4().hex[:8]}", "admin")[1]
    return key, operator
