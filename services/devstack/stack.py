"""The local stack as one object: start in order, wait for health, report, stop in reverse order.

Order: PostgreSQL -> migrations -> Kafka -> schema registry -> stripe-mock -> the Stripe emulator ->
provisioning (topics + schemas) -> app services. Each step waits for its component to be healthy, so
whatever comes next can rely on it.
The same object backs ``python -m services.devstack`` (``make up/down/run/status``) and the test
fixtures, which start a private stack on free ports in a temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

from services.devstack import kafka as kafka_mod
from services.devstack import postgres as pg
from services.devstack import stripe_mock
from services.devstack.apps import APP_SERVICES, SCHEMA_REGISTRY, AppService
from services.devstack.config import REPO_ROOT, StackSettings
from services.devstack.processes import (
    Managed,
    StartError,
    http_ok,
    log_tail,
    port_open,
    spawn,
    stop,
    wait_until,
)
from services.kernel import db
from services.kernel.provision import provision_all, provision_topics, wait_for_broker
from services.kernel.settings import LOCAL, KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import catalogue

POSTGRES = "postgres"
KAFKA = "kafka"
REGISTRY = SCHEMA_REGISTRY.name
STRIPE_MOCK = "stripe-mock"
# Stateful (services/stripe_emulator): billing's Stripe on the local stack; stripe-mock stays the shape check.
STRIPE_EMULATOR = "stripe-emulator"
ALL_INFRA = (POSTGRES, KAFKA, REGISTRY, STRIPE_MOCK, STRIPE_EMULATOR)
BILLING_APP = "billing-reporter"
# Local defaults of the Stripe settings every billing process reads (docs/billing.md). The key is
# stripe-mock's accepted test key, the secret signs the stack's own test webhooks; neither is a secret.
STRIPE_LOCAL_DEFAULTS = {"STRIPE_API_KEY": "sk_test_plglocal", "STRIPE_WEBHOOK_SECRET": "whsec_plg_local"}


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    address: str
    healthy: bool
    log: Path

    def line(self) -> str:
        state = f"running (pid {self.pid})" if self.pid else "stopped"
        if self.pid and not self.healthy:
            state += ", NOT healthy"
        return f"{self.name:<20} {state:<28} {self.address}"


class Stack:
    """One local stack; ``components`` limits it (e.g. a test's throwaway broker is only Kafka)."""

    def __init__(
        self,
        settings: StackSettings | None = None,
        *,
        components: tuple[str, ...] = ALL_INFRA,
        provision: bool = True,
        say: Callable[[str], None] | None = None,
        tied_to_this_process: bool = False,
    ) -> None:
        self.settings = settings or StackSettings()
        self.components = components
        self.provision = provision
        # Tests' stacks die with the test process, even a killed one; `make up`'s outlive the command.
        self.tied_to_this_process = tied_to_this_process
        self.say = say or (lambda msg: print(msg, flush=True))
        self.timings: dict[str, float] = {}
        self._started_now: list[str] = []

    # -- addresses (what tests and tools need) ------------------------------------------------------
    @property
    def kafka_bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def registry_url(self) -> str:
        return self.settings.registry_url

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @property
    def stripe_api_base(self) -> str:
        return self.settings.stripe_mock_url

    @property
    def stripe_emulator_url(self) -> str:
        return self.settings.stripe_emulator_url

    def billing_webhook_url(self) -> str:
        """Where the emulator delivers its events: the billing reporter of this stack."""
        port = self.settings.service_ports.get(BILLING_APP, 8083)
        return f"http://{self.settings.host}:{port}/v1/stripe/webhooks"

    @property
    def data_dir(self) -> Path:
        return self.settings.root

    def managed(self, name: str) -> Managed:
        return Managed(name, self.settings.run_dir / f"{name}.pid", self.settings.logs_dir / f"{name}.log")

    def apps(self) -> list[AppService]:
        return list(APP_SERVICES) if self.settings.with_apps else []

    def app_port(self, app: AppService) -> int:
        if app.name == REGISTRY:
            return self.settings.registry_port
        return self.settings.service_ports.get(app.name, app.port)

    def app_url(self, app: AppService) -> str:
        return f"http://{self.settings.host}:{self.app_port(app)}"

    def child_env(self) -> dict[str, str]:
        """The environment every process of the stack gets: the stack's own addresses win."""
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.kafka_bootstrap,
            SCHEMA_REGISTRY_URL=self.registry_url,
            DATABASE_URL=self.database_url,
            PYTHONUNBUFFERED="1",
        )
        # Unlike Kafka's address, Stripe's comes from the environment first: a developer may point the
        # stack at Stripe's test mode (STRIPE_API_BASE=https://api.stripe.com, a real sk_test_ key).
        # Billing talks to the stateful emulator (reconciliation means something there); stripe-mock, which
        # answers canned fixtures, is only the tests' shape check.
        if STRIPE_EMULATOR in self.components:
            env.setdefault("STRIPE_API_BASE", self.stripe_emulator_url)
        elif STRIPE_MOCK in self.components:
            env.setdefault("STRIPE_API_BASE", self.stripe_api_base)
        for name, value in STRIPE_LOCAL_DEFAULTS.items():
            env.setdefault(name, value)
        # A developer's stack: its development defaults (those above, the PII key...) are expected here, so
        # no warnings; a shell that says otherwise (PLG_ENVIRONMENT=staging make up) wins.
        env.setdefault("PLG_ENVIRONMENT", LOCAL)
        return env

    # -- start ---------------------------------------------------------------------------------------
    def up(self) -> float:
        """Start whatever is not running yet, in order; returns the seconds it took. Idempotent."""
        started = time.monotonic()
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        self._started_now = []
        try:
            if POSTGRES in self.components:
                self._timed("postgres", self._up_postgres)
            if KAFKA in self.components:
                self._timed("kafka", self._up_kafka)
            if REGISTRY in self.components:
                self._timed("registry", partial(self._up_app, SCHEMA_REGISTRY))
            if STRIPE_MOCK in self.components:
                self._timed("stripe-mock", self._up_stripe_mock)
            if STRIPE_EMULATOR in self.components:
                self._timed("stripe-emulator", self._up_stripe_emulator)
            if self.provision and KAFKA in self.components:
                self._timed("provision", self._provision)
            for app in self.apps():
                self._timed(app.name, partial(self._up_app, app))
        except BaseException:
            # Leave the machine as we found it: stop what this call started (not what was already up).
            self._stop(list(reversed(self._started_now)))
            raise
        return time.monotonic() - started

    def _timed(self, step: str, action: Callable[[], None]) -> None:
        t0 = time.monotonic()
        action()
        self.timings[step] = time.monotonic() - t0

    def _death_signal(self) -> str | None:
        return "TERM" if self.tied_to_this_process else None

    def _already(self, managed: Managed) -> int | None:
        pid = managed.pid()
        if pid is not None:
            self.say(f"{managed.name}: already running (pid {pid})")
        return pid

    def _refuse_foreign_port(self, name: str, port: int) -> None:
        if port_open(self.settings.host, port):
            raise StartError(
                f"{name}: port {self.settings.host}:{port} is already taken by a process this stack did not "
                f"start; stop it or choose another port (see `python -m services.devstack --help`)"
            )

    def _up_postgres(self) -> None:
        managed = self.managed(POSTGRES)
        bin_dir = pg.ensure_installed(self.say)
        layout = pg.PostgresLayout(self.settings, bin_dir)
        pid = self._already(managed)
        if pid is None:
            self._refuse_foreign_port(POSTGRES, self.settings.postgres_port)
            if not layout.initialised():
                self.say(f"postgres: initdb {layout.data}")
                layout.initdb()
            pid = spawn(
                managed,
                layout.server_command(),
                cwd=layout.data,
                user=pg.run_as(),
                die_with_parent="INT" if self.tied_to_this_process else None,
            )
            self._started_now.append(managed.name)
        wait_until(
            managed,
            layout.accepting,
            timeout=self.settings.start_timeout,
            what="accepted connections",
            pid=pid,
        )
        layout.create_app_database()
        applied = db.migrate(self.database_url)
        if applied:
            self.say(f"postgres: applied migrations {', '.join(applied)}")

    def _up_kafka(self) -> None:
        managed = self.managed(KAFKA)
        kafka_mod.ensure_jars(self.settings.kafka_libs, say=self.say)
        layout = kafka_mod.KafkaLayout(self.settings)
        pid = self._already(managed)
        if pid is None:
            self._refuse_foreign_port(KAFKA, self.settings.kafka_port)
            self._refuse_foreign_port(KAFKA, self.settings.kafka_controller_port)
            layout.write_config()
            if not layout.formatted():
                self.say(f"kafka: formatting {layout.data}")
                _run_logged(managed, layout.format_command())
            pid = spawn(
                managed, layout.broker_command(), cwd=layout.dir, die_with_parent=self._death_signal()
            )
            self._started_now.append(managed.name)
        host, port = self.settings.host, self.settings.kafka_port
        wait_until(
            managed,
            lambda: port_open(host, port),
            timeout=self.settings.start_timeout,
            what="open port",
            pid=pid,
        )
        wait_for_broker(
            KafkaSettings(bootstrap_servers=self.kafka_bootstrap), timeout=self.settings.start_timeout
        )

    def _up_stripe_mock(self) -> None:
        managed = self.managed(STRIPE_MOCK)
        stripe_mock.ensure_installed(self.settings.bin_dir, say=self.say)
        host, port, https_port = (
            self.settings.host,
            self.settings.stripe_mock_port,
            self.settings.stripe_mock_https_port,
        )
        pid = self._already(managed)
        if pid is None:
            self._refuse_foreign_port(STRIPE_MOCK, port)
            self._refuse_foreign_port(STRIPE_MOCK, https_port)
            pid = spawn(
                managed,
                stripe_mock.command(self.settings.bin_dir, host, port, https_port),
                die_with_parent=self._death_signal(),
            )
            self._started_now.append(managed.name)
        wait_until(
            managed,
            lambda: port_open(host, port),
            timeout=self.settings.start_timeout,
            what="open port",
            pid=pid,
        )

    def _up_stripe_emulator(self) -> None:
        managed = self.managed(STRIPE_EMULATOR)
        host, port = self.settings.host, self.settings.stripe_emulator_port
        pid = self._already(managed)
        if pid is None:
            self._refuse_foreign_port(STRIPE_EMULATOR, port)
            env = self.child_env()
            pid = spawn(
                managed,
                [
                    sys.executable,
                    "-m",
                    "services.stripe_emulator",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--state-file",
                    str(self.settings.root / "stripe-emulator" / "state.pickle"),
                ]
                + (["--webhook-url", self.billing_webhook_url()] if self.apps() else []),
                env=env,
                cwd=REPO_ROOT,
                die_with_parent=self._death_signal(),
            )
            self._started_now.append(managed.name)
        wait_until(
            managed,
            lambda: port_open(host, port),
            timeout=self.settings.start_timeout,
            what="open port",
            pid=pid,
        )

    def _up_app(self, app: AppService) -> None:
        if not app.implemented():
            self.say(f"{app.name}: {app.module} is not implemented yet, skipped")
            return
        managed = self.managed(app.name)
        port = self.app_port(app)
        pid = self._already(managed)
        if pid is None:
            self._refuse_foreign_port(app.name, port)
            env = self.child_env()
            env.update(app.env)
            if app.data_dir_env is not None:
                env[app.data_dir_env] = str(self.data_dir / "data" / app.name)
            if app.state_dir_env is not None:
                # The stack's own: two stacks on one host (test workers) never share a store.
                env[app.state_dir_env] = str(self.data_dir / "state" / app.name)
            env[app.host_env] = self.settings.host
            env[app.port_env] = str(port)
            pid = spawn(
                managed,
                [sys.executable, "-m", app.module],
                env=env,
                cwd=REPO_ROOT,
                die_with_parent=self._death_signal(),
            )
            self._started_now.append(managed.name)
        url = self.app_url(app) + app.health_path
        wait_until(
            managed,
            lambda: http_ok(url),
            timeout=self.settings.start_timeout,
            what=f"healthy answer from {url}",
            pid=pid,
        )

    def registry_running(self) -> bool:
        return REGISTRY in self.components and self.managed(REGISTRY).pid() is not None

    def _provision(self) -> None:
        kafka = KafkaSettings(bootstrap_servers=self.kafka_bootstrap)
        if self.registry_running():
            created, ids = provision_all(kafka, SchemaRegistrySettings(url=self.registry_url))
            self.say(f"provisioned {len(catalogue())} topics ({len(created)} new), {len(ids)} schemas")
        else:
            created = provision_topics(kafka, catalogue())
            self.say(
                f"provisioned {len(catalogue())} topics ({len(created)} new); no registry: schemas skipped"
            )

    # -- stop and inspect ----------------------------------------------------------------------------
    def stop_order(self) -> list[str]:
        order = [a.name for a in reversed(self.apps())]
        order += [
            c for c in (STRIPE_EMULATOR, STRIPE_MOCK, REGISTRY, KAFKA, POSTGRES) if c in self.components
        ]
        return order

    def down(self) -> None:
        """Stop, in reverse start order, every process whose pid this stack recorded."""
        self._stop(self.stop_order())

    def _stop(self, names: list[str]) -> None:
        for name in names:
            # PostgreSQL's SIGTERM is a "smart" shutdown that waits for every client to disconnect;
            # SIGINT is its fast, still clean, shutdown.
            sig = signal.SIGINT if name == POSTGRES else signal.SIGTERM
            outcome = stop(self.managed(name), sig=sig, timeout=self.settings.stop_timeout)
            if outcome != "not running":
                self.say(f"{name}: {outcome}")
        if POSTGRES in names:
            pg.wait_stopped_postmaster(self.settings.postgres_data_dir)

    def status(self) -> list[ComponentStatus]:
        rows: list[ComponentStatus] = []
        host = self.settings.host
        for name in [*(c for c in ALL_INFRA if c in self.components), *(a.name for a in self.apps())]:
            managed = self.managed(name)
            pid = managed.pid()
            if name == POSTGRES:
                address, healthy = self.database_url, port_open(host, self.settings.postgres_port)
            elif name == KAFKA:
                address, healthy = self.kafka_bootstrap, port_open(host, self.settings.kafka_port)
            elif name == STRIPE_MOCK:
                address, healthy = self.stripe_api_base, port_open(host, self.settings.stripe_mock_port)
            elif name == STRIPE_EMULATOR:
                address = self.stripe_emulator_url
                healthy = port_open(host, self.settings.stripe_emulator_port)
            else:
                app = SCHEMA_REGISTRY if name == REGISTRY else next(a for a in self.apps() if a.name == name)
                address = self.app_url(app)
                healthy = http_ok(address + app.health_path)
            rows.append(ComponentStatus(name, pid, address, healthy and pid is not None, managed.log))
        return rows

    def endpoints(self) -> list[str]:
        return [f"  {row.name:<20} {row.address}" for row in self.status() if row.pid is not None]

    def dead_components(self) -> list[str]:
        """Components that were started and have since exited (their pid file outlived them)."""
        dead = []
        for name in self.stop_order():
            managed = self.managed(name)
            if managed.pidfile.exists() and managed.pid() is None:
                dead.append(name)
        return dead

    # -- foreground ----------------------------------------------------------------------------------
    def run(self) -> int:
        """``up``, report, stay until Ctrl-C or SIGTERM (or a component dies), then stop everything."""
        with _interrupts_raise():
            try:
                elapsed = self.up()
                self.say(f"\nplg stack up in {elapsed:.1f}s ({format_timings(self.timings)}). Listening:")
                for line in self.endpoints():
                    self.say(line)
                self.say(f"logs: {self.settings.logs_dir}   stop: Ctrl-C\n")
                while True:
                    time.sleep(1.0)
                    dead = self.dead_components()
                    if dead:
                        for name in dead:
                            self.say(f"{name} exited unexpectedly; see {self.managed(name).log}")
                        return 1
            except _Interrupted:
                self.say("\nstopping ...")
                return 0
            finally:
                with _interrupts_ignored(self.say):
                    self.down()


def format_timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())


def _run_logged(managed: Managed, command: list[str]) -> None:
    """Run a one-off command of a component (e.g. formatting) with its output in the component's log."""
    managed.log.parent.mkdir(parents=True, exist_ok=True)
    with managed.log.open("ab") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise StartError(
            f"{managed.name}: {command[-6:]} failed; see {managed.log}:\n{log_tail(managed.log)}"
        )


class _Interrupted(BaseException):
    """Ctrl-C or SIGTERM while the foreground stack runs."""


@contextmanager
def _interrupts_raise() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def _interrupts_ignored(say: Callable[[str], None]) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        say("still stopping, in order; please wait")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
