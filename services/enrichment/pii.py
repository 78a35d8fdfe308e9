"""PII scrubbing: plan-marked properties, and values that look like e-mail, phone, IP or card numbers.

A value is *pseudonymised* — replaced by ``pii:`` + the first 128 bits of HMAC-SHA-256(key, value) in hex,
so the same address always gives the same pseudonym and joins still work without the address — or the
property is *dropped*, per the plan's ``pii.action``. Detected values inside a longer string are replaced
in place ("mail bob@x.io" → "mail pii:…"). Pure, no I/O; the key comes from the service settings.

Cost: most property values are short and clean ("pro", "/v1/search"), so every string is first checked
against a cache of values already found clean and one cheap combined pattern; the detectors' own
patterns (and Luhn, and :mod:`ipaddress`) only run on what could be PII.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from services.enrichment.avro_enriched import MEMO
from services.enrichment.plan import Detector, PiiAction
from services.kernel import metrics

PSEUDONYM_PREFIX = "pii:"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
# 13-19 digits, optionally grouped by single spaces or dashes (then checked with Luhn).
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
# Phone shapes (then 7-15 digits): international "+..."; North American (555) 123-4567 / 555-123-4567;
# national numbers starting with 0 in space-separated groups ("06 12 34 56 78", "020 7946 0958").
# Plain digit runs and dates (2024-01-15) are deliberately not phones: order ids and timestamps are.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d[\d ().-]{5,20}\d|\(\d{3}\) ?\d{3}[-. ]\d{4}|\d{3}[-.]\d{3}[-.]\d{4}"
    r"|\d{3} \d{3} \d{4}|0\d{1,4}(?: \d{2,4}){2,4})(?![\w])"
)
# One cheap pattern any detected number-ish or IPv6 value matches: strings failing it skip the digit
# detectors altogether.
_NUMBERISH = re.compile(r"\d[\d .()-]{5,}\d|\d\.\d{1,3}\.\d|[0-9A-Fa-f]*:[0-9A-Fa-f]*:")

_CLEAN_CACHE_MAX = 65_536
_MIN_CARD_INT = 10**12


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits (every card number passes it; 90 % of random runs fail)."""
    total = 0
    parity = len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def find_pii(value: str, detectors: frozenset[Detector]) -> list[tuple[int, int, Detector, str]]:
    """Spans of ``value`` that look like PII: ``(start, end, detector, normalised value)``, non-overlapping,
    in order. The normalised value is what is pseudonymised (lower-case e-mail, digits of a card or
    phone, the canonical IP) so that formatting does not change the pseudonym."""
    found: list[tuple[int, int, Detector, str]] = []
    if Detector.EMAIL in detectors and "@" in value:
        found.extend((m.start(), m.end(), Detector.EMAIL, m.group().lower()) for m in _EMAIL.finditer(value))
    if _NUMBERISH.search(value) is not None:
        if Detector.CARD in detectors:
            for m in _CARD.finditer(value):
                digits = _digits(m.group())
                if 13 <= len(digits) <= 19 and luhn_ok(digits):
                    found.append((m.start(), m.end(), Detector.CARD, digits))
        if Detector.IP in detectors:
            for m in _IPV4.finditer(value):
                if all(int(octet) <= 255 for octet in m.group().split(".")):
                    found.append((m.start(), m.end(), Detector.IP, m.group()))
            if value.count(":") >= 2:
                for m in _IPV6.finditer(value):
                    try:
                        address = ipaddress.IPv6Address(m.group())
                    except ValueError:
                        continue
                    found.append((m.start(), m.end(), Detector.IP, str(address)))
        if Detector.PHONE in detectors:
            for m in _PHONE.finditer(value):
                digits = _digits(m.group())
                if 7 <= len(digits) <= 15:
                    found.append((m.start(), m.end(), Detector.PHONE, "+" + digits))
    if len(found) > 1:
        found.sort(key=lambda span: (span[0], -span[1]))
        kept: list[tuple[int, int, Detector, str]] = []
        for span in found:
            if not kept or span[0] >= kept[-1][1]:
                kept.append(span)
        found = kept
    return found


