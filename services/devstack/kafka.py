"""The local Apache Kafka broker: jars from Maven Central, a single-node KRaft config, format, start.

There is no Kafka package or Docker here, so the broker is assembled from the jars Maven resolves for
``deploy/kafka/pom.xml`` and run as ``java -cp 'libs/*' kafka.Kafka server.properties``, exactly what the
release tarball's scripts do underneath.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from string import Template

from services.devstack.config import KAFKA_LOG4J_CONFIG, KAFKA_POM, KAFKA_PROPERTIES_TEMPLATE, StackSettings

STAMP_NAME = ".pom.sha256"


def pom_hash(pom: Path = KAFKA_POM) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def jars_current(libs: Path, pom: Path = KAFKA_POM) -> bool:
    """True when ``libs`` holds the jars of exactly this pom (its hash is in the stamp file)."""
    stamp = libs / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == pom_hash(pom)


def ensure_jars(libs: Path, pom: Path = KAFKA_POM, say: Callable[[str], None] = print) -> float | None:
    """Resolve the broker's runtime classpath into ``libs`` unless it is already there for this pom.

    Returns the seconds the download took, or None when the stamp matched. The jars land in a sibling
    directory first and replace ``libs`` only when Maven succeeded, so an interrupted download never
    leaves a half classpath behind a valid-looking stamp.
    """
    if jars_current(libs, pom):
        return None
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars: apt-get install -y maven")
    started = time.monotonic()
    say(f"fetching the Kafka broker jars with Maven into {libs} ...")
    staging = libs.with_name(libs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    # Maven's output is kept for failures only: on success it is a page of noise around one fact.
    result = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"Maven could not fetch the Kafka jars:\n{result.stdout}\n{result.stderr}")
    (staging / STAMP_NAME).write_text(pom_hash(pom) + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    elapsed = time.monotonic() - started
    say(f"Kafka jars ready in {elapsed:.1f}s")
    return elapsed


def render_server_properties(
    template: str, *, host: str, port: int, controller_port: int, log_dir: Path
) -> str:
    """The broker's server.properties: the template with this stack's address and data directory."""
    if port == controller_port:
        raise ValueError("the Kafka listener and controller ports must differ")
    return Template(template).substitute(
        host=host, port=port, controller_port=controller_port, log_dir=str(log_dir)
    )


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in unpadded base64url (22 characters), as kafka-storage makes.

    Like Kafka's own ``Uuid.randomUuid()``, ids starting with ``-`` are drawn again: StorageTool would read
    ``-t -abc...`` as an option (about one start in 64 failed before this).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise RuntimeError("Java 17+ is needed for Kafka 4: apt-get install -y openjdk-17-jre-headless")
    return found


class KafkaLayout:
    """Where one stack's broker keeps its config and data."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.dir = settings.kafka_dir
        self.data = self.dir / "data"
        self.properties = self.dir / "server.properties"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = render_server_properties(
            KAFKA_PROPERTIES_TEMPLATE.read_text(),
            host=self.settings.host,
            port=self.settings.kafka_port,
            controller_port=self.settings.kafka_controller_port,
            log_dir=self.data,
        )
        self.properties.write_text(text)

    def formatted(self) -> bool:
        return (self.data / "meta.properties").is_file()

    def java_command(self, main_class: str, *args: str, heap: str | None = None) -> list[str]:
        command = [java()]
        if heap:
            command += [f"-Xms{min_heap(heap)}", f"-Xmx{heap}"]
        command += [
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J_CONFIG}",
            "-cp",
            f"{self.settings.kafka_libs}/*",
            main_class,
            *args,
        ]
        return command

    def format_command(self) -> list[str]:
        # --standalone makes this node the single voter of a dynamic KRaft quorum (KIP-853), the 4.x way
        # that goes with controller.quorum.bootstrap.servers.
        return self.java_command(
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            new_cluster_id(),
            "-c",
            str(self.properties),
            heap="256m",
        )

    def broker_command(self) -> list[str]:
        return self.java_command("kafka.Kafka", str(self.properties), heap=self.settings.kafka_heap)


def min_heap(heap: str) -> str:
    """-Xms for a given -Xmx: half of it, at most 512m, so a small machine isn't committed up front."""
    units = {"k": 1, "m": 1024, "g": 1024 * 1024}
    suffix = heap[-1].lower()
    if suffix not in units or not heap[:-1].isdigit():
        raise ValueError(f"heap size must look like 512m or 1g, not {heap!r}")
    kib = int(heap[:-1]) * units[suffix]
    return f"{min(kib // 2, 512 * 1024) // 1024}m"
