"""One way to start a service: ``run_service(...)`` is every ``__main__.py``.

It parses the command line (``--check-config``), loads and validates the settings and the service's own
config files (every error at once, exit 2), prints (``--check-config``) or logs (at start) them with every
secret masked, owns the process's :class:`~services.kernel.lifecycle.Lifecycle` and maps the way the
service ended to an exit status. Two shapes of service:

* a **worker** (Kafka consumer, no HTTP API): ``build(settings, lifecycle)`` returns an object with
  ``run(stop: threading.Event)``; SIGTERM/SIGINT set ``stop``; the ops endpoints (``/metrics``,
  ``/livez``, ``/readyz``) are served on ``settings.host:settings.port`` with the checks of the worker's
  ``readiness`` mapping (if it has one);
* an **HTTP service**: ``build(settings, lifecycle)`` returns an ASGI app whose lifespan opens its resources
  on the lifecycle and closes it; uvicorn serves it (uvloop, httptools, no access log, the kernel's logging)
  and handles the signals itself (stop accepting, drain, lifespan shutdown).

Exit status: 0 clean stop, 1 crash (logged with its traceback), 2 invalid configuration, 3 fatal Kafka error
(e.g. fenced by a newer instance: the orchestrator restarts it).

    def main() -> int:
        return run_service("entitlements", EntitlementsSettings, build_app, http=HttpOptions(),
                           config_files=[PLANS_FILE])
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar, cast

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from services.kernel.errors import KafkaFatalError
from services.kernel.lifecycle import Lifecycle, install_signal_handlers
from services.kernel.logs import configure_logging, log_settings, redact, redact_model
from services.kernel.ops import OpsServer, ReadinessCheck
from services.kernel.settings import LOCAL, PRODUCTION, DevDefault, ServiceSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_INVALID_CONFIG = 2
EXIT_FATAL_KAFKA = 3

S = TypeVar("S", bound=ServiceSettings)


class Worker(Protocol):
    """What a worker's ``build`` returns. ``run`` returns once ``stop`` is set (or raises). A worker may also
    have ``readiness: Mapping[str, () -> bool]`` for ``/readyz``."""

    def run(self, stop: threading.Event) -> None: ...


class ConfigInvalid(ValueError):
    """The configuration cannot be used; ``errors`` lists every problem, each a line for the operator."""

    def __init__(self, what: str, errors: Sequence[str]) -> None:
        self.what = what
        self.errors = list(errors)
        super().__init__(f"invalid {what}:\n" + "\n".join(f"  - {e}" for e in self.errors))


#: The config files ``run_service`` loaded (``ConfigFile.name`` -> what its ``load`` returned); a service that
#: declares config files receives them in ``build(settings, lifecycle, files=...)``.
LoadedFiles = Mapping[str, Any]


@dataclass(frozen=True)
class ConfigFile(Generic[S]):
    """A file of the service's own that its settings point to (e.g. the meters-and-plans file).

    ``load(settings)`` reads and validates it, raising ``ValueError`` (``.errors``, a list of lines, is
    printed one per line when present) for an invalid file; ``summary(loaded)`` is what ``--check-config``
    prints and the start-up log shows of it (a JSON-able mapping, redacted like the settings).
    """

    name: str
    load: Callable[[S], Any]
    summary: Callable[[Any], Mapping[str, Any]]

    def of(self, settings: S, files: LoadedFiles | None) -> Any:
        """The file as ``run_service`` loaded and validated it (``files``, what ``build`` receives): a
        service never reads it twice. Read here only when ``build`` runs without them (tests, docs)."""
        if files is not None and self.name in files:
            return files[self.name]
        return self.load(settings)


@dataclass(frozen=True)
class HttpOptions:
    """How uvicorn serves an HTTP service.

    ``workers > 1`` needs ``factory``, the import string of a no-argument function building the app in each
    worker process (``"services.ingest.app:create_app"``); their metrics are pooled through
    ``PROMETHEUS_MULTIPROC_DIR``, which is set to a temporary directory for them.
    """

    timeout_graceful_shutdown: int | None = None
    workers: int = 1
    factory: str | None = None


# -- settings and config files ------------------------------------------------------------------------


def _env_name(settings_type: type[BaseSettings], loc: Sequence[Any]) -> str:
    prefix = str(settings_type.model_config.get("env_prefix") or "")
    return f"{prefix}{loc[0]}".upper() if loc else prefix.rstrip("_")


def _lines(exc: ValidationError, settings_type: type[BaseSettings], where: str = "") -> list[str]:
    # Our own rendering: pydantic's str(exc) shows each input value, which may be a secret.
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        name = ".".join([where, *loc] if where else loc) or settings_type.__name__
        line = f"{name} ({_env_name(settings_type, loc)}): {err['msg']}"
        value = err.get("input")
        if loc and isinstance(value, str | int | float | bool) and value != "":
            line += f" (got {json.dumps(redact(loc[-1], value))})"
        out.append(line)
    return out


def load_settings(settings_type: type[S]) -> S:
    """The settings from the environment, or :class:`ConfigInvalid` listing every problem at once.

    A nested group (``KAFKA_*``...) that fails validation would stop pydantic at its first group; each group
    is therefore tried on its own too, so a bad ``KAFKA_EXTRA`` and a bad ``INGEST_PORT`` show together.
    """
    try:
        return settings_type()
    except (ValidationError, SettingsError) as first:
        errors: list[str] = []
        stand_ins: dict[str, Any] = {}
        for name, field in settings_type.model_fields.items():
            group = field.default_factory
            if not (isinstance(group, type) and issubclass(group, BaseSettings)):
                continue
            try:
                group()
            except ValidationError as exc:
                errors.extend(_lines(exc, group, name))
                stand_ins[name] = group.model_construct()
            except SettingsError as exc:
                errors.append(f"{name}: {exc}")
                stand_ins[name] = group.model_construct()
        try:
            settings_type(**stand_ins)
        except ValidationError as exc:
            errors.extend(_lines(exc, settings_type))
        except SettingsError as exc:
            errors.append(str(exc))
        if not errors:  # pragma: no cover - the first attempt failed for a reason the retry did not see
            errors.append(
                str(first) if isinstance(first, SettingsError) else "; ".join(_lines(first, settings_type))
            )
        raise ConfigInvalid(f"settings ({settings_type.__name__})", errors) from None


def load_config_files(settings: S, files: Sequence[ConfigFile[S]]) -> dict[str, Any]:
    """Each file loaded (name -> what its ``load`` returned), or :class:`ConfigInvalid` with every error."""
    loaded: dict[str, Any] = {}
    errors: list[str] = []
    for spec in files:
        try:
            loaded[spec.name] = spec.load(settings)
        except (ValueError, OSError) as exc:
            listed = getattr(exc, "errors", None)
            source = getattr(exc, "source", None)
            head = f"{spec.name}" + (f" ({source})" if source else "")
            if isinstance(listed, list) and listed:
                errors.extend(f"{head}: {e}" for e in listed)
            else:
                errors.append(f"{head}: {exc}")
    if errors:
        raise ConfigInvalid("configuration files", errors)
    return loaded


def check_production(settings: ServiceSettings) -> list[DevDefault]:
    """The development defaults ``settings`` use; in production they are :class:`ConfigInvalid`, all listed.

    Each service's settings declare theirs (``development_defaults()``: the Stripe test key, the PII key,
    an open registry...); the kernel adds the platform's (topic replication) and every secret set empty.
    """
    found = settings.development_defaults()
    if found and settings.platform.environment == PRODUCTION:
        raise ConfigInvalid(
            "settings for PLG_ENVIRONMENT=production: development defaults in use", [str(d) for d in found]
        )
    return found


def describe(
    settings: ServiceSettings,
    files: Sequence[ConfigFile[Any]],
    loaded: Mapping[str, Any],
    dev_defaults: Sequence[DevDefault] = (),
) -> dict[str, Any]:
    """What ``--check-config`` prints: the settings, a summary of each config file (secrets masked) and the
    development defaults still in use."""
    doc: dict[str, Any] = {"settings": redact_model(settings)}
    if files:
        doc["files"] = {spec.name: redact(spec.name, dict(spec.summary(loaded[spec.name]))) for spec in files}
    doc["development_defaults"] = [str(d) for d in dev_defaults]
    return doc


# -- running ------------------------------------------------------------------------------------------


def exit_code(exc: BaseException) -> int:
    """The exit status for an error that ended the service."""
    if isinstance(exc, KafkaFatalError):
        return EXIT_FATAL_KAFKA
    if isinstance(exc, ConfigInvalid | ValidationError):
        return EXIT_INVALID_CONFIG
    return EXIT_CRASH


def _log_fatal(service: str, exc: BaseException) -> None:
    if isinstance(exc, KafkaFatalError):
        log.error(
            "fatal Kafka error (fenced by a newer instance?); exiting for a restart",
            extra={"service": service},
            exc_info=exc,
        )
    else:
        log.error("service crashed", extra={"service": service}, exc_info=exc)


def _readiness(worker: Any) -> Mapping[str, ReadinessCheck]:
    checks = getattr(worker, "readiness", None)
    if callable(checks):
        checks = checks()
    return dict(checks or {})


def _run_worker(service: str, settings: ServiceSettings, build: Callable[[Any, Lifecycle], Worker]) -> int:
    stop = threading.Event()
    install_signal_handlers(stop)
    life = Lifecycle(service, stop)
    try:
        worker = build(settings, life)
        life.push(OpsServer(settings.host, settings.port, readiness=_readiness(worker)).start(), "ops server")
        worker.run(stop)
    except Exception as exc:
        _log_fatal(service, exc)
        return exit_code(exc)
    finally:
        life.close()
    log.info("stopped", extra={"service": service})
    return EXIT_OK


class _ErrorRecorder:
    """Wraps an ASGI app to remember the exception that escaped it (a failed lifespan start-up): uvicorn
    only logs it and exits with its own status, and ours depends on what failed."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.error: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if scope.get("type") == "lifespan":
                self.error = exc
            raise


