"""The local stack's pure parts: the broker config, ports, jar stamps, pid files, the service list."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.devstack import kafka
from services.devstack.apps import APP_SERVICES, SCHEMA_REGISTRY, AppService
from services.devstack.config import KAFKA_PROPERTIES_TEMPLATE, StackSettings, free_ports, private_settings
from services.devstack.processes import rotate, running_pid, write_pidfile


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _render(**overrides: object) -> dict[str, str]:
    args: dict[str, object] = {"host": "127.0.0.1", "port": 19092, "controller_port": 19093}
    args.update(overrides)
    text = kafka.render_server_properties(
        KAFKA_PROPERTIES_TEMPLATE.read_text(),
        log_dir=Path("/data/kafka"),
        **args,  # type: ignore[arg-type]
    )
    assert "$" not in text, "every placeholder must be filled in"
    return _properties(text)


def test_broker_config_is_a_single_kraft_node_listening_on_the_given_loopback_ports():
    props = _render()
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"].startswith("PLAINTEXT://127.0.0.1:19092")
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["log.dirs"] == "/data/kafka"


def test_broker_config_lets_transactions_and_groups_work_on_one_node():
    props = _render()
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["share.coordinator.state.topic.replication.factor"] == "1"
    assert props["share.coordinator.state.topic.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_broker_never_creates_topics_on_its_own():
    assert _render()["auto.create.topics.enable"] == "false"


def test_broker_config_refuses_one_port_for_listener_and_controller():
    with pytest.raises(ValueError, match="differ"):
        _render(port=9092, controller_port=9092)


def test_cluster_ids_look_like_kafka_storage_ones():
    ids = {kafka.new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert len(cid) == 22
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


@pytest.mark.parametrize(("heap", "xms"), [("1g", "512m"), ("512m", "256m"), ("4g", "512m")])
def test_initial_heap_is_half_the_maximum_capped_at_512m(heap, xms):
    assert kafka.min_heap(heap) == xms


def test_nonsense_heap_size_is_refused():
    with pytest.raises(ValueError, match="heap"):
        kafka.min_heap("lots")


def test_jars_are_refetched_only_when_the_pom_changes(tmp_path):
    pom = tmp_path / "pom.xml"
    pom.write_text("<project>one</project>")
    libs = tmp_path / "libs"
    assert not kafka.jars_current(libs, pom)
    libs.mkdir()
    (libs / kafka.STAMP_NAME).write_text(kafka.pom_hash(pom) + "\n")
    assert kafka.jars_current(libs, pom)
    assert kafka.ensure_jars(libs, pom, say=lambda _m: None) is None  # stamp matches: no Maven run
    pom.write_text("<project>two</project>")
    assert not kafka.jars_current(libs, pom)


def test_free_ports_are_distinct():
    ports = free_ports(6)
    assert len(set(ports)) == 6
    assert all(1024 <= p <= 65535 for p in ports)


def test_private_stack_settings_use_their_own_root_and_ports_but_share_the_jars(tmp_path):
    default = StackSettings()
    private = private_settings(tmp_path)
    assert private.root == tmp_path
    assert private.logs_dir == tmp_path / "logs"
    assert private.kafka_libs == default.kafka_libs
    ports = {private.kafka_port, private.kafka_controller_port, private.postgres_port, private.registry_port}
    assert len(ports) == 4
    assert private.kafka_bootstrap == f"127.0.0.1:{private.kafka_port}"
    assert private.database_url == f"postgresql://plg@127.0.0.1:{private.postgres_port}/plg"
    assert not private.with_apps


def test_stack_defaults_match_the_documented_addresses():
    settings = StackSettings(_env_file=None)
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.registry_url == "http://127.0.0.1:8081"
    assert settings.database_url == "postgresql://plg@127.0.0.1:5433/plg"
    assert settings.stripe_emulator_url == "http://127.0.0.1:12120"


def test_pidfile_names_a_live_process(tmp_path):
    pidfile = tmp_path / "me.pid"
    write_pidfile(pidfile, os.getpid())
    assert running_pid(pidfile) == os.getpid()


def test_pidfile_of_an_exited_process_is_stale(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pidfile = tmp_path / "gone.pid"
    write_pidfile(pidfile, child.pid)
    child.wait()
    assert running_pid(pidfile) is None


def test_pidfile_whose_pid_was_reused_by_another_process_is_stale(tmp_path):
    pidfile = tmp_path / "reused.pid"
    # Our own pid, but a start time that is not ours: what a recycled pid looks like.
    pidfile.write_text(f"{os.getpid()} 1\n")
    assert running_pid(pidfile) is None


def test_app_services_have_distinct_names_and_ports():
    services = [SCHEMA_REGISTRY, *APP_SERVICES]
    assert len({s.name for s in services}) == len(services)
    assert len({s.port for s in services}) == len(services)


def test_app_service_env_names_follow_its_prefix():
    app = AppService("ingest", "services.ingest", port=8080, env_prefix="INGEST_")
    assert (app.host_env, app.port_env) == ("INGEST_HOST", "INGEST_PORT")


def test_a_service_without_a_package_counts_as_not_implemented():
    assert not AppService("ghost", "services.no_such_service", port=1, env_prefix="GHOST_").implemented()


def test_a_log_past_its_size_limit_is_rotated_once_and_a_small_one_kept(tmp_path):
    log = tmp_path / "kafka.log"
    log.write_text("x" * 100)
    rotate(log, max_bytes=1000)
    assert log.read_text() == "x" * 100
    rotate(log, max_bytes=10)
    assert not log.exists()
    assert (tmp_path / "kafka.log.1").read_text() == "x" * 100


def test_cluster_ids_never_start_with_a_dash_which_storage_tool_would_read_as_an_option(monkeypatch):
    import uuid

    # The first UUID encodes to "-" + 21 chars (0xf8 -> '-' in base64url); the second does not.
    dashed = uuid.UUID(bytes=b"\xf8" + b"\x00" * 15)
    plain = uuid.UUID(bytes=b"\x00" * 16)
    draws = iter([dashed, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    assert kafka.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAA"
