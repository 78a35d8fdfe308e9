"""Structured logs for every service: one JSON object per line on stderr (or readable text locally).

Each line carries ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``service``, ``logger``, ``msg``,
every ``extra={...}`` field given to the call, and ``exc`` with the traceback when there is one.

Secrets never reach the output: values of fields whose name looks secret (``password``, ``token``,
``secret``, ``api_key``, ``authorization``, ``dsn``...) are replaced by ``"**********"``, pydantic
``SecretStr`` values print masked by themselves, and passwords embedded in URLs
(``postgresql://user:pw@host``) are masked in messages and field values alike.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import orjson

MASK = "**********"

_SECRET_NAME = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|authorization|credential|private[_-]?key|dsn|cookie",
    re.IGNORECASE,
)
# scheme://user:password@host  →  scheme://user:**********@host
_URL_PASSWORD = re.compile(r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<pw>[^@\s/]+)(?P<at>@)")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)


def redact_text(text: str) -> str:
    """Mask passwords embedded in URLs."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(lambda m: f"{m.group('prefix')}{MASK}{m.group('at')}", text)


def redact(name: str, value: Any) -> Any:
    """The value to log for field ``name``: masked if the name looks secret, URL passwords masked."""
    if _SECRET_NAME.search(name):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(name, v) for v in value]
    return value


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: redact(key, value)
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _default(value: Any) -> Any:
    # Anything orjson cannot serialise (SecretStr, Decimal, Path, exceptions...) logs as its str();
    # SecretStr's str() is the mask.
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        for key, value in _extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc"] = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip())
        if record.stack_info:
            entry["stack"] = record.stack_info
        return orjson.dumps(entry, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """Human-readable single line: ``ts LEVEL service logger: msg key=value ...``."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extra_fields(record).items())
        line = (
            f"{_timestamp(record)} {record.levelname:<7} {self.service} {record.name}: "
            f"{redact_text(record.getMessage())}"
        )
        if fields:
            line += f" {fields}"
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip())
        return line


def log_settings(logger: logging.Logger, name: str, settings: Any) -> None:
    """Log a pydantic settings object at start-up, secrets masked (``SecretStr`` dumps as stars, secret
    field names and URL passwords are masked by :func:`redact`)."""
    dumped = settings.model_dump(mode="json") if hasattr(settings, "model_dump") else dict(settings)
    logger.info("settings", extra={"settings_of": name, "settings": redact("settings", dumped)})


def configure_logging(
    service: str,
    level: str | int = "INFO",
    fmt: Literal["json", "text"] | str = "json",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route all logging of the process to one stderr handler in ``fmt``; returns that handler.

    Safe to call again (tests, reconfiguration): the handler it installed before is replaced.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    handler.set_name("plg")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "plg"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Chatty libraries: their INFO lines are per request/connection.
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
