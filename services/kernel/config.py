"""Config files (YAML) for every service: one way to find, read and refuse them.

Each file a service reads (meters and plans, the tracking plan, health metrics, activation, onboarding)
is found the same way — the settings field, else its environment variable, else the repository's
``deploy/config/`` default (:func:`config_path`) — read with :func:`load_yaml`, and refused with one
exception, :class:`ConfigFileError`: the file and every problem found, one line each, which
``run_service`` lists with the settings' errors (exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

#: ``deploy/config`` of this checkout (or image): where the default files live.
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "deploy" / "config"


class ConfigFileError(ValueError):
    """A config file cannot be used: ``source`` (its path) and ``errors`` (every problem, one line each,
    with its place in the file)."""

    def __init__(self, source: str | Path | None, errors: Sequence[str], what: str = "config file") -> None:
        self.source = str(source) if source is not None else None
        self.errors = list(errors)
        self.what = what
        lines = "\n".join(f"  - {e}" for e in self.errors)
        head = f"{self.source}: " if self.source else ""
        super().__init__(f"{head}{len(self.errors)} error(s) in the {what}:\n{lines}")


def config_path(path: str | Path | None, env: str, default: str | Path) -> Path:
    """The file to read: ``path`` (the settings field), else ``$env``, else ``default`` (relative to
    ``deploy/config``)."""
    chosen = path or os.environ.get(env)
    return Path(chosen) if chosen else DEFAULT_CONFIG_DIR / default


def load_yaml(path: Path, what: str) -> Any:
    """The parsed document of ``path`` (JSON is YAML too); :class:`ConfigFileError` when it cannot be read
    or parsed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(path, [f"cannot read the file: {exc.strerror or exc}"], what) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(path, [f"not valid YAML: {exc}"], what) from None
