"""``python -m services.ingest``: run the ingest HTTP API (uvicorn, uvloop, httptools).

``--check-config`` validates the settings, prints them with secrets hidden and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from typing import Any

import uvicorn
from pydantic import ValidationError

from services.ingest.config import IngestSettings
from services.kernel.logs import configure_logging, log_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ingest", description="plg ingest HTTP API")
    parser.add_argument("--check-config", action="store_true", help="validate the settings and exit")
    args = parser.parse_args(argv)
    try:
        settings = IngestSettings()
    except ValidationError as exc:
        print(f"invalid ingest settings:\n{exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(settings.model_dump_json(indent=2))
        return 0
    configure_logging("ingest", settings.platform.log_level, settings.platform.log_format)
    log_settings(logging.getLogger("services.ingest"), "ingest", settings)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,  # keep the kernel's structured logging
        "access_log": False,  # one line per request would cost more than the request at 50k events/s
        "timeout_graceful_shutdown": 15,
    }
    if settings.workers > 1:
        # Each worker process builds its own app (producer, caches) from the same environment. Their
        # metrics are pooled through files (prometheus-client's multiprocess mode) so /metrics, whichever
        # worker answers it, reports the whole service. The variable must be set before the workers start.
        with tempfile.TemporaryDirectory(prefix="plg-ingest-metrics-") as metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            uvicorn.run("services.ingest.app:create_app", factory=True, workers=settings.workers, **common)
    else:
        from services.ingest.app import build_app

        uvicorn.run(build_app(settings), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
