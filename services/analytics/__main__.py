"""``python -m services.analytics``: the analytics store and its API (port 8086).

``--check-config`` validates the settings and activation.yaml (north star, thresholds), prints them with
secrets masked and exits.
"""

from __future__ import annotations

from services.analytics.app import ACTIVATION_FILE, SERVICE, build_app
from services.analytics.config import AnalyticsSettings
from services.kernel.service import HttpOptions, run_service


def main(argv: list[str] | None = None) -> int:
    return run_service(
        SERVICE,
        AnalyticsSettings,
        build_app,
        http=HttpOptions(),
        config_files=[ACTIVATION_FILE],
        argv=argv,
        description=__doc__,
    )


if __name__ == "__main__":
    raise SystemExit(main())
