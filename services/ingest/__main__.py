"""``python -m services.ingest``: run the ingest HTTP API (uvicorn, uvloop, httptools).

``--check-config`` validates the settings, prints them with secrets hidden and exits.
"""

from __future__ import annotations

from services.ingest.app import SERVICE, build_app
from services.ingest.config import IngestSettings
from services.kernel.service import HttpOptions, run_service


def http_options(settings: IngestSettings) -> HttpOptions:
    # Several workers: each process builds its own app (producer, key cache, rate-limit buckets).
    return HttpOptions(
        timeout_graceful_shutdown=15, workers=settings.workers, factory="services.ingest.app:create_app"
    )


def main(argv: list[str] | None = None) -> int:
    return run_service(SERVICE, IngestSettings, build_app, http=http_options, argv=argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
