"""The files growth reads (flags, onboarding, activation): loaded and validated by ``run_service`` before the
service builds (``--check-config`` summarises them), then handed to ``build_app`` (``files=``)."""

from __future__ import annotations

from typing import Any

from services.activation import ActivationConfig, load_activation
from services.growth.config import GrowthSettings
from services.growth.flagstore import load_flags_file
from services.growth.onboarding import OnboardingConfig, load_onboarding_checked
from services.kernel.service import ConfigFile
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


FLAGS_FILE: ConfigFile[GrowthSettings] = ConfigFile(
    "flags", lambda s: load_flags_file(s.flags_path), _flags_summary
)
# Completion actions name flags and plan features: checked against those files (every error at once).
ONBOARDING_FILE: ConfigFile[GrowthSettings] = ConfigFile(
    "onboarding",
    lambda s: load_onboarding_checked(
        s.onboarding_path, load_flags_file(s.flags_path), load_config().feature_names
    ),
    _onboarding_summary,
)
ACTIVATION_FILE: ConfigFile[GrowthSettings] = ConfigFile(
    "activation", lambda s: load_activation(s.activation_path), _activation_summary
)
CONFIG_FILES = [FLAGS_FILE, ONBOARDING_FILE, ACTIVATION_FILE]
