"""PII scrubbing: plan-marked properties and detected e-mail, phone, IP and card values."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from services.enrichment.pii import Scrubber, find_pii, luhn_ok
from services.enrichment.plan import Detector, PiiAction

KEY = b"test-key"
ALL = frozenset(Detector)


def pseudonym(value: str) -> str:
    return "pii:" + hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()[:32]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("bob@example.com", Detector.EMAIL),
        ("Contact: Bob.Smith+tag@mail.example.co.uk please", Detector.EMAIL),
        ("+1 415 555 2671", Detector.PHONE),
        ("+44 20 7946 0958", Detector.PHONE),
        ("(415) 555-2671", Detector.PHONE),
        ("415-555-2671", Detector.PHONE),
        ("06 12 34 56 78", Detector.PHONE),
        ("192.168.1.20", Detector.IP),
        ("from 10.0.0.1:8080", Detector.IP),
        ("2001:db8::8a2e:370:7334", Detector.IP),
        ("4111 1111 1111 1111", Detector.CARD),
        ("4111-1111-1111-1111", Detector.CARD),
        ("5500000000000004", Detector.CARD),
    ],
)
def test_detectors_find_planted_values(value, kind):
    spans = find_pii(value, ALL)
    assert [s[2] for s in spans] == [kind], spans


@pytest.mark.parametrize(
    "value",
    [
        "pro",
        "/v1/search",
        "2024-01-15",
        "12:30:00",
        "1.2.3",
        "10.0.19041.1",
        "999.1.1.1",
        "order 1700000000000",
        "4111 1111 1111 1112",  # fails Luhn
        "https://example.com/a",
        "v2.3.0-rc1",
        "a@b",
    ],
)
def test_ordinary_values_are_left_alone(value):
    assert find_pii(value, ALL) == []


def test_luhn():
    assert luhn_ok("4111111111111111")
    assert luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


def test_plan_marked_and_detected_properties_are_pseudonymised_and_listed():
    scrubber = Scrubber(KEY)
    props = {
        "email": "Bob@Example.com",
        "note": "call +1 415 555 2671 or mail bob@example.com",
        "ip": "10.1.2.3",
        "card": 4111111111111111,
        "plan": "pro",
        "n": 3,
        "none": None,
    }
    scrubbed, renamed = scrubber.scrub_properties(props, frozenset({"email"}))
    assert renamed is None
    assert scrubbed == ["email", "note", "ip", "card"]
    # The same address gives the same pseudonym whether planned or detected, so joins work.
    assert props["email"] == pseudonym("bob@example.com")
    assert props["note"] == f"call {pseudonym('+14155552671')} or mail {pseudonym('bob@example.com')}"
    assert props["ip"] == pseudonym("10.1.2.3")
    assert props["card"] == pseudonym("4111111111111111")
    assert props["plan"] == "pro"
    assert props["n"] == 3


def test_drop_removes_the_properties():
    scrubber = Scrubber(KEY, PiiAction.DROP)
    props = {"email": "x", "note": "bob@example.com", "plan": "pro"}
    assert scrubber.scrub_properties(props, frozenset({"email"}))[0] == ["email", "note"]
    assert props == {"plan": "pro"}


def test_disabled_detectors_do_not_scrub():
    scrubber = Scrubber(KEY, detectors=[Detector.EMAIL])
    props = {"ip": "10.1.2.3", "mail": "a@b.io"}
    assert scrubber.scrub_properties(props, frozenset())[0] == ["mail"]
    assert props["ip"] == "10.1.2.3"


def test_ids_that_look_like_pii_are_pseudonymised_whole():
    scrubber = Scrubber(KEY)
    assert scrubber.scrub_id("Bob@Example.com") == (pseudonym("bob@example.com"), True)
    assert scrubber.scrub_id("u_123") == ("u_123", False)
    assert scrubber.scrub_id(None) == (None, False)
    assert Scrubber(KEY, PiiAction.DROP).scrub_id("bob@example.com") == (None, True)


def test_the_key_matters_and_must_not_be_empty():
    assert Scrubber(b"k1").pseudonym("x") != Scrubber(b"k2").pseudonym("x")
    with pytest.raises(ValueError, match="empty"):
        Scrubber(b"")


def test_clean_value_cache_does_not_change_answers():
    scrubber = Scrubber(KEY)
    for _ in range(3):
        props = {"a": "pro", "b": "bob@example.com"}
        assert scrubber.scrub_properties(props, frozenset())[0] == ["b"]


def test_keys_that_hold_pii_are_renamed_and_listed_by_their_scrubbed_name():
    scrubber = Scrubber(KEY)
    props = {"invited:bob@example.com": True, "plan": "pro"}
    scrubbed, renamed = scrubber.scrub_properties(props, frozenset())
    new_key = f"invited:{pseudonym('bob@example.com')}"
    assert renamed == {"invited:bob@example.com": new_key}
    assert props == {new_key: True, "plan": "pro"}
    assert scrubbed == [new_key]
    dropped = {"invited:bob@example.com": True, "plan": "pro"}
    assert Scrubber(KEY, PiiAction.DROP).scrub_properties(dropped, frozenset())[0] == [new_key]
    assert dropped == {"plan": "pro"}