class Scrubber:
    """Scrubs one event's properties (in place) and id fields with one key and one action."""

    __slots__ = ("__weakref__", "_clean", "_key", "action", "detectors", "scan_ids")

    def __init__(
        self,
        key: bytes,
        action: PiiAction = PiiAction.PSEUDONYMISE,
        detectors: Iterable[Detector] = tuple(Detector),
        scan_ids: bool = True,
    ) -> None:
        if not key:
            raise ValueError("the PII key must not be empty")
        self._key = key
        self.action = action
        self.detectors = frozenset(detectors)
        self.scan_ids = scan_ids
        # Strings found clean before: a set look-up instead of a regex scan for the values every event
        # repeats (plans, routes, regions). Only clean values are kept, so it holds no PII; bounded.
        self._clean: set[str] = set()
        metrics.track_size(MEMO.labels("pii_clean"), self, lambda s: len(s._clean))

    def forget_clean(self) -> None:
        """Drop the cache of clean values (it holds ids as they were sent): after an erasure."""
        self._clean = set()

    def pseudonym(self, normalised: str) -> str:
        digest = hmac.new(self._key, normalised.encode(), hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:32]

    def _whole(self, value: Any) -> Any:
        """The pseudonym of a whole value (a plan-marked property)."""
        text = value if isinstance(value, str) else str(value)
        text = text.strip()
        if "@" in text:
            text = text.lower()
        return self.pseudonym(text)

    def _scan_string(self, value: str) -> str | None:
        """``value`` with its PII spans pseudonymised, or None if it has none."""
        if value in self._clean:
            return None
        spans = find_pii(value, self.detectors)
        if not spans:
            if len(self._clean) >= _CLEAN_CACHE_MAX:
                self._clean.clear()
            self._clean.add(value)
            return None
        parts = []
        last = 0
        for start, end, _kind, normalised in spans:
            parts.append(value[last:start])
            parts.append(self.pseudonym(normalised))
            last = end
        parts.append(value[last:])
        return "".join(parts)

    def _card_int(self, value: int) -> bool:
        if value < _MIN_CARD_INT or Detector.CARD not in self.detectors:
            return False
        digits = str(value)
        return len(digits) <= 19 and luhn_ok(digits)

    def scrub_properties(
        self, properties: dict[str, Any], pii: frozenset[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        """Scrub ``properties`` in place. Returns the keys scrubbed, in order, and — only when some key
        itself held PII (``{"invited:bob@x.io": true}``) — how those keys were renamed (raw → pseudonymised,
        so the caller can fix paths that name them). A key is always listed by its scrubbed name."""
        scrubbed: list[str] = []
        renames: dict[str, str] | None = None
        drop = self.action is PiiAction.DROP
        clean = self._clean
        for key, value in properties.items():
            if key not in clean:
                replaced_key = self._scan_string(key)
                if replaced_key is not None:
                    if renames is None:
                        renames = {}
                    renames[key] = replaced_key
            if value is None:
                continue
            if key in pii:
                scrubbed.append(key)
                if not drop:
                    properties[key] = self._whole(value)
                continue
            kind = type(value)
            if kind is str:
                replaced = self._scan_string(value)
                if replaced is not None:
                    scrubbed.append(key)
                    if not drop:
                        properties[key] = replaced
            elif kind is int and self._card_int(value):
                scrubbed.append(key)
                if not drop:
                    properties[key] = self.pseudonym(str(value))
        if drop:
            for key in scrubbed:
                del properties[key]
        if renames:
            for old, new in renames.items():
                if drop:
                    properties.pop(old, None)
                elif old in properties:
                    properties[new] = properties.pop(old)
            scrubbed = [renames.get(k, k) for k in scrubbed]
            scrubbed.extend(new for old, new in renames.items() if new not in scrubbed)
        return scrubbed, renames

    def scrub_id(self, value: str | None) -> tuple[str | None, bool]:
        """An id field (user_id, anonymous_id, session_id, person_id): pseudonymised whole — or dropped —
        when it looks like PII, so an e-mail used as a user id keeps joining. Returns (value, scrubbed)."""
        if value is None or not self.scan_ids:
            return value, False
        if value in self._clean:
            return value, False
        if not find_pii(value, self.detectors):
            if len(self._clean) >= _CLEAN_CACHE_MAX:
                self._clean.clear()
            self._clean.add(value)
            return value, False
        if self.action is PiiAction.DROP:
            return None, True
        return self._whole(value), True
