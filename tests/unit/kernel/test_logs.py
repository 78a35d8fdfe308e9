"""Structured logs: one JSON object per line, extra fields kept, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from services.kernel.logs import MASK, configure_logging, log_settings, redact_text
from services.kernel.settings import SchemaRegistrySettings


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("metering", "DEBUG", "json", stream=stream)
    try:
        yield stream, logging.getLogger("services.metering.app")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_log_line_is_one_json_object_with_the_standard_fields(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured

    log.info("window closed for %s", "cus_1", extra={"window": "2024-05-29T16:00", "records": 12})

    (entry,) = lines(stream)
    assert entry["level"] == "INFO"
    assert entry["service"] == "metering"
    assert entry["logger"] == "services.metering.app"
    assert entry["msg"] == "window closed for cus_1"
    assert entry["window"] == "2024-05-29T16:00"
    assert entry["records"] == 12
    assert isinstance(entry["ts"], str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


def test_exceptions_are_logged_with_their_traceback(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured

    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")

    (entry,) = lines(stream)
    assert entry["level"] == "ERROR"
    assert "ValueError: boom" in str(entry["exc"])
    assert "Traceback" in str(entry["exc"])


def test_secret_fields_and_url_passwords_never_reach_the_output(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured

    log.info(
        "connecting to postgresql://plg:hunter2@db:5432/plg",
        extra={
            "password": "hunter2",
            "admin_token": "tok-123",
            "api_key": "plg_live_abc",
            "database_url": "postgresql://plg:hunter2@db/plg",
            "settings": {"stripe_secret_key": "sk_live_1", "url": "http://u:pw@x"},
            "secret_str": SecretStr("hunter2"),
        },
    )

    output = stream.getvalue()
    for secret in ("hunter2", "tok-123", "plg_live_abc", "sk_live_1", ":pw@"):
        assert secret not in output
    (entry,) = lines(stream)
    assert entry["msg"] == f"connecting to postgresql://plg:{MASK}@db:5432/plg"
    assert entry["password"] == MASK
    assert entry["database_url"] == f"postgresql://plg:{MASK}@db/plg"


def test_text_format_is_one_readable_line(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream = io.StringIO()
    configure_logging("ingest", "INFO", "text", stream=stream)

    logging.getLogger("x").warning("slow request", extra={"ms": 250})

    (line,) = stream.getvalue().splitlines()
    assert "WARNING" in line
    assert line.endswith("ingest x: slow request ms=250")


def test_reconfiguring_replaces_the_handler_instead_of_doubling_lines(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream = io.StringIO()
    configure_logging("ingest", "INFO", "json", stream=stream)
    configure_logging("ingest", "INFO", "json", stream=stream)

    logging.getLogger("x").info("once")

    assert len(stream.getvalue().splitlines()) == 1


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json"):
        configure_logging("ingest", "INFO", "xml")


def test_redact_text_leaves_urls_without_passwords_alone() -> None:
    assert redact_text("http://127.0.0.1:8081/subjects") == "http://127.0.0.1:8081/subjects"
    assert redact_text("postgresql://plg@127.0.0.1:5433/plg") == "postgresql://plg@127.0.0.1:5433/plg"


def test_settings_are_logged_with_secrets_masked(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured

    log_settings(
        log, "registry", SchemaRegistrySettings(url="http://u:pw@registry", admin_token=SecretStr("tok-1"))
    )

    (entry,) = lines(stream)
    assert entry["settings"] == {"url": f"http://u:{MASK}@registry", "admin_token": MASK}
    assert "tok-1" not in stream.getvalue()
