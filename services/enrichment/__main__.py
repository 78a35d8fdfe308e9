"""``python -m services.enrichment``: run the enrichment service (ops endpoints on :8093).

``--check-config`` validates the settings and the tracking plan (against the meters-and-plans file),
prints them with secrets masked and exits.
"""

from __future__ import annotations

from services.enrichment.app import build_app, plan_file
from services.enrichment.config import EnrichmentSettings
from services.enrichment.processor import SERVICE
from services.kernel.service import run_service


def main(argv: list[str] | None = None) -> int:
    return run_service(
        SERVICE, EnrichmentSettings, build_app, config_files=[plan_file()], argv=argv, description=__doc__
    )


if __name__ == "__main__":
    raise SystemExit(main())
