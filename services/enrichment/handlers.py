"""Enrichment of one event, pure: sample, validate against the plan, scrub PII, resolve the person, stamp
the tenant context. :class:`Enricher` turns a decoded ``usage-events`` value into an outcome — the
``usage-events-enriched`` value, a dead letter's reason and detail, or "sampled out" — and an
``identity-links`` value into the graph update and its downstream ``$person_merged`` record. No I/O: the
service module (:mod:`services.enrichment.app`) feeds it from the stream runtime.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.enrichment.identity import IdentityGraph
from services.enrichment.pii import Scrubber
from services.enrichment.plan import TrackingPlan
from services.enrichment.tenants import TenantContext
from services.enrichment.validation import CompiledPlan, Violation, describe

PERSON_MERGED_EVENT = "$person_merged"
IDENTIFY = "identify"
MERGE = "merge"

_FULL = 1 << 32


@dataclass(frozen=True, slots=True)
class Rejected:
    """The event goes to the DLQ: ``reason`` is the first violation's code, ``detail`` lists them all."""

    reason: str
    detail: str
    violations: tuple[Violation, ...]


@dataclass(frozen=True, slots=True)
class SampledOut:
    rate: float


@dataclass(frozen=True, slots=True)
class NotConsented:
    """The person refused the purpose enrichment serves (``consent.analytics`` false): the event was
    metered from usage-events and goes no further — not enriched, scored or kept for analytics."""

    purpose: str


ANALYTICS = "analytics"
NO_ANALYTICS_CONSENT = NotConsented(ANALYTICS)


def analytics_refused(event: Mapping[str, Any]) -> bool:
    """True only for an explicit ``"analytics": false``; no consent or no such purpose is not stated."""
    consent = event.get("consent")
    return consent is not None and consent.get(ANALYTICS) is False


def keep_sample(event_id: str, rate: float) -> bool:
    """Deterministic by event_id (CRC-32, the same in every process and on every replay): an event is kept
    or not whichever instance sees it, however often."""
    return zlib.crc32(event_id.encode()) < rate * _FULL


def merge_link_key(customer_id: str, merged_id: str, survivor_id: str) -> str:
    """The identity-links key of a merge: one key per pair, so compaction never drops a merge (a merge is a
    union: unlike an identify, a later merge of the same id does not replace an earlier one)."""
    return f"{customer_id}|merge|{merged_id}|{survivor_id}"


def _rename_path(violation: Violation, renamed: Mapping[str, str]) -> Violation:
    key = violation.path.removeprefix("properties.")
    new = renamed.get(key)
    return violation if new is None else violation._replace(path=f"properties.{new}")


