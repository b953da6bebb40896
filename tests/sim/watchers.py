"""Simulated watchers, and the promise they check: a watch sees every change of its keys
exactly once, in revision order, across crashes, wipes and snapshot installs of the node
serving it.

A watcher is what the Watch service runs for one watch: a cursor (next revision) read with
store.events from its member's applied state after each batch of changes. When its member
goes down or is being rebuilt it moves to another member and goes on from the same
revision (what a client resuming from its last seen revision + 1 does). When compaction
removed history from its position it starts over at the current revision, and that gap is
the only one it may have.

At the end its events are compared with the full change history of the agreed log,
replayed on a fresh store without the compactions.
"""

from __future__ import annotations

import random

from kvstore.etcdpb import kv_pb2
from kvstore.raft.types import Entry, EntryType
from kvstore.state import commands
from kvstore.state.mvcc import MvccError
from kvstore.storage.memory_store import MemoryNodeStore
from tests.sim.invariants import Violation
from tests.sim.node import SimNode
from tests.sim.world import US_PER_MS, World

Seen = tuple[int, bytes, bytes, int, int, int]  # type, key, value, mod, create, version


def _seen(ev: kv_pb2.Event) -> Seen:
    kv = ev.kv
    return (ev.type, kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version)


class SimWatcher:
    def __init__(self, world: World, rng: random.Random, nodes: dict[str, SimNode],
                 name: str, key: bytes, range_end: bytes) -> None:
        self.world = world
        self.rng = rng
        self.nodes = nodes
        self.name = name
        self.key, self.range_end = key, range_end
        self.node: SimNode | None = None
        self.incarnation = 0
        self.next_rev = 1
        self.events: list[Seen] = []
        # [start, end) revision windows watched without a gap.
        self.windows: list[list[int]] = [[1, 1]]
        self.moves = self.restarts_after_compaction = 0
        self.stopping = False

    def start(self) -> None:
        self.world.schedule(self.rng.randint(1, 20) * US_PER_MS, self._poll)

    def _serving(self, node: SimNode | None) -> bool:
        return (node is not None and node.up and node.rt is not None
                and node.incarnation == self.incarnation and not node.rt.resyncing)

    def _pick(self) -> None:
        ups = [n for n in self.nodes.values()
               if n.up and n.rt is not None and not n.rt.resyncing]
        if not ups:
            self.node = None
            return
        self.node = self.rng.choice(ups)
        self.incarnation = self.node.incarnation
        self.moves += 1

    def _poll(self) -> None:
        if self.stopping:
            return
        if not self._serving(self.node) or self.rng.random() < 0.01:
            self._pick()  # its member went away (or the client reconnected elsewhere)
        if self.node is not None:
            store = self.node.disk.store
            try:
                events, nxt = store.events(self.next_rev, self.key, self.range_end,
                                           limit=self.rng.randint(1, 40))
            except MvccError:
                nxt = store.revisions()[0] + 1
                self.world.log(f"watch {self.name}: history from {self.next_rev} compacted "
                               f"at {self.node.id}; starting over at {nxt}")
                self.restarts_after_compaction += 1
                self.windows.append([nxt, nxt])
                events = []
            for ev in events:
                if ev.kv.mod_revision < self.next_rev:
                    raise Violation("Watch order", (
                        f"watch {self.name} at {self.node.id} got revision "
                        f"{ev.kv.mod_revision} after asking from {self.next_rev}"))
                self.events.append(_seen(ev))
            self.next_rev = max(self.next_rev, nxt)
            self.windows[-1][1] = self.next_rev
        self.world.schedule(self.rng.randint(1, 25) * US_PER_MS, self._poll)

    def check(self, history: MemoryNodeStore) -> int:
        """Compare with the full history; returns how many events were checked."""
        checked = 0
        for start, end in self.windows:
            if start >= end:
                continue
            want = [_seen(e) for e in history.events(start, self.key, self.range_end,
                                                     limit=10**9)[0]
                    if e.kv.mod_revision < end]
            got = [s for s in self.events if start <= s[3] < end]
            if got != want:
                first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                             min(len(got), len(want)))
                raise Violation("Watch completeness", (
                    f"watch {self.name} over revisions [{start}, {end}): event {first} is "
                    f"{got[first] if first < len(got) else 'missing'}, the history has "
                    f"{want[first] if first < len(want) else 'nothing'} "
                    f"({len(got)} seen, {len(want)} in the history)"))
            checked += len(got)
        return checked


def full_history(entries: list[Entry], max_sessions: int) -> MemoryNodeStore:
    """The agreed log applied to a fresh store, compactions left out: every change ever."""
    store = MemoryNodeStore(shards=4, vnodes=16, max_sessions=max_sessions)
    kept: list[Entry] = []
    for e in entries:
        if e.type == EntryType.NORMAL and e.data:
            try:
                if commands.decode(e.data).WhichOneof("op") == "compact":
                    e = Entry(term=e.term, index=e.index, type=EntryType.NOOP, data=b"")
            except commands.CommandDecodeError:
                pass
        kept.append(e)
    if kept:
        store.persist_and_apply(None, kept, kept)
    return store
