"""When is a fatal producer error one a replacement producer gets past? (ExactlyOnceLoop._replaceable)

A fencing error means another instance took our ``transactional.id`` — unless our own transaction had been
open longer than its timeout: then the coordinator aborted it and bumped the epoch itself (a broker away for
longer than the timeout does that), and ending the loop would turn every long broker outage into a crash of
every transactional service. The rule is decided on the transaction's age, which the real producer records
at ``begin()``; these cases pin it without a broker (the zombie case runs on one in
tests/integration/kernel/test_processing.py).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from services.kernel.errors import KafkaFatalError
from services.kernel.processing.exactly_once import ExactlyOnceLoop


def loop_with_transaction(age: float | None, timeout: float = 30.0) -> ExactlyOnceLoop:
    loop = object.__new__(ExactlyOnceLoop)  # only the rule's inputs: the producer's clock and timeout
    began = None if age is None else time.monotonic() - age
    loop.producer = SimpleNamespace(began_at=began, transaction_timeout=timeout)  # type: ignore[assignment]
    loop.service = "test"
    return loop


def fatal(code: str, message: str = "") -> KafkaFatalError:
    return KafkaFatalError(message or f"commit_transaction: {code}", code_name=code, fatal=True)


@pytest.mark.parametrize("code", ["_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"])
def test_fenced_after_outliving_the_timeout_is_the_coordinators_abort_and_replaceable(code: str) -> None:
    assert loop_with_transaction(age=31.0)._replaceable(fatal(code))


@pytest.mark.parametrize("code", ["_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"])
def test_fenced_within_the_timeout_is_another_instance_and_ends_the_loop(code: str) -> None:
    assert not loop_with_transaction(age=2.0)._replaceable(fatal(code))
    assert not loop_with_transaction(age=None)._replaceable(fatal(code))  # no transaction yet


@pytest.mark.parametrize(
    "code", ["FENCED_INSTANCE_ID", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED"]
)
def test_other_identity_and_rights_errors_end_the_loop_however_old_the_transaction(code: str) -> None:
    assert not loop_with_transaction(age=600.0)._replaceable(fatal(code))


def test_other_fatal_errors_are_replaceable() -> None:
    error = fatal("INVALID_TXN_STATE", "commit_transaction: INVALID_TXN_STATE after a broker restart")
    assert loop_with_transaction(age=1.0)._replaceable(error)
