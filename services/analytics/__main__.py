"""``python -m services.analytics``: the analytics store and its API (port 8086).

``--check-config`` validates the settings and activation.yaml (north star, thresholds), prints them with
secrets masked and exits.
"""

from __future__ import annotations

from typing import Any

from services.activation import ActivationConfig, load_activation
from services.analytics.app import SERVICE, build_app
from services.analytics.config import AnalyticsSettings
from services.kernel.service import ConfigFile, HttpOptions, run_service


def _summary(config: ActivationConfig) -> dict[str, Any]:
    return {"north_star": config.north_star, "thresholds": [t.name for t in config.thresholds]}


def main(argv: list[str] | None = None) -> int:
    return run_service(
        SERVICE,
        AnalyticsSettings,
        build_app,
        http=HttpOptions(),
        config_files=[ConfigFile("activation", lambda s: load_activation(s.activation_path), _summary)],
        argv=argv,
        description=__doc__,
    )


if __name__ == "__main__":
    raise SystemExit(main())
