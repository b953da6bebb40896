"""The simulated disk: one MemoryNodeStore whose writes take simulated time.

A real node's durable write (kvstore.server.runtime.execute_write: a snapshot install, then
hard state + entries + applied entries in one LMDB transaction with one fsync) is carried
out here only when the write *completes*; a crash before that loses the whole write, as a
crash before the fsync returns loses the transaction. The store itself survives crashes, as
the LMDB files do. A slow disk multiplies the latency. A wipe replaces the store with an
empty one marked for resync, as `kvstore cluster resync` does with a damaged data dir.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kvstore.server.runtime import Plan, execute_write
from kvstore.state.commands import ApplyResult
from kvstore.storage.memory_store import MemoryNodeStore
from tests.sim.world import World

# (node id, the plan whose write became durable, results) after a write completed.
PersistObserver = Callable[[str, Plan, list[ApplyResult]], None]


class SimDisk:
    def __init__(
        self,
        world: World,
        rng: random.Random,
        node_id: str,
        latency_us: tuple[int, int],
        observer: PersistObserver,
        max_sessions: int,
    ) -> None:
        self.world = world
        self.rng = rng
        self.node_id = node_id
        self.max_sessions = max_sessions
        self.store = self._new_store()
        self.resync_marker = False  # survives crashes, like the RESYNC file
        self.join_marker = False  # survives crashes, like the JOINING file (`serve --join`)
        self.wipes = 0
        self.latency_us = latency_us
        self.slow_factor = 1
        self._observer = observer
        self._token = 0
        self.pending = False
        self.writes = 0
        # One-shot callbacks told the latency of the next write (the nemesis uses this to
        # crash a node in the middle of a write).
        self.on_next_write: list[Callable[[int], None]] = []

    def _new_store(self) -> MemoryNodeStore:
        return MemoryNodeStore(shards=4, vnodes=16, max_sessions=self.max_sessions)

    def write(self, plan: Plan, done: Callable[[list[ApplyResult]], None]) -> None:
        """Start one durable write; `done(results)` runs when (if) it completes."""
        assert not self.pending, "one write at a time, as NodeDriver awaits each"
        lo, hi = self.latency_us
        latency = self.rng.randint(lo, hi) * self.slow_factor
        if plan.install is not None:
            latency += len(plan.install.data) // 50  # ~50 MB/s
        self.pending = True
        self.world.schedule(latency, self._complete, self._token, plan, done)
        hooks, self.on_next_write = self.on_next_write, []
        for hook in hooks:
            hook(latency)

    def _complete(self, token: int, plan: Plan,
                  done: Callable[[list[ApplyResult]], None]) -> None:
        if token != self._token:
            return  # the node crashed before the fsync returned: nothing was written
        self.pending = False
        self.writes += 1
        results = execute_write(self.store, plan)
        rd = plan.ready
        parts = [f"{self.node_id} wrote"]
        if rd.snapshot is not None:
            parts.append(f"snapshot@{rd.snapshot.meta.index}t{rd.snapshot.meta.term}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            parts.append(f"hs(t{hs.term} v={hs.vote or '-'} c{hs.commit})")
        if rd.entries:
            parts.append(f"entries[{rd.entries[0].index}..{rd.entries[-1].index}]"
                         f"t{rd.entries[-1].term}")
        if results:
            parts.append(f"applied[{results[0].index}..{results[-1].index}]")
        self.world.log(" ".join(parts))
        self._observer(self.node_id, plan, results)
        done(results)

    def crash(self) -> None:
        """Lose the write in progress, if any."""
        self._token += 1
        self.pending = False
        self.on_next_write = []

    def wipe(self) -> None:
        """The data dir is replaced by an empty one marked RESYNC (the node must be down)."""
        self.crash()
        self.store = self._new_store()
        self.resync_marker = True
        self.wipes += 1
