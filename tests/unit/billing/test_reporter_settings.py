"""The reporter's settings: local Stripe defaults, and --check-config never shows a Stripe secret."""

from __future__ import annotations

import pytest

from services.billing_reporter.__main__ import main
from services.billing_reporter.config import LOCAL_STRIPE_API_BASE, BillingSettings


def test_stripe_settings_have_documented_local_defaults(monkeypatch: pytest.MonkeyPatch):
    for name in ("STRIPE_API_BASE", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    settings = BillingSettings()
    assert settings.port == 8083
    assert settings.stripe.api_base == LOCAL_STRIPE_API_BASE == "http://127.0.0.1:12120"
    assert settings.stripe.api_key.get_secret_value().startswith("sk_test_")


def test_check_config_masks_the_stripe_key_and_webhook_secret(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("STRIPE_API_KEY", "sk_live_supersecret123")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_supersecret456")
    monkeypatch.setenv("STRIPE_API_BASE", "https://api.stripe.com")
    assert main(["--check-config"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "https://api.stripe.com" in text
    assert "supersecret" not in text
