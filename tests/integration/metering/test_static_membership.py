"""Warm restarts among several replicas (docs/operations.md#warm-restarts-and-state-volumes): with static
membership, a replica stopped cleanly and started again with the same instance id (a StatefulSet pod's
name) within its session gets its own partitions back, unprocessed by anyone else, and reuses every
partition's sealed store instead of replaying the changelog — dedup exact across it."""

from __future__ import annotations

from decimal import Decimal

from confluent_kafka.admin import AdminClient

from services.kernel.kafka import base_config
from tests.integration.metering.harness import Metering, Running, usage_event, wait_for

PARTITIONS = 6  # usage-events (services/kernel/topics.py)
# Longer than the restart below takes, even on a loaded machine: the stopped member keeps its partitions.
STATIC = {"static_membership": True, "session_timeout_ms": 60_000}


def owned(running: Running) -> set[int]:
    return set(running.app.handler.states)


def assignments(metering: Metering) -> dict[str | None, set[int]]:
    """The group as the broker describes it: each member's group.instance.id, its usage-events partitions."""
    group = f"{metering.prefix}metering-aggregator"
    admin = AdminClient(base_config(metering.kafka, "static-membership-test"))
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    usage_events = metering.topic("usage-events")
    return {
        member.group_instance_id: {
            tp.partition for tp in member.assignment.topic_partitions if tp.topic == usage_events
        }
        for member in description.members
    }


def test_a_static_member_restarted_within_its_session_resumes_its_own_partitions_from_its_stores(
    metering: Metering,
):
    a = metering.start(instance_id="agg-static-0", **STATIC)
    b = metering.start(instance_id="agg-static-1", **STATIC)
    wait_for(
        lambda: owned(a) and owned(b) and len(owned(a) | owned(b)) == PARTITIONS,
        timeout=90,
        what="both members own partitions, all six assigned",
    )
    a_parts, b_parts = owned(a), owned(b)
    assert not a_parts & b_parts

    # One customer per partition, so each partition has state (dedup ids, windows) and a seal to check.
    by_partition: dict[int, str] = {}
    while len(by_partition) < PARTITIONS:
        customer = metering.customer("pro")
        by_partition.setdefault(int(a.app.handler.home_partition(customer)), customer)
    events = {c: [usage_event(c) for _ in range(12)] for c in by_partition.values()}
    metering.send(e for evs in events.values() for e in evs[:8])
    for c in by_partition.values():
        wait_for(lambda c=c: metering.period_total(c) == (Decimal(8), 8), timeout=60, what=f"{c}: 8 counted")

    a.close()  # SIGTERM's path: the batch committed, every store sealed; a static member does not leave
    # While it is away the group still assigns it its partitions (a dynamic member would have left at once
    # and b taken them over, counting what follows and committing past a's seals)...
    wait_for(
        lambda: assignments(metering) == {"agg-static-0": a_parts, "agg-static-1": b_parts},
        timeout=30,
        what="the stopped static member still holds its partitions",
    )
    metering.send(e for evs in events.values() for e in evs)  # 8 duplicates and 4 new per customer
    for p in b_parts:
        c = by_partition[p]
        wait_for(lambda c=c: metering.period_total(c) == (Decimal(12), 12), timeout=60, what=f"{c}: 12 by b")
    # ...so nobody counts its partitions' events meanwhile.
    assert {metering.period_total(by_partition[p]) for p in a_parts} == {(Decimal(8), 8)}
    a = metering.start(instance_id="agg-static-0", **STATIC)
    wait_for(lambda: owned(a) == a_parts, timeout=90, what="the restarted member owns its own partitions")
    for c in by_partition.values():
        wait_for(lambda c=c: metering.period_total(c) == (Decimal(12), 12), timeout=60, what=f"{c}: 12, once")
    # Warm: every partition of the restarted member came from its sealed store, still at the committed
    # offset (nobody processed the events sent meanwhile), and the other member kept its own.
    assert a.app.handler.restored_from == dict.fromkeys(a_parts, "store")
    assert owned(b) == b_parts
