"""run_service: --check-config, exit statuses, start-up logs and the ops endpoints of a worker."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.devstack.config import free_port
from services.kernel.errors import KafkaFatalError
from services.kernel.lifecycle import Lifecycle
from services.kernel.logs import MASK, configure_logging
from services.kernel.service import (
    EXIT_CRASH,
    EXIT_FATAL_KAFKA,
    EXIT_INVALID_CONFIG,
    EXIT_OK,
    ConfigFile,
    run_service,
)
from services.kernel.settings import StreamServiceSettings


class DemoSettings(StreamServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")

    port: int = Field(default=0, ge=0, le=65535)
    batch: int = Field(default=10, ge=1)
    api_token: str = ""


SECRETS = {
    "KAFKA_EXTRA": '{"sasl.password": "kafka-pw-1", "sasl.username": "svc", "security.protocol": "SASL_SSL"}',
    "DATABASE_URL": "postgresql://plg:db-pw-2@db.internal:5432/plg",
    "SCHEMA_REGISTRY_ADMIN_TOKEN": "registry-token-3",
    "DEMO_API_TOKEN": "plain-str-token-4",
}


@pytest.fixture(autouse=True)
def _restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


def _no_secret_in(text: str) -> None:
    for leaked in ("kafka-pw-1", "db-pw-2", "registry-token-3", "plain-str-token-4"):
        assert leaked not in text


class Worker:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.ran = threading.Event()
        self.readiness = {"demo": self.ran.is_set}

    def run(self, stop: threading.Event) -> None:
        self.ran.set()
        if self.error is not None:
            raise self.error
        while not stop.wait(0.05):  # like a poll loop: back in Python often, where signal handlers run
            pass


def test_check_config_prints_the_settings_with_every_secret_masked(
    secrets: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[Any] = []

    code = run_service("demo", DemoSettings, lambda s, life: built.append(s), argv=["--check-config"])

    out, err = capsys.readouterr()
    assert code == EXIT_OK
    assert built == []  # nothing is opened by a check
    _no_secret_in(out + err)
    doc = json.loads(out)["settings"]
    assert doc["kafka"]["extra"]["sasl.password"] == MASK
    assert doc["kafka"]["extra"]["security.protocol"] == "SASL_SSL"
    assert doc["database"]["url"] == MASK
    assert doc["registry"]["admin_token"] == MASK
    assert doc["api_token"] == MASK  # a plain str, masked by its name
    assert doc["batch"] == 10


def test_invalid_settings_exit_2_listing_every_error_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_EXTRA", '{"sasl.password": 987654321}')  # not a string: invalid
    monkeypatch.setenv("DEMO_BATCH", "0")
    monkeypatch.setenv("PLG_LOG_LEVEL", "LOUD")

    code = run_service("demo", DemoSettings, lambda s, life: None, argv=["--check-config"])

    _, err = capsys.readouterr()
    assert code == EXIT_INVALID_CONFIG
    assert "987654321" not in err
    assert "kafka.extra.sasl.password (KAFKA_EXTRA)" in err
    assert "batch (DEMO_BATCH)" in err
    assert "platform.log_level (PLG_LOG_LEVEL)" in err


def test_an_invalid_config_file_exits_2_with_all_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.plans.loader import load_config, summary

    bad = tmp_path / "plans.yaml"
    bad.write_text("version: 0\n")
    spec: ConfigFile[DemoSettings] = ConfigFile("meters-and-plans", lambda s: load_config(bad), summary)

    code = run_service("demo", DemoSettings, lambda s, life: Worker(), config_files=[spec], argv=[])

    _, err = capsys.readouterr()
    assert code == EXIT_INVALID_CONFIG
    for problem in ("meters: missing", "plans: missing", "version:", "effective_date:"):
        assert problem in err


def test_check_config_summarises_the_config_files(capsys: pytest.CaptureFixture[str]) -> None:
    from services.plans.loader import plans_file

    code = run_service(
        "demo", DemoSettings, lambda s, life: None, config_files=[plans_file()], argv=["--check-config"]
    )

    summary = json.loads(capsys.readouterr().out)["files"]["meters-and-plans"]
    assert code == EXIT_OK
    assert "api_requests" in summary["meters"]
    assert "free" in summary["plans"]


def test_build_receives_the_config_files_as_loaded_and_they_are_read_once() -> None:
    from services.plans.loader import config_path, load_config, summary

    reads: list[object] = []

    def load(settings: DemoSettings) -> object:
        reads.append(load_config(config_path()))
        return reads[-1]

    spec: ConfigFile[DemoSettings] = ConfigFile("meters-and-plans", load, summary)
    received: dict[str, Any] = {}

    def build(settings: DemoSettings, life: Lifecycle, files: Any = None) -> Worker:
        received["plans"] = spec.of(settings, files)
        return Worker(error=RuntimeError("stop here"))  # built: that is all this test needs

    code = run_service("demo", DemoSettings, build, config_files=[spec], argv=[])

    assert code == EXIT_CRASH
    assert len(reads) == 1  # validated by run_service, then handed over: never read again
    assert received["plans"] is reads[0]
    assert spec.of(DemoSettings(), None) is not reads[0]  # without run_service (tests), read there


def _run_worker(worker: Worker, secrets: dict[str, str] | None = None) -> tuple[int, str]:
    stream = io.StringIO()
    original = configure_logging

    def to_stream(service: str, level: Any = "INFO", fmt: Any = "json", stream_: Any = None) -> Any:
        return original(service, level, fmt, stream=stream)

    import services.kernel.service as service_mod

    service_mod.configure_logging = to_stream  # type: ignore[assignment]
    try:
        code = run_service("demo", DemoSettings, lambda s, life: worker, argv=[])
    finally:
        service_mod.configure_logging = original
    return code, stream.getvalue()


def test_start_up_logs_the_settings_masked(secrets: dict[str, str]) -> None:
    worker = Worker(error=RuntimeError("boom"))

    code, logs = _run_worker(worker)

    _no_secret_in(logs)
    (settings_line,) = [json.loads(line) for line in logs.splitlines() if '"msg":"settings"' in line]
    assert settings_line["settings"]["kafka"]["extra"]["sasl.password"] == MASK
    assert code == EXIT_CRASH


def test_a_worker_crash_exits_1_and_is_logged_with_its_traceback() -> None:
    code, logs = _run_worker(Worker(error=RuntimeError("boom")))

    assert code == EXIT_CRASH
    crash = [json.loads(line) for line in logs.splitlines() if "service crashed" in line]
    assert crash
    assert "RuntimeError: boom" in crash[0]["exc"]


def test_a_fatal_kafka_error_exits_3() -> None:
    code, logs = _run_worker(Worker(error=KafkaFatalError("fenced")))

    assert code == EXIT_FATAL_KAFKA
    assert "fatal Kafka error" in logs


def test_a_worker_gets_ops_endpoints_with_its_readiness_and_stops_on_sigterm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv("DEMO_PORT", str(port))
    worker = Worker()
    closed: list[str] = []
    answers: dict[str, int] = {}

    def build(settings: DemoSettings, life: Lifecycle) -> Worker:
        life.callback(lambda: closed.append("resource"), "resource")
        return worker

    def probe() -> None:
        worker.ran.wait(5)
        for path in ("/livez", "/readyz", "/metrics"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                answers[path] = response.status
        os.kill(os.getpid(), signal.SIGTERM)

    prober = threading.Thread(target=probe)
    prober.start()
    code = run_service("demo", DemoSettings, build, argv=[])
    prober.join()

    assert code == EXIT_OK
    assert answers == {"/livez": 200, "/readyz": 200, "/metrics": 200}
    assert closed == ["resource"]


def _failing_http_app(error: BaseException, closed: list[str]) -> Any:
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette

    def build(settings: DemoSettings, life: Lifecycle) -> Any:
        @asynccontextmanager
        async def lifespan(_app: Any) -> Any:
            try:
                life.callback(lambda: closed.append("pool"), "pool")
                raise error
                yield  # pragma: no cover
            finally:
                life.close()

        return Starlette(lifespan=lifespan)

    return build


@pytest.mark.parametrize(
    ("error", "expected"),
    [(KafkaFatalError("fenced"), EXIT_FATAL_KAFKA), (RuntimeError("database away"), EXIT_CRASH)],
)
def test_an_http_service_whose_start_up_fails_exits_with_the_status_of_what_failed(
    error: BaseException, expected: int
) -> None:
    from services.kernel.service import HttpOptions

    closed: list[str] = []

    code = run_service("demo", DemoSettings, _failing_http_app(error, closed), http=HttpOptions(), argv=[])

    assert code == expected  # not uvicorn's own 3 for every failed start-up
    assert closed == ["pool"]


def test_a_blank_secret_is_unset_everywhere_and_production_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_ADMIN_TOKEN", " ")
    monkeypatch.setenv("PLG_TOPIC_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("PLG_TOPIC_MIN_INSYNC_REPLICAS", "2")
    monkeypatch.setenv("PLG_DLQ_KEY", "a-real-dead-letter-key")
    settings = DemoSettings()

    assert settings.registry.admin_token is None  # never sent as an empty bearer token
    assert [d.variable for d in settings.development_defaults()] == ["SCHEMA_REGISTRY_ADMIN_TOKEN"]

    class WithToken(StreamServiceSettings):
        model_config = SettingsConfigDict(env_prefix="DEMO_")
        admin_token: SecretStr | None = None

    monkeypatch.setenv("DEMO_ADMIN_TOKEN", "")
    with_token = WithToken()
    assert with_token.admin_token is None
    assert [d.variable for d in with_token.development_defaults()] == [
        "DEMO_ADMIN_TOKEN",
        "SCHEMA_REGISTRY_ADMIN_TOKEN",
    ]


def test_production_refuses_development_defaults_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLG_ENVIRONMENT", "production")

    status = run_service("demo", DemoSettings, lambda s, life: None, argv=["--check-config"])

    assert status == EXIT_INVALID_CONFIG
    err = capsys.readouterr().err
    assert "PLG_TOPIC_REPLICATION_FACTOR" in err
    assert "PLG_TOPIC_MIN_INSYNC_REPLICAS" in err
