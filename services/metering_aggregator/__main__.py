"""``python -m services.metering_aggregator``: run the exactly-once metering aggregator.

``--check-config`` validates the settings and the meters-and-plans file, prints them and exits.
"""

from __future__ import annotations

from services.kernel.service import run_service
from services.metering_aggregator.app import build_app
from services.metering_aggregator.config import MeteringSettings
from services.metering_aggregator.processor import SERVICE
from services.plans.loader import plans_file


def main(argv: list[str] | None = None) -> int:
    return run_service(
        SERVICE, MeteringSettings, build_app, config_files=[plans_file()], argv=argv, description=__doc__
    )


if __name__ == "__main__":
    raise SystemExit(main())
