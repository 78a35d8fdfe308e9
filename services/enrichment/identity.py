"""The identity graph: which person an event belongs to, from identify links and merges. No I/O but its
local store (links past the memory bound, and the sealed copy a restart reuses).

Per tenant (customer_id), two kinds of facts, both read from the compacted ``identity-links`` topic:

* **identify** ``anonymous_id → user_id``: the anonymous visitor is that user. The last link written for an
  anonymous id wins — the same rule compaction applies (the topic is keyed ``customer|anonymous_id``), so
  a graph restored from the compacted topic equals the one built live.
* **merge** ``merged_id → survivor_id``: two user ids are one person. Merges are unions: the merged ids
  form a set whose canonical ``person_id`` is chosen by a deterministic rule that depends only on the set
  of merges, never on the order they were read (identity-links has several partitions, so two instances —
  or a restore and the live run — can see merges in different orders): the members never merged away
  come first, then the smallest id. A chain a→b, b→c resolves to c; a cycle a→b, b→a to min(a, b).

Sets keep their member list and every member points straight at its set's root (union by size, and the
path compression done eagerly at each union), so a look-up on the hot path is one dict ``get``. Writers
(the view thread, the handler applying a merge) take the lock; readers do not need it, because each
pointer is replaced atomically and a reader racing a merge sees the person before or after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from services.kernel.processing.spill import SpillMap
from services.kernel.processing.store import LocalStore

Node = tuple[str, str]  # (customer_id, id)


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """What a merge did: the set's canonical person now, and the canonical ids that stopped being one."""

    person_id: str
    replaced: tuple[str, ...]


#: Identify links kept in memory when the graph has a local store (``ENRICHMENT_STATE_MEMORY_KEYS``); the
#: rest are on disk. Without a store (``ENRICHMENT_STATE_STORE=memory``) every link is in memory.
MEMORY_LINKS = 2_000_000
#: User ids merges may join per customer (``ENRICHMENT_IDENTITY_MAX_MERGED_PER_CUSTOMER``): an abuse guard.
MAX_MERGED_PER_CUSTOMER = 100_000
#: Prefixes in the local store: identify links (the kernel's SpillMap) and, at a seal, the merged sets.
LINK_PREFIX = b"A"
SET_PREFIX = b"M"


def _node_key(node: Node) -> bytes:
    customer = node[0].encode()
    return len(customer).to_bytes(2, "big") + customer + node[1].encode()


def _customer_prefix(customer_id: str) -> bytes:
    customer = customer_id.encode()
    return len(customer).to_bytes(2, "big") + customer


def _parse_node(raw: bytes) -> Node:
    size = int.from_bytes(raw[:2], "big")
    return raw[2 : 2 + size].decode(), raw[2 + size :].decode()


