"""The tenant-context cache: one load per batch of misses, size bound (LRU), TTL and invalidation."""

from __future__ import annotations

from services.enrichment.tenants import TenantCache, TenantContext


def ctx(tier="standard"):
    return TenantContext(
        plan="pro", support_tier=tier, open_tickets=0, csm_owner=None, billing_status="active"
    )


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Loader:
    def __init__(self, data):
        self.data = data
        self.calls = []

    def __call__(self, ids):
        self.calls.append(list(ids))
        return {i: self.data[i] for i in ids if i in self.data}


def test_misses_of_a_batch_are_loaded_in_one_call_and_then_served_from_cache():
    load = Loader({"a": ctx(), "b": ctx("gold")})
    cache = TenantCache(load, max_size=10, ttl_seconds=60, clock=Clock())
    got = cache.get_many(["a", "b", "a", "zzz"])
    assert got == {"a": ctx(), "b": ctx("gold"), "zzz": None}
    assert load.calls == [["a", "b", "zzz"]]
    cache.get_many(["a", "b", "zzz"])  # unknown customers are cached too
    assert len(load.calls) == 1


def test_entries_expire_after_the_ttl():
    clock = Clock()
    load = Loader({"a": ctx()})
    cache = TenantCache(load, ttl_seconds=5, clock=clock)
    cache.get("a")
    clock.now = 4.9
    cache.get("a")
    clock.now = 5.1
    cache.get("a")
    assert len(load.calls) == 2


def test_the_cache_is_bounded_least_recently_used_first():
    load = Loader({k: ctx() for k in "abcd"})
    cache = TenantCache(load, max_size=2, clock=Clock())
    cache.get("a")
    cache.get("b")
    cache.get("a")
    cache.get("c")  # evicts b
    assert len(cache) == 2
    cache.get("a")
    assert len(load.calls) == 3
    cache.get("b")
    assert len(load.calls) == 4


def test_invalidation_makes_the_next_read_load_again():
    load = Loader({"a": ctx()})
    cache = TenantCache(load, clock=Clock())
    cache.get("a")
    load.data["a"] = ctx("premium")
    cache.invalidate("a")
    assert cache.get("a").support_tier == "premium"
    cache.invalidate()
    cache.get("a")
    assert len(load.calls) == 3


def test_an_invalidation_during_a_load_is_not_overwritten_by_the_stale_answer():
    clock = Clock()
    holder = {}

    def load(ids):
        holder["cache"].invalidate("a")  # a change committed while the query ran
        return {"a": ctx()}

    cache = TenantCache(load, clock=clock)
    holder["cache"] = cache
    cache.get("a")
    assert len(cache) == 0
