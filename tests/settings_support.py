"""What a devstack service's settings declare, read from its code: the deploy tests (Helm chart, Compose
file) compare against this, so a service that gains a consumer group or a local state store and is not
deployed accordingly fails there."""

from __future__ import annotations

import importlib
import inspect

from pydantic_settings import BaseSettings

from services.devstack.apps import AppService


def settings_with(app: AppService, field: str) -> type[BaseSettings] | None:
    """The service's settings class (its env prefix) that has ``field``, or None."""
    module = importlib.import_module(f"{app.module}.config")
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if (
            issubclass(cls, BaseSettings)
            and cls.model_config.get("env_prefix") == app.env_prefix
            and field in cls.model_fields
        ):
            return cls
    return None


def group_of(app: AppService) -> str | None:
    """The consumer group the service's settings default to (None: not a consumer)."""
    cls = settings_with(app, "group_id")
    return None if cls is None else str(cls.model_fields["group_id"].default)


def state_dir_env(app: AppService) -> str | None:
    """``<PREFIX>STATE_DIR`` when the service keeps local state stores (a ``state_dir`` setting)."""
    return None if settings_with(app, "state_dir") is None else f"{app.env_prefix}STATE_DIR"
