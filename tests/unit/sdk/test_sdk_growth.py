"""The SDK's growth side without a service: local evaluation from a bootstrap document, and the fallbacks
when the growth service is down."""

from __future__ import annotations

import time

from plg_sdk import FlagsClient, Onboarding

from services.devstack.config import free_port

DOC = {"revision": 1, "segments": {}, "flags": [{"key": "f", "rollout": 100}, {"key": "half", "rollout": 50}]}


def test_flags_evaluate_locally_from_a_bootstrap_document_while_the_service_is_down() -> None:
    client = FlagsClient(f"http://127.0.0.1:{free_port()}", bootstrap=DOC, poll_interval=0.2)
    try:
        assert client.is_enabled("f", {"user_id": "u"})
        assert client.evaluate("missing", {}, default=3).value == 3
        assert client.revision == 1
    finally:
        client.close()


def test_before_any_document_every_flag_answers_its_default() -> None:
    client = FlagsClient(f"http://127.0.0.1:{free_port()}", start=False)
    answer = client.evaluate("f", {"user_id": "u"}, default=False)
    assert (answer.value, answer.error_code) == (False, "PROVIDER_NOT_READY")
    assert not client.is_enabled("f", {"user_id": "u"})


def test_onboarding_falls_back_to_no_step_when_the_service_is_down() -> None:
    onboarding = Onboarding(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    started = time.monotonic()
    assert onboarding.next_step("acme", "u-1") is None
    assert onboarding.complete_step("acme", "u-1", "create-project") is False
    assert onboarding.activation("acme", "u-1") is None
    assert onboarding.show_upgrade_prompt("acme", "u-1") is False
    assert time.monotonic() - started < 2.0
