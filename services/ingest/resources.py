"""The running ingest service (:class:`Ingest`): the resources ``build_app`` opens (the key cache, the event
writers, the rate limiter, the Kafka breaker) and the request path over them, which the routes
(``services/ingest/api.py``) receive as a dependency.

The request path, in order: authenticate (401, the route's policy) → read the body within the size limit,
gunzip (413/400) → check and normalise every event (400/403/413, per-event codes) → rate limit per key
(429) → encode and produce, then wait for every broker acknowledgement (503 when Kafka cannot take it) →
202 with one result per event.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg_pool import ConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from services.customers import CustomerDirectory
from services.customers.suspension import suspension_notice
from services.ingest import metrics as m
from services.ingest.config import IngestSettings
from services.ingest.handlers import KafkaBreaker, accepted_body, error_body, rejection_counts
from services.ingest.model import (
    Code,
    Limits,
    Normalised,
    Rejection,
    RequestContext,
    RequestError,
    identity_link_key,
)
from services.ingest.ratelimit import RateLimiter
from services.ingest.writer import EventWriter
from services.kernel import auth
from services.kernel.auth import Authenticator, Caller, CustomerKey
from services.kernel.errors import KafkaUnavailableError, SerializationError
from services.kernel.http import (
    request_id_of,
)
from services.kernel.kafka import check_reachable

log = logging.getLogger(__name__)

Normaliser = Callable[[bytes, RequestContext], Normalised]


class Ingest:
    """The running service: the resources ``build_app`` opened and the request handling over them."""

    def __init__(
        self,
        settings: IngestSettings,
        pool: ConnectionPool,
        writer: EventWriter,
        customers: CustomerDirectory | None = None,
        import_writer: EventWriter | None = None,
    ) -> None:
        self.settings = settings
        # Only for the abuse guard's notice (a suspended customer's accepted batches say so); reloaded
        # within a second of a suspension by the customers trigger's notification.
        self.customers = customers
        self.limits: Limits = settings.limits()
        self.pool = pool
        self.writer = writer
        # POST /v1/import writes to usage-events-import (never metered) with the same producer.
        self.import_writer = import_writer or writer
        # Ingest keeps its own cache TTLs (INGEST_KEY_CACHE_TTL_SECONDS, ...): it is the hot path.
        self.auth: Authenticator = auth.open_authenticator(
            pool,
            settings.auth.model_copy(
                update={
                    "key_cache_ttl_seconds": settings.key_cache_ttl_seconds,
                    "key_negative_cache_ttl_seconds": settings.key_negative_cache_ttl_seconds,
                }
            ),
        )
        self.limiter = RateLimiter(
            settings.rate_limit_events_per_second,
            settings.rate_limit_burst,
            settings.max_batch_events,
            settings.rate_limit_max_keys,
        )
        self.breaker = KafkaBreaker(settings.breaker_probe_interval_seconds)
        self._kafka_checked_at = 0.0
        self._kafka_reachable = False
        self._database_checked_at = 0.0
        self._database_reachable = False

    # -- adapters -------------------------------------------------------------------------------------

    def database_reachable(self) -> bool:
        """PostgreSQL answers. Not while the customer directory's LISTEN connection is down (a flag its
        thread keeps: no wait); otherwise a ``SELECT 1`` at most every 5 s, so a probe waits at most once
        in a while for a database that stopped answering without closing the connection."""
        if self.customers is not None and not self.customers.listening.is_set():
            return False
        now = time.monotonic()
        if now - self._database_checked_at > 5.0:
            try:
                with self.pool.connection(timeout=1) as conn:
                    conn.execute("SELECT 1")
                self._database_reachable = True
            except Exception:
                self._database_reachable = False
            self._database_checked_at = now
        return self._database_reachable

    def database_ready(self) -> bool:
        """Ready as far as PostgreSQL goes: it answers, or (an outage) keys are served from the cache —
        ingest keeps taking events with the keys it has seen (``PLG_AUTH_KEY_STALE_TTL_SECONDS``), and a
        readiness probe must not pull such an instance out of the Service. Only an ingest that could
        serve no key at all is not ready."""
        return self.database_reachable() or self.auth.keys.serves_without_lookup()

    def kafka_ready(self) -> bool:
        """Not while the breaker is open; otherwise a metadata round trip, at most every 5 s."""
        if self.breaker.is_open:
            return False
        now = time.monotonic()
        if now - self._kafka_checked_at > 5.0:
            try:
                check_reachable(self.settings.kafka, timeout=2.0)
                self._kafka_reachable = True
            except KafkaUnavailableError:
                self._kafka_reachable = False
            self._kafka_checked_at = now
        return self._kafka_reachable

    # -- the request path -----------------------------------------------------------------------------

    async def handle(
        self,
        request: Request,
        caller: Caller,
        normalise: Normaliser,
        *,
        single: bool,
        source: str = "http",
        historical: bool = False,
    ) -> Response:
        """One API request by ``caller`` (the route's policy authenticated it). A :class:`RequestError`
        raised on the way is answered by the kernel's error mapping (installed in ``build_app``), which also
        counts every answer in the request metrics."""
        request_id = request_id_of(request)
        principal = caller.principal
        assert isinstance(principal, CustomerKey)  # INGEST_POLICY admits customer keys only
        if single:
            body = await _read_body(request, self.limits.max_event_bytes, Code.EVENT_TOO_LARGE)
        else:
            body = await _read_body(request, self.limits.max_batch_bytes, Code.BATCH_TOO_LARGE)
        user_agent = request.headers.get("user-agent")
        if source == "http" and user_agent and user_agent.startswith("plg-sdk"):
            source = "sdk"
        ctx = RequestContext(
            customer_id=principal.customer_id,
            api_key_id=principal.key_id,
            request_id=request_id,
            received_at_ms=time.time_ns() // 1_000_000,
            source=source,
            library=user_agent[:128] if user_agent else None,
            registry_version=self.writer.registry_version,
        )
        outcome = normalise(body, ctx)
        m.BATCH_EVENTS.observe(outcome.total)

        retry_after = self.limiter.retry_after(principal.key_id, outcome.total, time.monotonic())
        if retry_after:
            return _json(
                429,
                error_body(
                    Code.RATE_LIMITED,
                    f"API key {principal.key_id} is over its rate of "
                    f"{self.settings.rate_limit_events_per_second:g} events/s; retry after "
                    f"{retry_after} s",
                    request_id,
                ),
                {"Retry-After": str(retry_after)},
            )

        values = self._encode(outcome)
        writer = self.import_writer if historical else self.writer
        if values:
            if not self.breaker.allow():
                return self._unavailable(request_id, outcome, "Kafka is unavailable")
            links = [
                (identity_link_key(link), self.writer.links.encode(link)) for link in outcome.identity_links
            ]
            produce_started = time.perf_counter()
            try:
                await writer.write(principal.customer_id, values, links)
            except KafkaUnavailableError as exc:
                self.breaker.failed()
                m.KAFKA_BREAKER_OPEN.set(1)
                log.warning(
                    "kafka could not take a write", extra={"error": str(exc), "request_id": request_id}
                )
                return self._unavailable(request_id, outcome, str(exc))
            m.PRODUCE_SECONDS.observe(time.perf_counter() - produce_started)
            if self.breaker.is_open:
                self.breaker.succeeded()
                m.KAFKA_BREAKER_OPEN.set(0)
                log.info("kafka writes succeed again")
            m.ACCEPTED.inc(len(values))
        for code, n in rejection_counts(outcome).items():
            m.EVENTS.labels("rejected", code).inc(n)

        if single and outcome.rejections:
            r = outcome.rejections[0]
            return _json(400, {**error_body(r.code, r.message, request_id), "results": outcome.results()})
        answer = accepted_body(request_id, outcome)
        customer = self.customers.get(principal.customer_id) if self.customers is not None else None
        if (
            customer is not None
            and customer.suspended_at is not None
            and customer.suspended(datetime.now(UTC))
        ):
            # Still accepted (the events are the evidence and are metered), but the app should know.
            answer["suspended"] = suspension_notice(customer)
        return _json(202, answer)

    def _encode(self, outcome: Normalised) -> list[bytes]:
        """Avro-encode the valid records. One that the schema still refuses (a case the checks missed) is
        rejected on its own rather than failing the request."""
        encode = self.writer.events.encode
        try:
            fast = self.writer.fast
            if fast is not None and outcome.records:
                first = outcome.records[0][1]
                customer, meta = first["customer_id"], first["ingest"]
                fast_encode = fast.for_request(customer, meta)
                return [
                    fast_encode(r) if r["ingest"] is meta and r["customer_id"] is customer else encode(r)
                    for _, r in outcome.records
                ]
            return [encode(record) for _, record in outcome.records]
        except (SerializationError, TypeError, ValueError, KeyError, OverflowError):
            pass  # find the culprit below with the generic encoder, which names the field
        values: list[bytes] = []
        kept: list[tuple[int, dict[str, Any]]] = []
        for index, record in outcome.records:
            try:
                values.append(encode(record))
                kept.append((index, record))
            except SerializationError as exc:
                log.error("a checked event did not encode", extra={"error": str(exc)})
                outcome.rejections.append(Rejection(index, record["event_id"], Code.INVALID_EVENT, str(exc)))
        ids = {r["event_id"] for _, r in kept}
        outcome.records = kept
        outcome.identity_links = [link for link in outcome.identity_links if link["event_id"] in ids]
        return values

    def _unavailable(self, request_id: str, outcome: Normalised, reason: str) -> Response:
        m.EVENTS.labels("failed", "kafka_unavailable").inc(len(outcome.records))
        retry = self.settings.unavailable_retry_after_seconds
        return _json(
            503,
            error_body(
                Code.KAFKA_UNAVAILABLE,
                f"events cannot be written now ({reason}); nothing of this request was "
                f"accepted: retry the same events (same event_id) after {retry} s",
                request_id,
            ),
            {"Retry-After": str(retry)},
        )


# ---------------------------------------------------------------------------------------------------------


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _read_body(request: Request, limit: int, too_large: Code) -> bytes:
    """The body, decompressed when gzip'd, refusing (413) anything over ``limit`` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, too_large, f"the body is {declared} bytes; at most {limit} are allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, too_large, f"the body is over {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding != "gzip":
        raise RequestError(
            415, Code.UNSUPPORTED_MEDIA_TYPE, f"Content-Encoding {encoding!r}: only gzip is supported"
        )
    return gunzip(body, limit, too_large)


def gunzip(body: bytes, limit: int, too_large: Code) -> bytes:
    """Every member of a gzip body (RFC 1952: concatenated members are one stream, as ``gzip -d`` reads
    them), at most ``limit`` bytes of output; anything after the last member but another member is
    refused rather than silently dropped."""
    if not body:
        raise RequestError(400, Code.INVALID_BODY, "the body is empty but Content-Encoding says gzip")
    parts: list[bytes] = []
    room = limit
    rest = body
    member = 0
    while rest:
        member += 1
        if member > 1 and rest[:2] != b"\x1f\x8b":
            raise RequestError(
                400,
                Code.INVALID_BODY,
                f"{len(rest)} bytes follow the gzip data and are not a gzip member; send only gzip data",
            )
        inflater = zlib.decompressobj(wbits=31)
        try:
            # max_length bounds the memory a small "zip bomb" could make us allocate.
            out = inflater.decompress(rest, room + 1)
        except zlib.error as exc:
            where = "the body" if member == 1 else f"gzip member {member}"
            raise RequestError(400, Code.INVALID_BODY, f"{where} is not valid gzip: {exc}") from None
        if len(out) > room or inflater.unconsumed_tail:
            raise RequestError(413, too_large, f"the decompressed body is over {limit} bytes")
        if not inflater.eof:
            raise RequestError(400, Code.INVALID_BODY, "the gzip body is truncated")
        parts.append(out)
        room -= len(out)
        rest = inflater.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)