class IdentityGraph:
    """Memory bounded by a setting, nothing evicted (docs/enrichment.md#bounded-memory):

    * identify links live in the kernel's :class:`~services.kernel.processing.spill.SpillMap`: with a
      local store at most ``memory_links`` in memory (the least recently written go to disk first), every
      other one on disk and found by a point lookup; the store is sealed at the view's offsets at a clean
      stop and reused at the next start (only the records written since are read);
    * merged sets stay in memory, at most ``max_merged`` user ids per customer (an abuse guard): a merge
      that would add more is refused and counted (the ids stay separate persons). Past the bound the graph
      can depend on the order merges were read.
    """

    __slots__ = (
        "_anon",
        "_flagged",
        "_lock",
        "_members",
        "_merged",
        "_parent",
        "identifies",
        "max_merged",
        "merges",
        "refused_merges",
    )

    def __init__(
        self,
        max_merged: int = MAX_MERGED_PER_CUSTOMER,
        *,
        store: LocalStore | None = None,
        memory_links: int = MEMORY_LINKS,
    ) -> None:
        self._anon: SpillMap[Node, str] = SpillMap(
            store,
            prefix=LINK_PREFIX,
            memory=memory_links,
            encode_key=_node_key,
            decode_key=_parse_node,
            encode_value=str.encode,
            decode_value=bytes.decode,
        )
        self._parent: dict[Node, Node] = {}
        self._members: dict[Node, list[Node]] = {}
        self._flagged: set[Node] = set()  # ids some merge merged away
        # customer -> user ids in its merged sets
        self._merged: dict[str, int] = {}
        self._lock = threading.Lock()
        self.max_merged = max(2, max_merged)
        self.identifies = 0
        self.merges = 0
        self.refused_merges = 0

    @property
    def links(self) -> SpillMap[Node, str]:
        """The identify links (memory and disk): for metrics and tests."""
        return self._anon

    # -- reads (hot path) ------------------------------------------------------------------------------

    def canonical(self, customer_id: str, user_id: str) -> str:
        root = self._parent.get((customer_id, user_id))
        return user_id if root is None else root[1]

    def user_of(self, customer_id: str, anonymous_id: str) -> str | None:
        return self._anon.get((customer_id, anonymous_id))

    def resolve(
        self, customer_id: str, user_id: str | None, anonymous_id: str | None
    ) -> tuple[str | None, bool]:
        """The event's ``person_id`` and whether it is an identified user. A user id resolves through merges;
        an anonymous id through its identify link, else it stands for itself until identified; an event
        naming neither has no person (None)."""
        if user_id is not None:
            root = self._parent.get((customer_id, user_id))
            return (user_id if root is None else root[1]), True
        if anonymous_id is not None:
            user = self._anon.get((customer_id, anonymous_id))
            if user is not None:
                root = self._parent.get((customer_id, user))
                return (user if root is None else root[1]), True
            return anonymous_id, False
        return None, False

    # -- writes ----------------------------------------------------------------------------------------

    def identify(self, customer_id: str, anonymous_id: str, user_id: str) -> None:
        with self._lock:
            self._anon[(customer_id, anonymous_id)] = user_id
            self.identifies += 1
            # Past the memory bound (plus 10 %: one write batch per ~bound/10 links) the least recently
            # written links go to disk; written there before they leave memory, so a reader finds each.
            self._anon.spill(slack=0.1)

    def forget_anonymous(self, customer_id: str, anonymous_id: str) -> None:
        """A tombstone on identity-links: the link was erased (e.g. a deletion request)."""
        with self._lock:
            self._anon.pop((customer_id, anonymous_id))

    def forget(self, customer_id: str, matches: Callable[[str], bool]) -> int:
        """Erase a person (``plg privacy forget``): every id of ``customer_id`` that ``matches``, with the
        whole merged set it belongs to, and every identify link from or to one of them. Later events of
        those ids start over as new persons. Returns the nodes removed."""
        with self._lock:
            doomed: set[Node] = set()
            for node in [n for n in self._parent if n[0] == customer_id and matches(n[1])]:
                root = self._parent[node]
                doomed.update(self._members.get(root, [root]))
                doomed.add(node)
            doomed_ids = {n[1] for n in doomed}
            links = [
                n
                for n, user in self._anon.items(_customer_prefix(customer_id))
                if n[0] == customer_id and (matches(n[1]) or matches(user) or user in doomed_ids)
            ]
            for node in links:
                self._anon.pop(node)
            for node in doomed:
                if node in self._parent:
                    self._members.pop(self._parent.pop(node), None)
                self._flagged.discard(node)
            self._merged[customer_id] = sum(1 for n in self._parent if n[0] == customer_id)
            return len(doomed) + len(links)

    def merge(self, customer_id: str, merged_id: str, survivor_id: str) -> MergeOutcome:
        """Record that ``merged_id`` is the same person as ``survivor_id``. Idempotent, and the final
        graph does not depend on the order of merges."""
        a: Node = (customer_id, merged_id)
        b: Node = (customer_id, survivor_id)
        with self._lock:
            self.merges += 1
            if a == b:
                root = self._parent.get(a, a)
                return MergeOutcome(root[1], ())
            new_nodes = (a not in self._parent) + (b not in self._parent)
            merged = self._merged.get(customer_id, 0)
            if new_nodes and merged + new_nodes > self.max_merged:
                self.refused_merges += 1
                root = self._parent.get(b, b)
                return MergeOutcome(root[1], ())
            self._merged[customer_id] = merged + new_nodes
            self._flagged.add(a)
            root_a = self._parent.get(a, a)
            root_b = self._parent.get(b, b)
            members_a = self._members.get(root_a, [root_a])
            if root_a == root_b:
                members = members_a
                old_roots = {root_a}
            else:
                members_b = self._members.pop(root_b, [root_b])
                self._members.pop(root_a, None)
                # Union by size: extend the longer list.
                if len(members_a) >= len(members_b):
                    members_a.extend(members_b)
                    members = members_a
                else:
                    members_b.extend(members_a)
                    members = members_b
                old_roots = {root_a, root_b}
            flagged = self._flagged
            root = min(members, key=lambda n: (n in flagged, n[1]))
            for node in members:
                self._parent[node] = root
            self._members.pop(root_a, None)
            self._members[root] = members
            replaced = tuple(sorted(r[1] for r in old_roots if r != root))
            return MergeOutcome(root[1], replaced)

    def __len__(self) -> int:
        return len(self._anon) + len(self._parent)

    # -- the local store's seal and warm load (the identity view's checkpoint) ----------------------------

    def write_all(self) -> None:
        """Before the store is sealed: the links in memory and every merged set (members, and which of them
        some merge merged away), one record per set."""
        with self._lock:
            store = self._anon.store
            if store is None:
                return
            self._anon.write_all()
            batch = store.batch()
            for root, members in self._members.items():
                record = [[n[1], n in self._flagged] for n in members]
                batch.put(SET_PREFIX + _node_key(root), orjson.dumps(record))
            store.write(batch)

    def load(self, seal: dict[str, Any]) -> None:
        """From a sealed store: the merged sets back into memory (their records deleted: the next seal
        writes them again), the links left on disk (``seal["links"]`` of them), read as events need them."""
        with self._lock:
            store = self._anon.store
            assert store is not None
            batch = store.batch()
            for key, raw in store.items(SET_PREFIX):
                customer_id, _ = _parse_node(key[1:])
                members: list[Node] = []
                for member_id, flagged in orjson.loads(raw):
                    node = (customer_id, str(member_id))
                    members.append(node)
                    if flagged:
                        self._flagged.add(node)
                root = min(members, key=lambda n: (n in self._flagged, n[1]))
                for node in members:
                    self._parent[node] = root
                self._members[root] = members
                self._merged[customer_id] = self._merged.get(customer_id, 0) + len(members)
                batch.delete(key)
            store.write(batch)
            self._anon.load(int(seal.get("links") or 0))

    def seal_content(self) -> dict[str, Any]:
        return {"links": len(self._anon)}