def _uvicorn_options(settings: ServiceSettings, http: HttpOptions) -> dict[str, Any]:
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,  # keep the kernel's structured logging
        "access_log": False,  # request counts and latencies are on /metrics; a line per request costs more
        "lifespan": "on",  # a failing start-up must stop the process, not be taken for "no lifespan"
    }
    if http.timeout_graceful_shutdown is not None:
        options["timeout_graceful_shutdown"] = http.timeout_graceful_shutdown
    return options


def _run_http(
    service: str, settings: ServiceSettings, build: Callable[[Any, Lifecycle], Any], http: HttpOptions
) -> int:
    import uvicorn

    options = _uvicorn_options(settings, http)
    if http.workers > 1:
        if http.factory is None:
            raise ValueError(f"{service}: workers > 1 needs HttpOptions.factory (an import string)")
        # Each worker process builds its own app (and Lifecycle) from the same environment; their metrics
        # are pooled through files so /metrics, whichever worker answers, reports the whole service. The
        # variable must be set before the workers start.
        with tempfile.TemporaryDirectory(prefix=f"plg-{service}-metrics-") as metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            uvicorn.run(http.factory, factory=True, workers=http.workers, **options)
        return EXIT_OK
    life = Lifecycle(service)
    try:
        try:
            app = _ErrorRecorder(build(settings, life))
        except Exception as exc:
            _log_fatal(service, exc)
            return exit_code(exc)
        server = uvicorn.Server(uvicorn.Config(app, **options))
        try:
            with contextlib.suppress(KeyboardInterrupt):
                server.run()
        except SystemExit as exc:
            # uvicorn exits on a failed start-up (its status 3, which is our "fatal Kafka error") or a port
            # it cannot bind (1); it has logged why.
            if app.error is not None:
                return exit_code(app.error)
            return exc.code if isinstance(exc.code, int) and exc.code != EXIT_FATAL_KAFKA else EXIT_CRASH
    finally:
        life.close()  # the lifespan has closed it already unless start-up failed before it ran
    if not server.started:
        return exit_code(app.error) if app.error is not None else EXIT_CRASH
    log.info("stopped", extra={"service": service})
    return EXIT_OK


