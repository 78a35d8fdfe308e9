"""``python -m services.growth``: run the growth service (flags, activation, onboarding; HTTP :8085).

``--check-config`` validates the settings and the flags, onboarding and activation files, prints them with
secrets masked and exits.
"""

from __future__ import annotations

from services.growth.app import SERVICE, build_app
from services.growth.config import GrowthSettings
from services.growth.files import CONFIG_FILES
from services.kernel.service import HttpOptions, run_service


def main(argv: list[str] | None = None) -> int:
    return run_service(
        SERVICE,
        GrowthSettings,
        build_app,
        http=HttpOptions(timeout_graceful_shutdown=5),
        config_files=CONFIG_FILES,
        argv=argv,
        description=__doc__,
    )


if __name__ == "__main__":
    raise SystemExit(main())
