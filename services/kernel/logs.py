"""Structured logs for every service: one JSON object per line on stderr (or readable text locally).

Each line carries ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``service``, ``logger``, ``msg``,
every ``extra={...}`` field given to the call, and ``exc`` with the traceback when there is one.

Secrets never reach the output: values of fields and keys whose name looks secret (``password``,
``token``, ``secret``, ``credentials``, ``api_key``, ``ssl.key``, every ``sasl.*``...) are replaced by
``"**********"`` at any depth (``KAFKA_EXTRA='{"sasl.password": ...}'`` included), pydantic ``SecretStr``
values are masked by type, and passwords embedded in URLs (``postgresql://user:pw@host``) or connection
strings (``password=pw``) are masked in messages and values alike. :func:`redact_model` is what
``--check-config`` prints and what a service logs at start.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, SecretBytes, SecretStr

MASK = "**********"

# Names of fields and keys whose values are secret wherever they appear: settings, dicts such as
# KAFKA_EXTRA's librdkafka properties, log ``extra=`` fields. Matching over-masks rather than leaks:
# "bypass_cache" is masked too, which costs a look at the config, never a credential.
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|credential|authori[sz]ation|cookie|dsn|"
    r"api[_.-]?key|private[_.-]?key|access[_.-]?key|signing[_.-]?key|jaas",
    re.IGNORECASE,
)
# ``key`` alone is secret as the last word of a name (``ssl.key``, ``client_key``) or before ``pem`` /
# ``password`` (``ssl.key.pem``); ``key_cache_ttl_seconds`` and ``key.serializer`` are not.
_KEY_WORD = re.compile(r"(^|[^a-z0-9])key([^a-z0-9]+(pem|password|data))?$", re.IGNORECASE)
# Every librdkafka ``sasl.*`` property (username, password, jaas config, oauthbearer secrets...).
_SECRET_PREFIX = re.compile(r"^sasl[._]", re.IGNORECASE)

# scheme://user:password@host  →  scheme://user:**********@host. The password runs to the last "@" of
# the word, so an unencoded "@" in it (p@ss) is masked whole rather than half shown.
_URL_PASSWORD = re.compile(
    r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@\"'<>]*:)(?P<pw>[^\s\"'<>]*)(?P<at>@)"
)
# password=... in libpq keyword strings ("host=h password=pw") and URL queries (?password=pw&...).
_KEYWORD_PASSWORD = re.compile(
    r"(?P<prefix>\b(?:password|passwd|pwd|sslpassword|secret|token|api_key)\s*=\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&;,\"']+)",
    re.IGNORECASE,
)

_Secret = (SecretStr, SecretBytes)

# Webhook URLs carry their secret in the path or query (Slack's /services/T0/B0/xyz, ?token=...): any
# field or key named like one shows only its scheme and host.
_WEBHOOK_NAME = re.compile(r"webhook", re.IGNORECASE)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)


def is_secret_name(name: str) -> bool:
    """True when a field or key called ``name`` holds a secret (its value is never shown)."""
    return bool(_SECRET_NAME.search(name) or _KEY_WORD.search(name) or _SECRET_PREFIX.search(name))


def mask_url(url: str) -> str:
    """``https://hooks.example.com/services/T0/B0/xyz?token=t`` → ``https://hooks.example.com/***``: the
    scheme, host and port stay (which endpoint it is), the user info, path and query go (they may be the
    credential)."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.hostname:
        return MASK
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment
    return f"{parts.scheme}://{host}" + ("/***" if hidden else "")


def redact_text(text: str) -> str:
    """Mask passwords embedded in URLs and ``password=`` pairs of connection strings."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group('prefix')}{MASK}{m.group('at')}", text)
    if "=" in text:
        text = _KEYWORD_PASSWORD.sub(lambda m: f"{m.group('prefix')}{MASK}", text)
    return text


def redact(name: str, value: Any) -> Any:
    """The value to log for field ``name``: masked if the name looks secret or the value is a pydantic
    ``SecretStr``/``SecretBytes``; inside mappings and lists each key is judged by its own name; strings
    have URL and connection-string passwords masked. The result is plain JSON-able data."""
    if value is None:
        return None
    if is_secret_name(name) or isinstance(value, _Secret):
        return MASK
    if isinstance(value, str):
        return mask_url(value) if _WEBHOOK_NAME.search(name) else redact_text(value)
    if isinstance(value, BaseModel):
        return redact_model(value)
    if isinstance(value, Mapping):
        return {str(k): redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(name, v) for v in value]
    if isinstance(value, bool | int | float):
        return value
    return redact_text(str(value))


def redact_model(model: BaseModel) -> dict[str, Any]:
    """A pydantic model (settings) as a JSON-able dict with every secret masked, for logs and
    ``--check-config``. Walks the model itself, not a dump, so a ``SecretStr`` anywhere is masked by
    type and every other value by its field's or key's name and its text."""
    out: dict[str, Any] = {}
    for field in type(model).model_fields:
        out[field] = redact(field, getattr(model, field))
    return out


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
    """Log a pydantic settings object at start-up, secrets masked (:func:`redact_model`)."""
    redacted = redact_model(settings) if isinstance(settings, BaseModel) else redact("settings", settings)
    logger.info("settings", extra={"settings_of": name, "settings": redacted})


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
