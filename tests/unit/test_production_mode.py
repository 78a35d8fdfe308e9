"""Production mode: with ``PLG_ENVIRONMENT=production`` no service starts on a development default.

Every service's ``python -m`` entry point, as an operator runs it: ``--check-config`` and a normal start
exit 2 listing every development default in use at once, never printing a secret; with real values
``--check-config`` exits 0. Another environment than ``local`` starts, with a warning per default. No stack
is needed: the refusals come before anything is reached (the endpoints point at a closed port anyway).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.billing_reporter.config import LOCAL_STRIPE_WEBHOOK_SECRET
from services.devstack.config import free_port
from services.enrichment.config import DEV_PII_KEY
from services.growth.config import PUBLIC_DEV_ADMIN_TOKEN
from services.kernel.settings import DEV_DLQ_KEY
from tests.processes import HANG_SECONDS

REPO = Path(__file__).resolve().parents[2]

PLATFORM = ("PLG_TOPIC_REPLICATION_FACTOR", "PLG_TOPIC_MIN_INSYNC_REPLICAS")
# Each service and the development defaults it must name when nothing is set (besides the platform's).
DLQ = ("PLG_DLQ_KEY",)  # every service on Kafka may dead-letter through the kernel (docs/privacy.md)
DEFAULTS: dict[str, tuple[str, ...]] = {
    "services.ingest": DLQ,
    "services.schema_registry": ("REGISTRY_ADMIN_TOKEN",),
    "services.metering_aggregator": DLQ,
    "services.entitlements": DLQ,
    "services.growth": DLQ,
    "services.enrichment": ("ENRICHMENT_PII_KEY", *DLQ),
    "services.health_score": ("HEALTH_WEBHOOK_SIGNING_SECRET", *DLQ),
    "services.billing_reporter": ("STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY", "STRIPE_API_BASE", *DLQ),
    "services.analytics": DLQ,
}
# Public development values a deployment might still carry: each is named, none is printed.
PUBLIC = {
    "STRIPE_WEBHOOK_SECRET": LOCAL_STRIPE_WEBHOOK_SECRET,
    "ENRICHMENT_PII_KEY": DEV_PII_KEY,
    "GROWTH_ADMIN_TOKEN": PUBLIC_DEV_ADMIN_TOKEN,
    "PLG_DLQ_KEY": DEV_DLQ_KEY,
}
# What a real deployment sets instead (made-up values: --check-config reaches nothing).
REAL = {
    "PLG_TOPIC_REPLICATION_FACTOR": "3",
    "PLG_TOPIC_MIN_INSYNC_REPLICAS": "2",
    "REGISTRY_ADMIN_TOKEN": "real-registry-token-7f3a",
    "GROWTH_ADMIN_TOKEN": "real-growth-token-91bc",
    "ENRICHMENT_PII_KEY": "real-pii-key-0d5e",
    "STRIPE_WEBHOOK_SECRET": "whsec_real_5c2e",
    "STRIPE_API_KEY": "sk_live_real_77aa",
    "STRIPE_API_BASE": "https://api.stripe.com",
    "HEALTH_WEBHOOK_SIGNING_SECRET": "real-alert-signing-3e1f",
    "PLG_DLQ_KEY": "real-dlq-key-3e8a",
}
ALL_PREFIXES = ("PLG_", "STRIPE_", "REGISTRY_", "GROWTH_", "ENRICHMENT_", "HEALTH_", "INGEST_", "BILLING_")


def _env(**extra: str) -> dict[str, str]:
    closed = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ALL_PREFIXES)}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed}",
            "SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{closed}",
            "DATABASE_URL": f"postgresql://plg@127.0.0.1:{closed}/plg?connect_timeout=1",
            "PLG_ENVIRONMENT": "production",
        }
    )
    env.update(extra)
    return env


def _run(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
    )


def _run_all(env: dict[str, str], *args: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every service at once (a Python start-up each: together they take the time of the slowest)."""
    procs = {
        module: subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in DEFAULTS
    }
    done = {}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=HANG_SECONDS)
        done[module] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def _listed(stderr: str) -> set[str]:
    return {
        line.strip()[2:].split(":", 1)[0] for line in stderr.splitlines() if line.strip().startswith("- ")
    }


