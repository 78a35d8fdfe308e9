"""The enrichment handler on the stream runtime: ``usage-events`` (+ ``identity-links``) →
``usage-events-enriched``, exactly once, with dead letters to ``usage-events-dlq``.

Per batch (one Kafka transaction): the tenant contexts of the batch's customers are fetched in one call
(from the cache, one query for the misses), then each event is enriched (:class:`Enricher`), each merge on
identity-links becomes a ``$person_merged`` record, and plan violations in ``enforce`` mode become dead
letters with the first violation's code as the reason and every ``code at path: why`` as the detail.

The identity graph itself is fed by a materialised view of the whole identity-links topic (every
instance holds every tenant's graph, since an event and its identify link are keyed differently and can
live on partitions owned by different instances); the loop also reads identity-links in its group so that
each merge is announced downstream exactly once, by the instance that owns its partition. Events wait
(RetryBatch) until the view has read the topic up to where it stood at start, so a restart never enriches
with a half-restored graph.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from services.enrichment.avro_enriched import EnrichedEventEncoder, schema_matches
from services.enrichment.handlers import Enricher, NotConsented, Rejected, SampledOut
from services.enrichment.tenants import TenantCache
from services.kernel import metrics
from services.kernel.dlq import INVALID_EVENT
from services.kernel.processing import Batch, Emit, Message, RetryBatch, StreamHandler
from services.kernel.serde import header
from services.kernel.topics import (
    HISTORICAL_PROPERTY,
    IDENTITY_LINKS,
    USAGE_EVENTS,
    USAGE_EVENTS_ENRICHED,
    USAGE_EVENTS_IMPORT,
)

log = logging.getLogger(__name__)

SERVICE = "enrichment"
INPUTS = [USAGE_EVENTS, IDENTITY_LINKS, USAGE_EVENTS_IMPORT]
OUTPUTS = [USAGE_EVENTS_ENRICHED]

EVENTS = metrics.counter(
    "plg_enrichment_events",
    "Events through enrichment by outcome: enriched, flagged (enriched with violations), dead_lettered, "
    "sampled_out, no_consent (analytics refused: metered, not enriched); and merges announced.",
    ("outcome",),
)
VIOLATIONS = metrics.counter(
    "plg_enrichment_violations", "Tracking-plan violations found, by code.", ("code", "enforced")
)
SCRUBBED = metrics.counter("plg_enrichment_scrubbed_fields", "Fields pseudonymised or dropped as PII.")
TENANT_LOOKUPS = metrics.counter(
    "plg_enrichment_tenant_lookups", "Tenant contexts asked of the cache, by result: hit, miss.", ("result",)
)
TENANT_CACHE = metrics.gauge("plg_enrichment_tenant_cache_entries", "Tenant contexts in the cache.")
IDENTITY_NODES = metrics.gauge(
    "plg_enrichment_identity_nodes", "Anonymous ids and merged user ids in the identity graph."
)
IDENTITY_LINKS_HELD = metrics.gauge(
    "plg_enrichment_identity_links",
    "Identify links of the identity graph, by where they are: memory (bounded by "
    "ENRICHMENT_STATE_MEMORY_KEYS) or disk (the local store).",
    ("where",),
)
IDENTITY_DROPPED = metrics.counter(
    "plg_enrichment_identity_dropped",
    "Identity facts not kept: merge_refused (past ENRICHMENT_IDENTITY_MAX_MERGED_PER_CUSTOMER).",
    ("reason",),
)


class EnrichmentHandler(StreamHandler):
    def __init__(
        self,
        enricher: Enricher,
        tenants: TenantCache,
        *,
        input_topic: str,
        links_topic: str,
        graph_ready: Callable[[], bool],
        import_topic: str | None = None,
    ) -> None:
        self.enricher = enricher
        self.tenants = tenants
        self.input_topic = input_topic
        self.links_topic = links_topic
        self.import_topic = import_topic
        self.graph_ready = graph_ready
        self._outcomes = {
            o: EVENTS.labels(o) for o in ("enriched", "flagged", "dead_lettered", "sampled_out", "no_consent")
        }
        self._merges = EVENTS.labels("merge_announced")
        self._hits, self._misses = TENANT_LOOKUPS.labels("hit"), TENANT_LOOKUPS.labels("miss")
        self._dropped = 0  # the graph's refused merges already counted
        self._encoder_for: int | None = None
        self._encode: Callable[[Mapping[str, Any]], bytes] = lambda _r: b""

    def process(self, batch: Batch, out: Emit) -> None:
        if not self.graph_ready():
            raise RetryBatch("the identity graph is still being restored from identity-links")
        customers = {
            m.value["customer_id"] for m in batch if m.value is not None and "customer_id" in m.value
        }
        cache = self.tenants
        hits, misses = cache.hits, cache.misses
        try:
            tenants = cache.get_many(customers)
        except Exception as exc:  # PostgreSQL away: nothing of the batch is the records' fault
            raise RetryBatch(f"tenant context unavailable: {type(exc).__name__}: {exc}") from exc
        enrich = self.enricher.enrich
        encode = self._encoder(out)
        now = out.now_ms
        counts = {"enriched": 0, "flagged": 0, "dead_lettered": 0, "sampled_out": 0, "no_consent": 0}
        scrubbed = 0
        for message in batch:
            value = message.value
            if message.topic == self.links_topic:
                self._link(message, value, tenants, out)
                continue
            if value is None:
                # The loop lets tombstones through for identity-links; on usage-events one is no event.
                out.dead_letter(
                    message, INVALID_EVENT, "a record without a value (tombstone) on usage-events"
                )
                counts["dead_lettered"] += 1
                continue
            outcome = enrich(value, tenants.get(value["customer_id"]), now)
            if type(outcome) is dict and message.topic == self.import_topic:
                # Imported history: marked so that every reader can tell it from live traffic (analytics
                # keeps it, growth's activation does not fire on it); it never reached metering.
                outcome["properties"] = {**outcome["properties"], HISTORICAL_PROPERTY: True}
            if type(outcome) is dict:
                out.send_raw(USAGE_EVENTS_ENRICHED, encode(outcome), message.key)
                if outcome["violations"]:
                    counts["flagged"] += 1
                    for v in outcome["violations"]:
                        VIOLATIONS.labels(v["code"], "false").inc()
                else:
                    counts["enriched"] += 1
                scrubbed += len(outcome["scrubbed_properties"])
            elif isinstance(outcome, Rejected):
                out.dead_letter(
                    message,
                    outcome.reason,
                    outcome.detail,
                    event_id=value.get("event_id"),
                    customer_id=value.get("customer_id"),
                    path=outcome.violations[0].path,
                )
                counts["dead_lettered"] += 1
                for v in outcome.violations:
                    VIOLATIONS.labels(v.code, "true").inc()
            elif isinstance(outcome, NotConsented):
                counts["no_consent"] += 1
            else:
                assert isinstance(outcome, SampledOut)
                counts["sampled_out"] += 1
        for name, n in counts.items():
            if n:
                self._outcomes[name].inc(n)
        if scrubbed:
            SCRUBBED.inc(scrubbed)
        self._hits.inc(cache.hits - hits)
        self._misses.inc(cache.misses - misses)
        TENANT_CACHE.set(len(cache))
        graph = self.enricher.graph
        IDENTITY_NODES.set(len(graph))
        links = graph.links
        IDENTITY_LINKS_HELD.labels("memory").set(len(links.mem))
        IDENTITY_LINKS_HELD.labels("disk").set(links.disk)
        dropped = graph.refused_merges  # the view's thread adds to them too
        IDENTITY_DROPPED.labels("merge_refused").inc(dropped - self._dropped)
        self._dropped = dropped

    def _encoder(self, out: Emit) -> Callable[[Mapping[str, Any]], bytes]:
        """The fast encoder for the output's schema id when it is the schema it was written for, else the
        kernel's generic one (built once per schema id)."""
        generic = out.encoder(USAGE_EVENTS_ENRICHED)
        if generic.schema_id != self._encoder_for:
            self._encoder_for = generic.schema_id
            fast = schema_matches(json.loads(generic.schema_str))
            self._encode = EnrichedEventEncoder(header(generic.schema_id)).encode if fast else generic.encode
        return self._encode

    def _link(
        self, message: Message, value: dict[str, Any] | None, tenants: dict[str, Any], out: Emit
    ) -> None:
        # Identify links are applied by the view (every instance needs them); a merge is applied here too —
        # merges are idempotent and order-independent, so applying one twice (loop and view) is harmless
        # — so that its announcement carries the person it resolves to now.
        if value is None or value.get("kind") != "merge":
            return
        customer_id = value["customer_id"]
        record = self.enricher.apply_link(value, message.key, tenants.get(customer_id), out.now_ms)
        if record is not None:
            out.send(USAGE_EVENTS_ENRICHED, record, key=customer_id)
            self._merges.inc()


def apply_identity(enricher: Enricher) -> Callable[[Message], None]:
    """The identity view's ``apply``: every identity-links record (identify, merge, tombstone) into the
    graph."""

    def apply(message: Message) -> None:
        enricher.apply_link(message.value, message.key, None, 0, announce=False)

    return apply
