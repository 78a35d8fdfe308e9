"""Fixtures shared by the whole suite: the real stack, fresh topic prefixes, provisioned catalogues.

The stack is started lazily, by the first test that asks for it (every test under tests/integration
and tests/e2e is marked ``integration``), so ``pytest -m "not integration"`` needs nothing running.
With ``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL`` and ``DATABASE_URL`` all set the suite uses
that stack; otherwise it starts a private one (PostgreSQL, Kafka, registry) on free ports in a temporary
directory and stops it at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from services.devstack.config import private_settings
from services.devstack.processes import stop
from services.devstack.stack import KAFKA, POSTGRES, REGISTRY, STRIPE_EMULATOR, STRIPE_MOCK, Stack
from services.kernel.provision import admin_client, provision_all
from services.kernel.settings import DatabaseSettings, KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import TopicSpec, catalogue
from tests.browser import browser  # noqa: F401 - the shared headless-Chromium fixture

TESTS_DIR = Path(__file__).resolve().parent
INTEGRATION_DIRS = (TESTS_DIR / "integration", TESTS_DIR / "e2e")
STACK_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "DATABASE_URL")
# stripe-mock of the stack; an external stack without it set gets a private stripe-mock of its own.
STRIPE_MOCK_ENV = "STRIPE_MOCK_URL"

_stack_report: list[str] = []


# No property test has a time limit: hypothesis' default 200 ms deadline per example is a timing assertion,
# and one example of a pure money function failed it on a 2-core machine at load ~13 (20 000 examples of the
# same test with no deadline found no counterexample). What a property states is checked, not how fast.
hypothesis_settings.register_profile("plg", deadline=None, print_blob=True)
hypothesis_settings.load_profile("plg")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        if any(path.is_relative_to(d) for d in INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _stack_report:
        terminalreporter.write_sep("-", "plg test stack")
        for line in _stack_report:
            terminalreporter.write_line(line)


@dataclass(frozen=True)
class StackEndpoints:
    """Where the suite's stack listens; ``data_dir`` is None for an external stack."""

    kafka_bootstrap: str
    registry_url: str
    database_url: str
    data_dir: Path | None = None
    stripe_mock_url: str | None = None
    stripe_emulator_url: str | None = None


def _keep_dirs() -> bool:
    return os.environ.get("PLG_KEEP_TEST_STACK", "") not in ("", "0")


@pytest.fixture(scope="session")
def stack() -> Iterator[StackEndpoints]:
    if all(os.environ.get(k) for k in STACK_ENV):
        _stack_report.append(f"external stack: Kafka {os.environ['KAFKA_BOOTSTRAP_SERVERS']}")
        yield StackEndpoints(*(os.environ[k] for k in STACK_ENV))
        return
    root = Path(tempfile.mkdtemp(prefix="plg-test-stack-"))
    private = Stack(
        private_settings(root),
        components=(POSTGRES, KAFKA, REGISTRY, STRIPE_MOCK, STRIPE_EMULATOR),
        provision=False,
        say=_stack_report.append,
        tied_to_this_process=True,
    )
    elapsed = private.up()
    _stack_report.append(
        f"private stack in {root}: up in {elapsed:.1f}s "
        f"({', '.join(f'{k} {v:.1f}s' for k, v in private.timings.items())})"
    )
    endpoints = StackEndpoints(
        private.kafka_bootstrap,
        private.registry_url,
        private.database_url,
        root,
        private.stripe_api_base,
        private.stripe_emulator_url,
    )
    # Code under test that reads its settings from the environment (and services started as processes)
    # must find this stack, not whatever the developer's shell points at.
    saved = {k: os.environ.get(k) for k in STACK_ENV}
    os.environ.update(
        zip(
            STACK_ENV,
            (endpoints.kafka_bootstrap, endpoints.registry_url, endpoints.database_url),
            strict=True,
        )
    )
    try:
        yield endpoints
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        private.down()
        if not _keep_dirs():
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stripe_mock_url(stack: StackEndpoints) -> Iterator[str]:
    """stripe-mock's base URL: the private stack's, ``$STRIPE_MOCK_URL``, or one of our own on free ports
    (an external stack, e.g. `make up`'s, on someone else's port block)."""
    if stack.stripe_mock_url is not None:
        yield stack.stripe_mock_url
        return
    if os.environ.get(STRIPE_MOCK_ENV):
        yield os.environ[STRIPE_MOCK_ENV]
        return
    root = Path(tempfile.mkdtemp(prefix="plg-test-stripe-mock-"))
    own = Stack(
        private_settings(root),
        components=(STRIPE_MOCK,),
        provision=False,
        say=_stack_report.append,
        tied_to_this_process=True,
    )
    own.up()
    try:
        yield own.stripe_api_base
    finally:
        own.down()
        if not _keep_dirs():
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kafka_settings(stack: StackEndpoints) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=stack.kafka_bootstrap)


