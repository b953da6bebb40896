"""A tiny synchronous in-memory cluster for driving RawNodes by hand in unit tests.

Why this does not go through kvstore.server.runtime.NodeRuntime: these tests pin the core's
own contract (what a Ready holds, what advance() accepts) with no state machine, sessions,
batching or request registries in between, and deliver messages one round at a time so a
test can stop the world between any two steps. The runtime's rules are exercised by
tests/sim, which drives the production runtime over MemoryNodeStore, and by
tests/server/test_runtime.py.
"""

from __future__ import annotations

import random

from kvstore.raft.core import RaftConfig
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import MemoryStorage
from kvstore.raft.types import Entry, EntryType, Message, MessageType, ReadState, Role


class Cluster:
    def __init__(self, n: int, seed: int = 1, election_ticks: int = 10, **cfg: object) -> None:
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        self.cfg = dict(election_ticks=election_ticks, **cfg)
        self.storage = {i: MemoryStorage() for i in self.ids}
        self.applied: dict[str, list[Entry]] = {i: [] for i in self.ids}
        self.reads: dict[str, list[ReadState]] = {i: [] for i in self.ids}
        self.dropped: dict[str, list[int]] = {i: [] for i in self.ids}
        self.inflight: list[Message] = []
        self.cut: set[tuple[str, str]] = set()  # (src, dst) pairs whose messages are dropped
        self.seed = seed
        self.snapshots: dict[tuple[str, int], list[Entry]] = {}
        self.snapshots_sent = 0
        self.fail_snapshots = False
        self.nodes = {i: self._new_node(i) for i in self.ids}

    def _new_node(self, node_id: str) -> RawNode:
        cfg = RaftConfig(node_id=node_id, voters=tuple(self.ids),  # type: ignore[arg-type]
                         applied=self.storage[node_id].first_index() - 1, **self.cfg)
        rng = random.Random(f"{self.seed}-{node_id}")
        return RawNode(cfg, self.storage[node_id], rng)

    def restart(self, node_id: str) -> None:
        """Crash and restart from the durable storage (everything here is synced)."""
        self.inflight = [m for m in self.inflight if m.dst != node_id and m.src != node_id]
        self.applied[node_id] = []
        self.nodes[node_id] = self._new_node(node_id)

    def isolate(self, node_id: str) -> None:
        for other in self.ids:
            if other != node_id:
                self.cut.add((node_id, other))
                self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()

    def process(self, node_id: str) -> bool:
        node = self.nodes[node_id]
        if not node.has_ready():
            return False
        rd = node.ready()
        if rd.snapshot is not None:
            # The state a runtime would have streamed: the sender's applied entries.
            self.storage[node_id].install(rd.snapshot.meta)
            self.applied[node_id] = list(self.snapshots.pop((node_id, rd.snapshot.meta.index)))
        self.storage[node_id].save(rd.hard_state, rd.entries)
        self.applied[node_id].extend(e for e in rd.committed)
        self.reads[node_id].extend(rd.read_states)
        self.dropped[node_id].extend(rd.dropped_reads)
        for m in rd.messages:
            if (m.src, m.dst) in self.cut:
                continue
            if m.type == MessageType.SNAP:
                self._stream_snapshot(m)
            else:
                self.inflight.append(m)
        node.advance(rd)
        return True

    def _stream_snapshot(self, m: Message) -> None:
        """Play the leader's runtime: ship its applied state, then report to the core."""
        if self.fail_snapshots:
            self.nodes[m.src].report_snapshot(m.dst, None)
            return
        leader = self.nodes[m.src].raft
        index = leader.log.applied
        term = leader.log.term(index)
        assert term is not None
        self.snapshots[(m.dst, index)] = list(self.applied[m.src])
        self.inflight.append(Message(MessageType.SNAP, m.src, m.dst, m.term, log_term=term,
                                     index=index))
        self.snapshots_sent += 1
        self.nodes[m.src].report_snapshot(m.dst, index)

    def compact(self, node_id: str, index: int) -> None:
        self.storage[node_id].compact(index)

    def stabilize(self, max_rounds: int = 1000) -> None:
        for _ in range(max_rounds):
            progressed = False
            for i in self.ids:
                progressed |= self.process(i)
            if self.inflight:
                msgs, self.inflight = self.inflight, []
                for m in msgs:
                    if self.delivers(m):
                        self.nodes[m.dst].step(m)
                progressed = True
            if not progressed:
                return
        raise AssertionError("cluster did not stabilize")

    def delivers(self, m: Message) -> bool:
        """Whether a message in flight reaches its destination (a hook for scenarios that
        drop or cut messages after they were sent)."""
        return True

    def tick(self, node_id: str, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[node_id].tick()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for i in self.ids:
                self.nodes[i].tick()
            self.stabilize()

    def elect(self, node_id: str) -> None:
        """Make node_id time out first and win; the others are taken out of their leader
        lease as if an election timeout had passed for them too (without campaigning)."""
        node = self.nodes[node_id]
        for other in self.ids:
            if other != node_id:
                raft = self.nodes[other].raft
                raft.election_elapsed = max(raft.election_elapsed, raft.cfg.election_ticks)
        for _ in range(100):
            if node.role == Role.LEADER:
                self.stabilize()
                return
            node.tick()
            self.stabilize()
        raise AssertionError(f"{node_id} did not become leader")

    def leaders(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].role == Role.LEADER]

    def data(self, node_id: str) -> list[bytes]:
        return [e.data for e in self.applied[node_id] if e.type == EntryType.NORMAL]

    def msgs_of(self, t: MessageType) -> list[Message]:
        return [m for m in self.inflight if m.type == t]
