"""One Stripe meter per plg meter (``plg billing sync-meters``; the reporter also runs it at start):
missing ones are created (``sum`` for SUM/COUNT meters, ``last`` for level meters, over ``payload[value]``,
customer by ``stripe_customer_id``), existing ones found by event name, the mapping kept in
``billing_stripe_meters`` per Stripe account (:meth:`StripeGateway.account`, migration 0160): an id is
only ever read back for the account that made it."""

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
    account = gateway.account()
    adopt_legacy_ids(conn, account)
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
            "INSERT INTO billing_stripe_meters (stripe_account, meter, event_name, stripe_meter_id)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (stripe_account, meter) DO UPDATE SET"
            " event_name = EXCLUDED.event_name, stripe_meter_id = EXCLUDED.stripe_meter_id,"
            " synced_at = now()",
            (account, meter, event_name, found["id"]),
        )
        out.append(SyncedMeter(meter, event_name, str(found["id"]), action))
    return out


def stripe_meter_ids(conn: psycopg.Connection[Any], account: str) -> dict[str, str]:
    """plg meter → Stripe meter id in ``account`` (what ``sync_meters`` kept for it)."""
    adopt_legacy_ids(conn, account)
    rows = conn.execute(
        "SELECT meter, stripe_meter_id FROM billing_stripe_meters WHERE stripe_account = %s", (account,)
    ).fetchall()
    return {str(meter): str(meter_id) for meter, meter_id in rows}


def adopt_legacy_ids(conn: psycopg.Connection[Any], account: str) -> None:
    """Ids cached before migration 0160 (account '') were made by the account the deployment used then,
    which is the one that comes back after an upgrade: the first account reading a cache it has no rows
    in takes them over, so the upgraded deployment keeps working before its next sync. (Were it another
    account, its own sync at start rewrites every row it needs, as a sync always does.)"""
    for table in ("billing_stripe_meters", "billing_stripe_prices"):
        conn.execute(
            f"UPDATE {table} SET stripe_account = %s WHERE stripe_account = ''"  # two fixed table names
            f" AND NOT EXISTS (SELECT 1 FROM {table} WHERE stripe_account = %s)",
            (account, account),
        )
