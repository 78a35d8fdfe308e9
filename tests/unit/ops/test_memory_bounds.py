"""docs/operations.md "Memory bounds" cannot go stale: every setting it names exists on its service's settings
class with the default it states, every code constant has the value it states, and every size metric is
registered by the services of its row (each service's app imported in a fresh interpreter, so one service's
metrics never count for another)."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "operations.md"

# The service names the table's first column uses, and the module whose import registers its metrics.
SERVICES = {
    "ingest": "services.ingest.app",
    "schema registry": "services.schema_registry.app",
    "entitlements": "services.entitlements.app",
    "billing reporter": "services.billing_reporter.app",
    "health score": "services.health_score.app",
    "growth": "services.growth.app",
    "analytics": "services.analytics.app",
    "enrichment": "services.enrichment.app",
    "metering aggregator": "services.metering_aggregator.app",
}
HTTP_SERVICES = [
    "ingest",
    "schema registry",
    "entitlements",
    "billing reporter",
    "health score",
    "growth",
    "analytics",
]

# Environment prefix -> settings class (the longest matching prefix wins: PLG_AUTH_ before PLG_).
PREFIXES = {
    "PLG_AUTH_": "services.kernel.settings:AuthSettings",
    "PLG_": "services.kernel.settings:PlatformSettings",
    "INGEST_": "services.ingest.config:IngestSettings",
    "REGISTRY_": "services.schema_registry.config:RegistrySettings",
    "ENTITLEMENTS_": "services.entitlements.config:EntitlementsSettings",
    "ENRICHMENT_": "services.enrichment.config:EnrichmentSettings",
    "METERING_": "services.metering_aggregator.config:MeteringSettings",
    "GROWTH_": "services.growth.config:GrowthSettings",
    "HEALTH_": "services.health_score.config:HealthSettings",
}

# `NAME` = 100 000 (a setting) or `services/x/y.py:NAME` = 100 000 (a code constant)
BOUND = re.compile(r"`([A-Za-z0-9_./]+(?::[A-Za-z0-9_]+)?)` = ([0-9][0-9 ]*(?:\.[0-9]+)?)")
METRIC = re.compile(r"`(plg_[a-z0-9_]+)")


def rows() -> list[list[str]]:
    text = DOC.read_text()
    section = text.split("\n## Memory bounds\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    header, body = table[0], table[1:]
    assert [c.strip() for c in header.strip("|").split(" | ")] == [
        "service",
        "what it holds",
        "keyed by",
        "bound / expiry (setting = default)",
        "size metric",
    ]
    out = []
    for line in body:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        assert len(cells) == 5, line
        out.append(cells)
    return out


def services_of(cell: str) -> list[str]:
    if cell.startswith("every HTTP service"):
        return HTTP_SERVICES
    names = [re.sub(r"\s*\(.*\)$", "", part.strip()) for part in cell.split(",")]
    for name in names:
        assert name in SERVICES, f"unknown service {name!r} in the memory-bounds table"
    return names


def number(text: str) -> Decimal:
    return Decimal(text.replace(" ", ""))


def settings_class(variable: str) -> tuple[type, str]:
    prefix = max((p for p in PREFIXES if variable.startswith(p)), key=len, default=None)
    assert prefix is not None, f"{variable}: no settings class has its prefix"
    module, name = PREFIXES[prefix].split(":")
    return getattr(importlib.import_module(module), name), variable[len(prefix) :].lower()


def test_the_table_lists_every_structure_with_a_bound_and_a_metric():
    table = rows()
    assert len(table) >= 20
    for service, _what, _key, bound, metric in table:
        services_of(service)
        assert BOUND.search(bound), f"row without a checked bound: {bound}"
        assert METRIC.search(metric), f"row without a size metric: {metric}"


@pytest.mark.parametrize("row", rows(), ids=lambda r: f"{r[0]}: {r[1][:40]}")
def test_each_documented_bound_has_its_documented_default(row: list[str]):
    for name, value in BOUND.findall(row[3]):
        expected = number(value)
        if ":" in name:  # a code constant
            path, constant = name.split(":")
            module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
            actual = getattr(module, constant)
        else:
            cls, field = settings_class(name)
            assert field in cls.model_fields, f"{name} is not a setting of {cls.__name__}"
            actual = cls.model_fields[field].default
        assert Decimal(str(actual)) == expected, f"{name}: the code says {actual}, the table {value}"


def test_each_size_metric_is_registered_by_its_services():
    wanted: dict[str, set[str]] = {}
    for service, _what, _key, _bound, metric in rows():
        for name in services_of(service):
            wanted.setdefault(name, set()).update(METRIC.findall(metric))
    # One fresh interpreter per service, all started at once (imports only: no broker, no database).
    script = (
        "import importlib, json, sys\n"
        "from prometheus_client import REGISTRY\n"
        "importlib.import_module(sys.argv[1])\n"
        "print(json.dumps(sorted({m.name for m in REGISTRY.collect()})))\n"
    )
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", script, SERVICES[name]], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for name in wanted
    }
    missing = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"importing {SERVICES[name]} failed"
        registered = set(json.loads(out))
        # counters are collected without their _total suffix; gauges as named
        absent = {
            m for m in wanted[name] if m not in registered and m.removesuffix("_total") not in registered
        }
        if absent:
            missing[name] = sorted(absent)
    assert not missing, f"metrics in the table that the service does not register: {missing}"


@pytest.mark.parametrize(
    "doc",
    ["ingest.md", "enrichment.md", "growth.md", "health-score.md", "entitlements.md", "schema-registry.md"],
)
def test_each_service_doc_links_the_table(doc: str):
    assert "operations.md#memory-bounds" in (ROOT / "docs" / doc).read_text()
