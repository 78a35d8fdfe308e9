"""Delivered reports onto ``billing-reports`` (Avro, key = customer id), acknowledged before the ledger
marks them published: at least once, ``report_id`` (the meter event identifier) dedups downstream."""

from __future__ import annotations

from typing import Any

from services.billing_reporter.closing import FinalInvoice
from services.billing_reporter.ledger import ReportRow
from services.kernel.kafka import Producer
from services.kernel.serde import SchemaRegistry
from services.kernel.topics import BILLING_INVOICES, BILLING_REPORTS, topic
from services.plans.model import PlansConfig


def report_record(row: ReportRow, currency: str) -> dict[str, Any]:
    reported_at = row.delivered_at if row.delivered_at is not None else row.created_at
    return {
        "report_id": row.identifier,
        "idempotency_key": row.identifier,
        "customer_id": row.customer_id,
        "stripe_customer_id": row.stripe_customer_id,
        "meter": row.meter,
        "window_start": row.window_start,
        "window_end": row.window_end,
        "quantity": row.quantity,
        "amount": None,  # priced on the invoice, not per report
        "currency": currency,
        "status": "REPORTED",
        "reported_at": int(reported_at * 1000),
        "revision": row.revision,
        "window_total": row.window_total,
    }


class InvoicePublisher:
    """Final invoices onto ``billing-invoices`` (key = customer id), acknowledged before marked published."""

    def __init__(self, producer: Producer, registry: SchemaRegistry, prefix: str, timeout: float = 30.0):
        spec = topic(BILLING_INVOICES, prefix)
        assert spec.schema_path is not None
        self.topic = spec.name
        self.producer = producer
        self.encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        self.timeout = timeout

    def publish(self, invoices: list[FinalInvoice]) -> None:
        futures = [
            self.producer.send(self.topic, self.encoder.encode(inv.record()), key=inv.customer_id)
            for inv in invoices
        ]
        for future in futures:
            future.result(timeout=self.timeout)


class ReportPublisher:
    def __init__(
        self,
        producer: Producer,
        registry: SchemaRegistry,
        prefix: str,
        config: PlansConfig,
        timeout: float = 30.0,
    ):
        spec = topic(BILLING_REPORTS, prefix)
        assert spec.schema_path is not None
        self.topic = spec.name
        self.producer = producer
        self.encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        self.currency = config.currency
        self.timeout = timeout

    def publish(self, rows: list[ReportRow]) -> None:
        futures = [
            self.producer.send(
                self.topic, self.encoder.encode(report_record(row, self.currency)), key=row.customer_id
            )
            for row in rows
        ]
        for future in futures:
            future.result(timeout=self.timeout)
