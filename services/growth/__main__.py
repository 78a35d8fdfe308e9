"""``python -m services.growth``: run the growth service (flags, activation, onboarding; HTTP :8085).

``--check-config`` validates the settings and the flags, onboarding and activation files, prints them with
secrets masked and exits.
"""

from __future__ import annotations

from typing import Any

from services.growth.app import SERVICE, build_app
from services.growth.config import GrowthSettings
from services.growth.flagstore import load_flags_file
from services.kernel.service import ConfigFile, HttpOptions, run_service


def _flags_summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "flags": [f["key"] for f in doc.get("flags") or []],
        "segments": sorted(doc.get("segments") or {}),
    }


CONFIG_FILES: list[ConfigFile[GrowthSettings]] = [
    ConfigFile("flags", lambda s: load_flags_file(s.flags_path), _flags_summary),
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