def test_production_check_config_exits_2_listing_every_development_default() -> None:
    for module, done in _run_all(_env(), "--check-config").items():
        assert done.returncode == 2, f"{module}: {done.stdout}{done.stderr}"
        assert done.stdout == ""
        assert _listed(done.stderr) == {*PLATFORM, *DEFAULTS[module]}, f"{module}: {done.stderr}"
        assert "PLG_ENVIRONMENT=production" in done.stderr


def test_production_check_config_with_real_values_exits_0_and_prints_no_secret() -> None:
    for module, done in _run_all(_env(**REAL), "--check-config").items():
        assert done.returncode == 0, f"{module}: {done.stderr}"
        assert json.loads(done.stdout)["development_defaults"] == []
        for name, value in REAL.items():
            if name not in PLATFORM and name != "STRIPE_API_BASE":
                assert value not in done.stdout + done.stderr, f"{module} printed {name}"


def test_a_normal_start_in_production_refuses_too_naming_public_values_without_printing_them() -> None:
    outputs = _run_all(_env(**PUBLIC))

    for module, done in outputs.items():
        assert done.returncode == 2, f"{module}: {done.stdout}{done.stderr}"
        for value in PUBLIC.values():
            assert value not in done.stdout + done.stderr, f"{module} printed a secret"
    assert "GROWTH_ADMIN_TOKEN" in _listed(outputs["services.growth"].stderr)
    assert "ENRICHMENT_PII_KEY" in _listed(outputs["services.enrichment"].stderr)
    assert "STRIPE_WEBHOOK_SECRET" in _listed(outputs["services.billing_reporter"].stderr)


def test_an_empty_token_is_never_a_token_and_production_names_it() -> None:
    env = _env(**{**REAL, "GROWTH_ADMIN_TOKEN": "", "REGISTRY_ADMIN_TOKEN": "  "})

    growth = _run("services.growth", env, "--check-config")
    registry = _run("services.schema_registry", env, "--check-config")

    assert growth.returncode == 2
    assert registry.returncode == 2
    assert _listed(growth.stderr) == {"GROWTH_ADMIN_TOKEN"}
    assert "set but empty" in growth.stderr
    # blank is unset: the registry's writes would be open, so both facts are named
    assert "REGISTRY_ADMIN_TOKEN" in _listed(registry.stderr)


def test_an_empty_signing_secret_is_invalid_in_every_environment() -> None:
    done = _run(
        "services.billing_reporter", _env(PLG_ENVIRONMENT="local", STRIPE_WEBHOOK_SECRET=""), "--check-config"
    )

    assert done.returncode == 2
    assert "STRIPE_WEBHOOK_SECRET is empty" in done.stderr


def test_other_environments_start_with_a_warning_per_default_and_local_stays_quiet() -> None:
    staging = _run("services.enrichment", _env(PLG_ENVIRONMENT="staging"), "--check-config")
    local = _run("services.enrichment", _env(PLG_ENVIRONMENT="local"), "--check-config")

    assert staging.returncode == 0
    assert local.returncode == 0
    warned = [line for line in staging.stderr.splitlines() if "warning: development default" in line]
    assert {line.split("in use: ")[1].split(":")[0] for line in warned} == {
        *PLATFORM,
        *DEFAULTS["services.enrichment"],
    }
    assert DEV_PII_KEY not in staging.stdout + staging.stderr
    assert "warning" not in local.stderr
    # --check-config lists them in every environment, for the operator who asks
    assert len(json.loads(local.stdout)["development_defaults"]) == 4


def test_the_provisioner_refuses_a_single_copy_of_each_topic_in_production() -> None:
    done = _run("services.kernel.provision", _env())

    assert done.returncode == 2
    assert _listed(done.stderr) == set(PLATFORM)


def test_every_service_is_checked_here() -> None:
    # commands and the local stack's Stripe emulator, not services a deployment runs
    tools = {"services.cli", "services.devstack", "services.stripe_emulator"}
    mains = {f"services.{p.parent.name}" for p in (REPO / "services").glob("*/__main__.py")} - tools
    assert mains == set(DEFAULTS)