class Enricher:
    """Everything the hot path needs, compiled once."""

    __slots__ = ("graph", "plan", "plan_version", "sampling", "scrubber")

    def __init__(
        self,
        plan: TrackingPlan,
        metered_events: frozenset[str],
        scrubber: Scrubber,
        graph: IdentityGraph | None = None,
    ) -> None:
        self.plan = CompiledPlan(plan, metered_events)
        self.plan_version = plan.version
        # The loader refuses to sample metered events; filtering again keeps that true for any plan object.
        self.sampling: dict[str, float] = {
            s.event: s.rate for s in plan.sampling if s.event not in metered_events and s.rate < 1
        }
        self.scrubber = scrubber
        self.graph = graph if graph is not None else IdentityGraph()

    def enrich(
        self, event: Mapping[str, Any], tenant: TenantContext | None, now_ms: int
    ) -> dict[str, Any] | Rejected | SampledOut | NotConsented:
        if analytics_refused(event):
            return NO_ANALYTICS_CONSENT
        name: str = event["name"]
        rate = self.sampling.get(name)
        if rate is not None and not keep_sample(event["event_id"], rate):
            return SampledOut(rate)
        checked = self.plan.check(name, event.get("properties") or {})
        violations = checked.violations
        if checked.enforce:
            return Rejected(violations[0].code, describe(violations), tuple(violations))
        properties = checked.properties
        scrubber = self.scrubber
        scrubbed, renamed = scrubber.scrub_properties(properties, self.plan.pii_properties(name))
        if renamed and violations:
            # A key that held PII is renamed on the record; the paths naming it must not keep the raw key.
            violations = [_rename_path(v, renamed) for v in violations]

        customer_id: str = event["customer_id"]
        user_id = event.get("user_id")
        anonymous_id = event.get("anonymous_id")
        person_id, identified = self.graph.resolve(customer_id, user_id, anonymous_id)
        session_id = event.get("session_id")
        if scrubber.scan_ids:
            # The person is resolved from the raw ids (the graph holds them), then every id leaving the
            # service is scrubbed with the same key, so pseudonymised ids still join.
            user_id, hit = scrubber.scrub_id(user_id)
            if hit:
                scrubbed.append("$user_id")
            anonymous_id, hit = scrubber.scrub_id(anonymous_id)
            if hit:
                scrubbed.append("$anonymous_id")
            session_id, hit = scrubber.scrub_id(session_id)
            if hit:
                scrubbed.append("$session_id")
            person_id, _ = scrubber.scrub_id(person_id)
        ingest = event.get("ingest")
        return {
            "event_id": event["event_id"],
            "customer_id": customer_id,
            "name": name,
            "timestamp": event["timestamp"],
            "properties": properties,
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "session_id": session_id,
            "resolved_user_id": person_id if identified else None,
            "plan": tenant.plan if tenant is not None else None,
            "scrubbed_properties": scrubbed,
            "received_at": ingest["received_at"] if ingest else None,
            "enriched_at": now_ms,
            "person_id": person_id,
            "schema_version": checked.schema_version,
            "schema_version_missing": checked.version_missing,
            "tracking_plan_version": self.plan_version,
            "violations": [v.to_avro() for v in violations],
            "sample_rate": rate if rate is not None else 1.0,
            "tenant": tenant.to_avro() if tenant is not None else None,
            "merge": None,
        }

    def apply_link(
        self,
        link: Mapping[str, Any] | None,
        key: bytes | None,
        tenant: TenantContext | None,
        now_ms: int,
        *,
        announce: bool = True,
    ) -> dict[str, Any] | None:
        """Apply one identity-links record to the graph. A merge also returns its ``$person_merged``
        record for the enriched topic; an identify returns None (its ``$identify`` event travels on
        usage-events and is enriched like any event). A tombstone (``link`` None) of an identify key forgets
        the link; one of a merge key forgets the merged person (an erasure)."""
        graph = self.graph
        if link is None:
            parts = key.decode(errors="replace").split("|") if key else []
            if len(parts) == 2:
                graph.forget_anonymous(parts[0], parts[1])
            elif len(parts) >= 4 and parts[1] == MERGE:
                # A merge is erased only when its person is (plg privacy forget tombstones every link of
                # the person): forget both sides' sets. Ids may contain "|", so each split is a candidate.
                named = {"|".join(parts[2:i]) for i in range(3, len(parts))}
                named |= {"|".join(parts[i:]) for i in range(3, len(parts))}
                graph.forget(parts[0], named.__contains__)
            return None
        customer_id = link["customer_id"]
        if link.get("kind", IDENTIFY) != MERGE:
            graph.identify(customer_id, link["anonymous_id"], link["user_id"])
            return None
        merged_id, survivor_id = link["anonymous_id"], link["user_id"]
        outcome = graph.merge(customer_id, merged_id, survivor_id)
        if not announce:
            return None
        scrub = self.scrubber.scrub_id
        person_id = scrub(outcome.person_id)[0] or ""
        return {
            "event_id": link["event_id"],
            "customer_id": customer_id,
            "name": PERSON_MERGED_EVENT,
            "timestamp": link["linked_at"],
            "properties": {},
            "user_id": person_id,
            "anonymous_id": None,
            "session_id": None,
            "resolved_user_id": person_id,
            "plan": tenant.plan if tenant is not None else None,
            "scrubbed_properties": [],
            "received_at": None,
            "enriched_at": now_ms,
            "person_id": person_id,
            "schema_version": None,
            "schema_version_missing": False,  # not an event a client sent: nothing to be missing
            "tracking_plan_version": self.plan_version,
            "violations": [],
            "sample_rate": 1.0,
            "tenant": tenant.to_avro() if tenant is not None else None,
            "merge": {
                "merged_id": scrub(merged_id)[0] or "",
                "survivor_id": scrub(survivor_id)[0] or "",
                "replaced_person_ids": [scrub(p)[0] or "" for p in outcome.replaced],
            },
        }