def run_service(
    service: str,
    settings_type: type[S],
    build: Callable[[S, Lifecycle], Any],
    *,
    http: HttpOptions | Callable[[S], HttpOptions] | None = None,
    config_files: Sequence[ConfigFile[S]] = (),
    argv: Sequence[str] | None = None,
    description: str | None = None,
    prog: str | None = None,
) -> int:
    """Start ``service``: returns the process's exit status (``raise SystemExit(run_service(...))``).

    ``http`` makes it an HTTP service (``build`` returns an ASGI app), else a worker (``build`` returns a
    :class:`Worker`). ``config_files`` are validated before ``build`` runs and summarised by
    ``--check-config``; ``build`` then receives them, loaded, as ``files=`` (:data:`LoadedFiles`:
    ``ConfigFile.of(settings, files)``) instead of reading them again.
    """
    # python -m services.ingest, from where build lives (services.ingest.app).
    module = getattr(build, "__module__", "") or ""
    default_prog = f"python -m {module.rsplit('.', 1)[0]}" if module.count(".") >= 2 else service
    parser = argparse.ArgumentParser(prog=prog or default_prog, description=description)
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings and config files, print them with secrets masked, and exit",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(settings_type)
        problems: list[str] = []
        try:
            loaded = load_config_files(settings, config_files)
        except ConfigInvalid as exc:
            problems.extend(exc.errors)
        try:
            dev_defaults = check_production(settings)
        except ConfigInvalid as exc:
            problems.extend(exc.errors)
        if problems:  # the files' errors and production's refusals together: one round trip to fix them all
            what = "configuration" + (
                f" (PLG_ENVIRONMENT={PRODUCTION} refuses development defaults)"
                if settings.platform.environment == PRODUCTION
                else ""
            )
            raise ConfigInvalid(what, problems)
    except ConfigInvalid as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    warn = settings.platform.environment != LOCAL
    if args.check_config:
        if warn:
            for default in dev_defaults:
                print(f"{service}: warning: development default in use: {default}", file=sys.stderr)
        print(json.dumps(describe(settings, config_files, loaded, dev_defaults), indent=2))
        return EXIT_OK
    configure_logging(service, settings.platform.log_level, settings.platform.log_format)
    log_settings(log, service, settings)
    if warn:
        for default in dev_defaults:
            log.warning(
                "development default in use (PLG_ENVIRONMENT=%s; production refuses it): %s",
                settings.platform.environment,
                default,
                extra={"variable": default.variable},
            )
    for spec in config_files:
        log.info(
            "config file",
            extra={"file": spec.name, "summary": redact(spec.name, dict(spec.summary(loaded[spec.name])))},
        )
    if config_files:
        build = partial(cast(Callable[..., Any], build), files=loaded)
    if http is None:
        return _run_worker(service, settings, build)
    options = http(settings) if callable(http) else http
    return _run_http(service, settings, build, options)
