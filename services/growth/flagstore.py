"""Flag definitions: the file as code (``deploy/config/flags.yaml``) and, later, their store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from plg_sdk.flags import FlagConfigError, compile_document

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FLAGS_FILE = REPO / "deploy" / "config" / "flags.yaml"


def flags_path(path: Path | None = None) -> Path:
    """``path``, else ``$PLG_FLAGS_CONFIG``, else deploy/config/flags.yaml."""
    return path or Path(os.environ.get("PLG_FLAGS_CONFIG", DEFAULT_FLAGS_FILE))


def load_flags_file(path: Path | None = None) -> dict[str, Any]:
    """The flags document of ``path``, validated (every error at once, as :class:`FlagConfigError`)."""
    source = flags_path(path)
    try:
        doc = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise FlagConfigError([f"not valid YAML: {exc}"], str(source)) from None
    compile_document(doc, source=str(source))
    assert isinstance(doc, dict)
    return doc
