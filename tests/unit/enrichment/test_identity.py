"""The identity graph: identify links, merges to a deterministic survivor, order independence."""

from __future__ import annotations

import itertools
import random

from services.enrichment.identity import IdentityGraph


def test_anonymous_resolves_to_itself_until_identified_then_to_the_user():
    g = IdentityGraph()
    assert g.resolve("acme", None, "anon-1") == ("anon-1", False)
    g.identify("acme", "anon-1", "u1")
    assert g.resolve("acme", None, "anon-1") == ("u1", True)
    assert g.resolve("acme", "u1", None) == ("u1", True)
    assert g.resolve("acme", None, None) == (None, False)


def test_tenants_are_separate():
    g = IdentityGraph()
    g.identify("acme", "anon-1", "u1")
    assert g.resolve("globex", None, "anon-1") == ("anon-1", False)


def test_the_last_identify_of_an_anonymous_id_wins_and_a_tombstone_forgets_it():
    g = IdentityGraph()
    g.identify("acme", "anon-1", "u1")
    g.identify("acme", "anon-1", "u2")
    assert g.resolve("acme", None, "anon-1") == ("u2", True)
    g.forget_anonymous("acme", "anon-1")
    assert g.resolve("acme", None, "anon-1") == ("anon-1", False)


def test_merge_resolves_merged_ids_and_their_anonymous_ids_to_the_survivor():
    g = IdentityGraph()
    g.identify("acme", "anon-1", "u1")
    outcome = g.merge("acme", "u1", "u2")
    assert outcome.person_id == "u2"
    assert outcome.replaced == ("u1",)
    assert g.resolve("acme", "u1", None) == ("u2", True)
    assert g.resolve("acme", None, "anon-1") == ("u2", True)
    # Idempotent: nothing more changes.
    assert g.merge("acme", "u1", "u2").replaced == ()


def test_chains_resolve_to_the_last_survivor():
    g = IdentityGraph()
    g.merge("acme", "a", "b")
    g.merge("acme", "b", "c")
    assert {g.canonical("acme", x) for x in "abc"} == {"c"}


def test_cycles_pick_the_smallest_id():
    g = IdentityGraph()
    g.merge("acme", "b", "a")
    g.merge("acme", "a", "b")
    assert g.canonical("acme", "a") == g.canonical("acme", "b") == "a"


def test_final_graph_does_not_depend_on_the_order_of_merges():
    merges = [
        ("u3", "u1"),
        ("u1", "u2"),
        ("u5", "u4"),
        ("u4", "u2"),
        ("u6", "u7"),
        ("u7", "u6"),
        ("u8", "u9"),
    ]
    answers = set()
    for order in itertools.islice(itertools.permutations(merges), 0, 5040, 7):
        g = IdentityGraph()
        for merged, survivor in order:
            g.merge("acme", merged, survivor)
        answers.add(tuple(g.canonical("acme", f"u{i}") for i in range(1, 10)))
    assert answers == {("u2", "u2", "u2", "u2", "u2", "u6", "u6", "u9", "u9")}


def test_large_random_unions_stay_consistent():
    rng = random.Random(7)
    g = IdentityGraph()
    for _ in range(2000):
        a, b = rng.randrange(500), rng.randrange(500)
        g.merge("t", f"u{a:03}", f"u{b:03}")
    roots = {g.canonical("t", f"u{i:03}") for i in range(500)}
    # Every root is its own canonical id.
    assert all(g.canonical("t", r) == r for r in roots)