@pytest.fixture
def registry_settings(stack: StackEndpoints) -> SchemaRegistrySettings:
    return SchemaRegistrySettings(url=stack.registry_url)


@pytest.fixture
def database_settings(stack: StackEndpoints) -> DatabaseSettings:
    return DatabaseSettings(url=SecretStr(stack.database_url))


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix for this test's topics, subjects and consumer groups, e.g. ``t3f9a1c-``."""
    return f"t{uuid.uuid4().hex[:7]}-"


@dataclass(frozen=True)
class Provisioned:
    """The whole topic catalogue created under ``prefix`` with its value schemas registered."""

    prefix: str
    specs: list[TopicSpec]
    created: list[str]
    schema_ids: dict[str, int] = field(default_factory=dict)

    def topic(self, name: str) -> str:
        """The prefixed name of catalogue topic ``name`` (e.g. ``usage-events``)."""
        return f"{self.prefix}{name}"


@pytest.fixture
def provisioned(
    topic_prefix: str, kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings
) -> Iterator[Provisioned]:
    created, ids = provision_all(kafka_settings, registry_settings, prefix=topic_prefix)
    yield Provisioned(topic_prefix, catalogue(topic_prefix), created, ids)
    # Keep a long session's broker small; nothing may rely on another test's topics anyway.
    admin = admin_client(kafka_settings)  # kept referenced: a collected client cancels its futures
    futures = admin.delete_topics(created, operation_timeout=30) if created else {}
    for future in futures.values():
        try:
            future.result()
        except Exception as exc:  # best effort: a failed clean-up must not fail the test
            _stack_report.append(f"could not delete a test topic: {exc}")


@dataclass
class PrivateKafka:
    """A throwaway single-node broker for tests that stop or restart one."""

    stack: Stack

    @property
    def bootstrap(self) -> str:
        return self.stack.kafka_bootstrap

    @property
    def settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap)

    def stop(self) -> None:
        """A clean stop (SIGTERM: the broker's controlled shutdown)."""
        self.stack.down()

    def kill(self) -> None:
        """A crash (SIGKILL). What a test of clients riding out an outage *mid-transaction* uses: the only
        broker's controlled shutdown first takes every partition's leadership away, and Kafka skips the
        commit markers it then cannot deliver (partitions without a leader count as deleted), leaving a
        transaction the client was told is committed open for good (docs/operations.md#hanging-transactions).
        A crashed broker reloads the transaction on restart and delivers its markers."""
        stop(self.stack.managed(KAFKA), sig=signal.SIGKILL)

    def start(self) -> None:
        """(Re)start on the same ports and data."""
        self.stack.up()


@pytest.fixture
def private_kafka() -> Iterator[Callable[[], PrivateKafka]]:
    """Factory: ``broker = private_kafka()`` starts a broker of its own; all are stopped after the test."""
    started: list[tuple[PrivateKafka, Path]] = []

    def start() -> PrivateKafka:
        root = Path(tempfile.mkdtemp(prefix="plg-test-kafka-"))
        broker = PrivateKafka(
            Stack(
                private_settings(root),
                components=(KAFKA,),
                provision=False,
                say=lambda _msg: None,
                tied_to_this_process=True,
            )
        )
        started.append((broker, root))
        broker.start()
        return broker

    yield start
    for broker, root in reversed(started):
        broker.stop()
        if not _keep_dirs():
            shutil.rmtree(root, ignore_errors=True)
