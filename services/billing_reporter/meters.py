"""One Stripe meter per plg meter (``plg billing sync-meters``; the reporter also runs it at start):
missing ones are created (``sum`` for SUM/COUNT meters, ``last`` for level meters, over ``payload[value]``,
customer by ``stripe_customer_id``), existing ones found by event name, the mapping kept in
``billing_stripe_meters``."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import psycopg

from services.billing_reporter.stripe_gateway import StripeGateway


@dataclass(frozen=True, slots=True)
class SyncedMeter:
    meter: str
    event_name: str
    stripe_meter_id: str
    action: str  # found | created


def sync_meters(
    gateway: StripeGateway,
    conn: psycopg.Connection[Any],
    event_names: dict[str, str],
    levels: Collection[str] = (),
) -> list[SyncedMeter]:
    existing = {
        m.get("event_name"): m for m in gateway.list_meters() if m.get("status", "active") == "active"
    }
    out = []
    for meter, event_name in sorted(event_names.items()):
        found = existing.get(event_name)
        if found is not None:
            action = "found"
        else:
            # Keyed by the event name: two reporters starting together create one meter.
            found = gateway.create_meter(
                display_name=f"plg {meter}",
                event_name=event_name,
                formula="last" if meter in levels else "sum",
                idempotency_key=f"plg_meter_{event_name}",
            )
            action = "created"
        conn.execute(
            "INSERT INTO billing_stripe_meters (meter, event_name, stripe_meter_id) VALUES (%s, %s, %s)"
            " ON CONFLICT (meter) DO UPDATE SET event_name = EXCLUDED.event_name,"
            " stripe_meter_id = EXCLUDED.stripe_meter_id, synced_at = now()",
            (meter, event_name, found["id"]),
        )
        out.append(SyncedMeter(meter, event_name, str(found["id"]), action))
    return out
