"""Meters and plans: the shared, pure configuration model and its loader (metering, billing, CLI)."""

from services.plans.loader import CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config
from services.plans.model import (
    THRESHOLD_PERCENTS,
    Aggregation,
    Meter,
    Plan,
    PlanMeter,
    PlansConfig,
    Tier,
)
from services.plans.periods import Granularity, Period, billing_period, window

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_CONFIG_PATH",
    "THRESHOLD_PERCENTS",
    "Aggregation",
    "ConfigError",
    "Granularity",
    "Meter",
    "Period",
    "Plan",
    "PlanMeter",
    "PlansConfig",
    "Tier",
    "billing_period",
    "load_config",
    "parse_config",
    "window",
]
