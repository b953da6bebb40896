"""The simulated disk: one MemoryNodeStore whose writes take simulated time.

A real node's persist_and_apply is one LMDB transaction with one fsync. Here it is applied
to the store only when the write *completes*; a crash before that loses the whole write, as
a crash before the fsync returns loses the transaction. The store itself survives crashes,
as the LMDB files do. A slow disk multiplies the latency.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from kvstore.raft.types import Entry, HardState
from kvstore.state.commands import ApplyResult
from kvstore.storage.memory_store import MemoryNodeStore
from tests.sim.world import World

# (node id, hard state, entries, committed, results) after a write became durable.
PersistObserver = Callable[
    [str, HardState | None, Sequence[Entry], Sequence[Entry], list[ApplyResult]], None
]


class SimDisk:
    def __init__(
        self,
        world: World,
        rng: random.Random,
        node_id: str,
        latency_us: tuple[int, int],
        observer: PersistObserver,
    ) -> None:
        self.world = world
        self.rng = rng
        self.node_id = node_id
        self.store = MemoryNodeStore(shards=4, vnodes=16)
        self.latency_us = latency_us
        self.slow_factor = 1
        self._observer = observer
        self._token = 0
        self.pending = False
        self.writes = 0
        # One-shot callbacks told the latency of the next write (the nemesis uses this to
        # crash a node in the middle of a write).
        self.on_next_write: list[Callable[[int], None]] = []

    def write(
        self,
        hard_state: HardState | None,
        entries: tuple[Entry, ...],
        committed: tuple[Entry, ...],
        done: Callable[[list[ApplyResult]], None],
    ) -> None:
        """Start one durable write; `done(results)` runs when (if) it completes."""
        assert not self.pending, "one write at a time, as NodeDriver awaits each"
        lo, hi = self.latency_us
        latency = self.rng.randint(lo, hi) * self.slow_factor
        self.pending = True
        self.world.schedule(latency, self._complete, self._token, hard_state, entries,
                            committed, done)
        hooks, self.on_next_write = self.on_next_write, []
        for hook in hooks:
            hook(latency)

    def _complete(
        self,
        token: int,
        hard_state: HardState | None,
        entries: tuple[Entry, ...],
        committed: tuple[Entry, ...],
        done: Callable[[list[ApplyResult]], None],
    ) -> None:
        if token != self._token:
            return  # the node crashed before the fsync returned: nothing was written
        self.pending = False
        self.writes += 1
        results = self.store.persist_and_apply(hard_state, entries, committed)
        parts = [f"{self.node_id} wrote"]
        if hard_state is not None:
            parts.append(f"hs(t{hard_state.term} v={hard_state.vote or '-'} "
                         f"c{hard_state.commit})")
        if entries:
            parts.append(f"entries[{entries[0].index}..{entries[-1].index}]"
                         f"t{entries[-1].term}")
        if results:
            parts.append(f"applied[{results[0].index}..{results[-1].index}]")
        self.world.log(" ".join(parts))
        self._observer(self.node_id, hard_state, entries, committed, results)
        done(results)

    def crash(self) -> None:
        """Lose the write in progress, if any."""
        self._token += 1
        self.pending = False
        self.on_next_write = []
