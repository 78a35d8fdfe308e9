"""Helpers shared by the schema-contract tests: schema files and their committed history in git."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"


def schema_files() -> list[Path]:
    return sorted(SCHEMAS.glob("*.avsc"))


def committed_versions(path: Path) -> list[str]:
    """Every distinct committed text of ``path``, newest first (empty outside a git checkout)."""
    rel = path.relative_to(ROOT).as_posix()
    try:
        commits = subprocess.run(
            ["git", "log", "--format=%H", "--", rel], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    texts: list[str] = []
    for sha in commits:
        shown = subprocess.run(["git", "show", f"{sha}:{rel}"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode == 0 and shown.stdout not in texts:
            texts.append(shown.stdout)
    return texts


def previous_version(path: Path) -> str | None:
    """The newest committed text that differs (as parsed JSON) from the working-tree file."""
    current = json.loads(path.read_text())
    for text in committed_versions(path):
        if json.loads(text) != current:
            return text
    return None


def is_backward_compatible(new: str, old: str) -> tuple[bool, list[str]]:
    """BACKWARD: a reader on ``new`` can read data written with ``old`` (Avro's own checker)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(new), avro.schema.parse(old)
    )
    return result.compatibility is SchemaCompatibilityType.compatible, list(result.messages)
