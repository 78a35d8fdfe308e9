"""Load and validate the meters-and-plans file, reporting every error in it at once.

Each meter and plan is validated on its own, so one bad entry does not hide the errors of the next, and
the cross-references (plans naming meters, upgrade paths) are checked on whatever parsed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from services.kernel.config import ConfigFileError, load_yaml
from services.kernel.config import config_path as kernel_config_path
from services.plans.model import Meter, Plan, PlansConfig, cross_reference_errors

if TYPE_CHECKING:
    from services.kernel.service import ConfigFile

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "deploy" / "config" / "metering.yaml"
# The one variable every service reads to find the file (billing and the CLI use the same one).
CONFIG_PATH_ENV = "PLG_METERING_CONFIG"


#: What the file is called in its errors.
WHAT = "meters-and-plans config"
#: The one config error of every service (services.kernel.config), under the name this module always used.
ConfigError = ConfigFileError


def _format(prefix: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}.{loc}" if loc else prefix
        out.append(f"{where}: {err['msg']}")
    return out


def _validate_items(
    raw: Any, key: str, model: type[BaseModel], errors: list[str], failed: set[str] | None = None
) -> list[Any]:
    if raw is None:
        errors.append(f"{key}: missing (a list is required)")
        return []
    if not isinstance(raw, list):
        errors.append(f"{key}: must be a list, got {type(raw).__name__}")
        return []
    if not raw:
        errors.append(f"{key}: must not be empty")
    parsed = []
    adapter: TypeAdapter[Any] = TypeAdapter(model)
    for i, item in enumerate(raw):
        label = f"{key}[{i}]"
        if isinstance(item, dict) and isinstance(item.get("slug"), str):
            label += f" ({item['slug']})"
        try:
            parsed.append(adapter.validate_python(item))
        except ValidationError as exc:
            errors.extend(_format(label, exc))
            if failed is not None and isinstance(item, dict) and isinstance(item.get("slug"), str):
                failed.add(item["slug"])
    return parsed


def parse_config(data: Any, source: str = "<config>") -> PlansConfig:
    """Validate an already-parsed document (a dict); raises ``ConfigError`` listing all problems."""
    if not isinstance(data, dict):
        raise ConfigFileError(source, [f"the document must be a mapping, got {type(data).__name__}"], WHAT)
    errors: list[str] = []
    known = {"version", "effective_date", "currency", "rounding", "tax", "meters", "plans", "top_ups"}
    errors.extend(f"{k}: unknown key" for k in sorted(set(data) - known, key=str))
    meters = _validate_items(data.get("meters"), "meters", Meter, errors)
    # A plan with errors of its own is not also reported as an unknown upgrade target.
    unparsed_plans: set[str] = set()
    plans = _validate_items(data.get("plans"), "plans", Plan, errors, unparsed_plans)
    header = {
        k: data[k]
        for k in ("version", "effective_date", "currency", "rounding", "tax", "top_ups")
        if k in data
    }
    try:
        config = PlansConfig.model_validate({**header, "meters": meters, "plans": plans})
    except ValidationError as exc:
        errors.extend(_format("", exc))
        raise ConfigFileError(source, [e.lstrip(".") for e in errors], WHAT) from None
    errors.extend(cross_reference_errors(config, unparsed_plans))
    if errors:
        raise ConfigFileError(source, errors, WHAT)
    return config


def config_path(path: str | Path | None = None) -> Path:
    """The file :func:`load_config` reads: ``path``, else ``$PLG_METERING_CONFIG``, else the default."""
    return kernel_config_path(path, CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH)


def load_config(path: str | Path | None = None) -> PlansConfig:
    """Read the YAML (or JSON, a subset of YAML) file at ``path``, ``$PLG_METERING_CONFIG`` or the default."""
    resolved = config_path(path)
    data = load_yaml(resolved, WHAT)
    return parse_config(data, str(resolved))


def summary(config: PlansConfig) -> dict[str, Any]:
    """What a service's ``--check-config`` and start-up log show of the file."""
    return {
        "version": config.version,
        "effective_date": str(config.effective_date),
        "meters": [m.slug for m in config.meters],
        "plans": [p.slug for p in config.plans],
    }


def plans_file(field: str = "config_path") -> ConfigFile[Any]:
    """The meters-and-plans file as a config file of a service whose settings have ``field`` (metering,
    entitlements, billing: ``config_path``; health: ``plans_path``): validated before the service builds,
    every error listed (exit 2), and summarised by ``--check-config``."""
    from services.kernel.service import ConfigFile  # lazily: the pure plans model needs no kernel

    def load(settings: Any) -> PlansConfig:
        return load_config(getattr(settings, field, None))

    return ConfigFile("meters-and-plans", load, summary)
