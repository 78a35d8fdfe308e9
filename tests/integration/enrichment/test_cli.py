"""The CLI end to end: a support tier changed with `plg customers update` and tickets opened with
`plg tickets` show on the next enriched events without a restart; `plg dlq replay` makes a late event count
exactly once after the grace is raised, however often it is replayed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from tests.integration.enrichment.harness import ROOT, event
from tests.integration.metering.harness import now_ms, usage_event, wait_for

pytestmark = pytest.mark.integration

HOUR = 3600 * 1000


def plg(world, *args: str) -> str:
    env = {
        **os.environ,
        "DATABASE_URL": world.database.url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": world.kafka.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": world.registry.url,
        "PLG_TOPIC_PREFIX": world.prefix,
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_support_tier_csm_and_tickets_changed_by_the_cli_show_on_the_next_events_without_restart(world):
    customer = world.customer("pro")
    world.start_enrichment(tenant_cache_ttl_seconds=3600)  # only the change notification can refresh it
    first = event(customer)
    world.send([first])
    assert world.wait_enriched([first["event_id"]])[first["event_id"]]["tenant"]["support_tier"] == "standard"

    plg(world, "customers", "update", customer, "--support-tier", "gold", "--csm", "Dana Scully")
    plg(world, "tickets", "open", customer, "SSO login fails", "--priority", "high")
    tenant = wait_for(
        lambda: _tenant_when(
            world, customer, lambda t: t["support_tier"] == "gold" and t["open_tickets"] == 1
        ),
        timeout=15,
        interval=0.5,
        what="the new tenant context",
    )
    assert tenant["csm_owner"] == "Dana Scully"
    plg(world, "tickets", "close", customer, "--all")
    wait_for(
        lambda: _tenant_when(world, customer, lambda t: t["open_tickets"] == 0),
        timeout=15,
        interval=0.5,
        what="the ticket closed",
    )


def _tenant_when(world, customer, check):
    """The tenant context of a new event of ``customer`` if ``check`` holds for it."""
    e = event(customer)
    world.send([e])
    tenant = world.wait_enriched([e["event_id"]])[e["event_id"]]["tenant"]
    return tenant if check(tenant) else None


def test_a_late_event_dead_lettered_then_replayed_twice_after_raising_the_grace_is_metered_once(world):
    customer = world.customer("pro")
    late_ms = now_ms() - 2 * HOUR
    late = usage_event(customer, ts=late_ms)
    aggregator = world.start(grace_seconds=3600)
    world.send([late])
    wait_for(
        lambda: [d for d in world.dead_letters() if d["event_id"] == late["event_id"]], what="late letter"
    )
    listed = json.loads(plg(world, "--json", "dlq", "list", "--reason", "late_event", "--since", "10m"))
    assert [row["event_id"] for row in listed] == [late["event_id"]]
    shown = json.loads(plg(world, "dlq", "show", listed[0]["position"]))
    assert shown["value"]["error_code"] == "late_event"
    aggregator.close()
    world.running.remove(aggregator)

    world.start(grace_seconds=3 * 3600)
    first = json.loads(plg(world, "--json", "dlq", "replay", "--reason", "late_event"))
    assert first["replayed"] == 1
    assert first["to_topics"] == {world.topic("usage-events"): 1}
    second = json.loads(plg(world, "--json", "dlq", "replay", "--reason", "late_event"))
    assert (second["replayed"], second["already_replayed"]) == (0, 1)
    # Even forced, a second copy under the same event_id is deduplicated by metering.
    forced = json.loads(plg(world, "--json", "dlq", "replay", "--reason", "late_event", "--force"))
    assert forced["replayed"] == 1
    wait_for(lambda: world.period_total(customer) == (Decimal(1), 1), what="late event counted")
    # Still once: a new event of the same customer (same partition, after the forced copy, same period) is
    # counted only once the forced copy has been read — so the total is then 2, never 3.
    world.send([usage_event(customer, ts=late_ms + 1)])
    wait_for(lambda: (world.period_total(customer) or (0, 0))[1] >= 2, what="the later event counted")
    assert world.period_total(customer) == (Decimal(2), 2)


def test_a_merge_made_with_the_cli_is_announced_and_applied(world):
    customer = world.customer("pro")
    running = world.start_enrichment()
    link = json.loads(plg(world, "--json", "identity", "merge", customer, "old-account", "new-account"))
    announced = world.wait_enriched([link["event_id"]])[link["event_id"]]
    assert announced["name"] == "$person_merged"
    assert announced["person_id"] == "new-account"
    world.wait_graph(running, lambda g: g.canonical(customer, "old-account") == "new-account")
    e = event(customer, user_id="old-account")
    world.send([e])
    assert world.wait_enriched([e["event_id"]])[e["event_id"]]["person_id"] == "new-account"
