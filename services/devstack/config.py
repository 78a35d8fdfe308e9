"""Settings of the local stack: where its files live and which loopback ports it listens on.

Every value has an environment override (``PLG_STACK_*``) and a CLI flag, so a test can start a private
stack on free ports in a temporary directory while the shared one keeps the defaults.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / ".plg"
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_LOG4J_CONFIG = REPO_ROOT / "deploy" / "kafka" / "log4j2.properties"
KAFKA_PROPERTIES_TEMPLATE = REPO_ROOT / "deploy" / "kafka" / "server.properties.template"


class StackSettings(BaseSettings):
    """One local stack: a Kafka broker, a PostgreSQL cluster, the registry and the app services."""

    model_config = SettingsConfigDict(env_prefix="PLG_STACK_", extra="ignore")

    # Data, logs and pid files of this stack (``<root>/kafka``, ``/postgres``, ``/logs``, ``/run``).
    root: Path = DEFAULT_ROOT
    # The broker's jars are shared by every stack on the machine (tests' private stacks included), so they
    # are downloaded once, not once per temporary directory.
    kafka_libs: Path = DEFAULT_ROOT / "kafka" / "libs"
    # Binaries built for the stack (stripe-mock), shared like the jars.
    bin_dir: Path = DEFAULT_ROOT / "bin"
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "1g"
    postgres_port: int = 5433
    registry_port: int = 8081
    # stripe-mock's two listeners (it always serves both HTTP and HTTPS).
    stripe_mock_port: int = 12111
    stripe_mock_https_port: int = 12112
    # The stateful Stripe emulator (services/stripe_emulator): what the stack's billing talks to.
    stripe_emulator_port: int = 12120
    # `make monitor`: Prometheus and Alertmanager (9093 is Kafka's controller port, hence 9095).
    prometheus_port: int = 9090
    alertmanager_port: int = 9095
    # Port overrides for app services by name, e.g. PLG_STACK_SERVICE_PORTS='{"ingest": 18080}'.
    service_ports: dict[str, int] = Field(default_factory=dict)
    # Start the app services (ingest, metering, ...) after the registry; tests' private stacks don't.
    with_apps: bool = True
    # Seconds each component may take to become healthy before start-up fails.
    start_timeout: float = 120.0
    # Seconds a component may take to stop on SIGTERM before it is killed.
    stop_timeout: float = 30.0

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.host}:{self.registry_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://plg@{self.host}:{self.postgres_port}/plg"

    @property
    def stripe_mock_url(self) -> str:
        return f"http://{self.host}:{self.stripe_mock_port}"

    @property
    def stripe_emulator_url(self) -> str:
        return f"http://{self.host}:{self.stripe_emulator_port}"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    @property
    def postgres_data_dir(self) -> Path:
        return self.root / "postgres" / "data"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel picks it; a tiny race remains until it's bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: all sockets are held open together so the kernel can't repeat one."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def private_settings(root: Path, *, with_apps: bool = False, **overrides: object) -> StackSettings:
    """Settings for a throwaway stack under ``root`` on free ports (tests), sharing the broker's jars."""
    kafka, controller, postgres, registry, stripe_http, stripe_https, emulator = free_ports(7)
    values: dict[str, object] = {
        "root": root,
        "kafka_port": kafka,
        "kafka_controller_port": controller,
        "postgres_port": postgres,
        "registry_port": registry,
        "stripe_mock_port": stripe_http,
        "stripe_mock_https_port": stripe_https,
        "stripe_emulator_port": emulator,
        "with_apps": with_apps,
        "kafka_heap": "512m",
    }
    values.update(overrides)
    # Start from the environment's settings so e.g. PLG_STACK_KAFKA_LIBS and _BIN_DIR still apply.
    return StackSettings().model_copy(update=values)
