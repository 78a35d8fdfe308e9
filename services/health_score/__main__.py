"""``python -m services.health_score``: the health-score service, its API and the CS dashboard (port 8084).

``--check-config`` validates the settings, the metric registry (deploy/config/health.yaml) and the plans file
(seats per plan), prints them and exits.
"""

from __future__ import annotations

from services.health_score.app import PLANS_FILE, REGISTRY_FILE, SERVICE, build_app
from services.health_score.config import HealthSettings
from services.kernel.service import HttpOptions, run_service


def main(argv: list[str] | None = None) -> int:
    return run_service(
        SERVICE,
        HealthSettings,
        build_app,
        # SSE connections (the dashboard) never end by themselves: after 3 s of draining they are cut.
        http=HttpOptions(timeout_graceful_shutdown=3),
        # Both files it reads: the metric registry and the plans (seats per plan), so --check-config and
        # the start check them.
        config_files=[REGISTRY_FILE, PLANS_FILE],
        argv=argv,
        description=__doc__,
    )


if __name__ == "__main__":
    raise SystemExit(main())
