"""``python -m services.growth``: run the growth service (flags, activation, onboarding; HTTP :8085).

``--check-config`` validates the settings and the flags, onboarding and activation files, prints them with
secrets masked and exits.
"""

from __future__ import annotations

from typing import Any

from services.activation import ActivationConfig, load_activation
from services.growth.app import SERVICE, build_app
from services.growth.config import GrowthSettings
from services.growth.flagstore import load_flags_file
from services.growth.onboarding import OnboardingConfig, load_onboarding_checked
from services.kernel.service import ConfigFile, HttpOptions, run_service
from services.plans.loader import load_config


def _flags_summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "flags": [f["key"] for f in doc.get("flags") or []],
        "segments": sorted(doc.get("segments") or {}),
    }


def _onboarding_summary(config: OnboardingConfig) -> dict[str, Any]:
    return {
        "flow_flag": config.flow_flag,
        "default_flow": config.default_flow,
        "flows": {name: [s.id for s in flow.steps] for name, flow in config.flows.items()},
        "on_complete": {
            f"{name}/{s.id}": [{a.kind: a.detail()} for a in s.actions]
            for name, flow in config.flows.items()
            for s in flow.steps
            if s.actions
        },
    }


def _activation_summary(config: ActivationConfig) -> dict[str, Any]:
    return {
        "plans": sorted(config.plans),
        "north_star": config.north_star,
        "thresholds": {
            t.name: f"{t.event} >= {t.count}" + (f" in {t.window_days} d" if t.window_days else "")
            for t in config.thresholds
        },
    }


CONFIG_FILES: list[ConfigFile[GrowthSettings]] = [
    ConfigFile("flags", lambda s: load_flags_file(s.flags_path), _flags_summary),
    # Completion actions name flags and plan features: checked against those files (every error at once).
    ConfigFile(
        "onboarding",
        lambda s: load_onboarding_checked(
            s.onboarding_path, load_flags_file(s.flags_path), load_config().feature_names
        ),
        _onboarding_summary,
    ),
    ConfigFile("activation", lambda s: load_activation(s.activation_path), _activation_summary),
]


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
