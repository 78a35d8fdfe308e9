"""The sticky store's bookkeeping without a database: one namespace per customer, nothing stored without a
customer, the memory bounded, and a row in use queued for a touch at most once per interval."""

from __future__ import annotations

from services.growth.flags import StickyAssignments


def _store(capacity: int = 10, clock: list[float] | None = None) -> StickyAssignments:
    now = clock if clock is not None else [0.0]
    return StickyAssignments(pool=None, capacity=capacity, touch_interval=100, clock=lambda: now[0])  # type: ignore[arg-type]


def test_each_customer_has_its_own_assignments() -> None:
    store = _store()
    acme, beta = store.view("acme"), store.view("beta")
    acme["s|user_id|u-1"] = "a"
    beta["s|user_id|u-1"] = "b"
    assert (acme["s|user_id|u-1"], beta["s|user_id|u-1"]) == ("a", "b")
    assert list(acme) == ["s|user_id|u-1"]
    assert sorted(store._new) == [("acme", "s|user_id|u-1"), ("beta", "s|user_id|u-1")]


def test_without_a_customer_nothing_is_queued_for_the_table() -> None:
    store = _store()
    nobody = store.view(None)
    nobody["s|user_id|u-1"] = "a"
    assert nobody["s|user_id|u-1"] == "a"  # served from memory within the process
    assert store._new == {}
    assert "s|user_id|u-1" not in store.view("acme")


def test_memory_is_bounded_by_the_capacity() -> None:
    store = _store(capacity=2)
    acme = store.view("acme")
    for i in range(5):
        acme[f"s|user_id|u-{i}"] = "a"
    assert len(store) == 2
    assert list(acme) == ["s|user_id|u-3", "s|user_id|u-4"]


def test_a_row_in_use_is_touched_once_per_interval() -> None:
    clock = [1000.0]
    store = _store(clock=clock)
    store._put(("acme", "k"), "a", 950.0)  # as prefetched: last used 50 s ago
    acme = store.view("acme")
    assert acme["k"] == "a"
    assert store._touch == set()
    clock[0] = 1051.0  # 101 s since its last use
    assert acme["k"] == "a"
    assert store._touch == {("acme", "k")}
    store._touch.clear()
    assert acme["k"] == "a"  # touched now: not again within the interval
    assert store._touch == set()
