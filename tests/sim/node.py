"""One simulated node: the production node runtime (kvstore.server.runtime.NodeRuntime)
in a virtual-time shell.

The shell does what NodeDriver does with sockets, threads and LMDB, with simulated ones: it
wakes on input and ticks, feeds the runtime, carries each Plan out (messages before or after
the durable write as the plan says; the write on the simulated disk, which takes time and
is lost in a crash), streams snapshots through the simulated network, and compacts when the
runtime says so. Every rule lives in the runtime; nothing here decides what Raft does.

Crash drops everything volatile (the runtime, its queues, the write in progress); restart
builds a new runtime over the surviving store. A wiped node (resync) restarts on an empty
store marked "resyncing", as `kvstore cluster resync` does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from kvstore.raft.core import RaftConfig
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import LogStorage
from kvstore.raft.types import Message, MessageType, Role
from kvstore.server.runtime import NodeRuntime, Plan
from kvstore.state.commands import ApplyResult
from kvstore.state.membership import Member
from kvstore.v1 import raft_pb2
from tests.sim.disk import SimDisk
from tests.sim.network import describe
from tests.sim.world import World

T = TypeVar("T")

# (source node, peer, leader term, snapshot bytes, done(delivered?))
SnapshotStreamer = Callable[[str, str, int, bytes, Callable[[bool], None]], None]


class ConnectionLost(Exception):
    """The node crashed while a client request was in progress."""


class Promise(Generic[T]):
    """A minimal future: resolved once, callbacks run at once (they only schedule events)."""

    __slots__ = ("_done", "_result", "_error", "_callbacks")

    def __init__(self) -> None:
        self._done = False
        self._result: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Promise[T]], None]] = []

    def done(self) -> bool:
        return self._done

    def result(self) -> T:
        assert self._done
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def error(self) -> BaseException | None:
        return self._error

    def set_result(self, value: T) -> None:
        self._finish(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, value: T | None, error: BaseException | None) -> None:
        assert not self._done, "promise resolved twice"
        self._done, self._result, self._error = True, value, error
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, cb: Callable[[Promise[T]], None]) -> None:
        if self._done:
            cb(self)
        else:
            self._callbacks.append(cb)


class NodeTiming:
    """Per-node timing knobs; the nemesis changes them to make a node slow."""

    def __init__(self, tick_us: int, turn_us: tuple[int, int]) -> None:
        self.tick_us = tick_us
        self.turn_us = turn_us
        self.tick_factor = 1  # a slow clock/ticker
        self.stalled_until = 0  # a paused process (GC, SIGSTOP): no turns until then


class SimRuntime(NodeRuntime):
    """The production runtime with the simulator's core hook."""

    def __init__(self, node: SimNode, **kwargs: Any) -> None:
        self._node = node
        super().__init__(**kwargs)

    def open_raw(self, config: RaftConfig, storage: LogStorage, rng: random.Random) -> RawNode:
        return self._node.open_raw(config, storage, rng)

    def _apply_membership(self, members: Sequence[Member]) -> None:
        # The voters in force until now: one step may apply several changes, and a leader
        # may commit under each in turn (the invariants accept a majority of any of them).
        self._node.step_voters.append(self.raw.raft.voters)
        super()._apply_membership(members)


class SimNode:
    """The shell of one node. Subclass and override `open_raw` or `send_early` to build
    deliberately broken nodes (see test_mutations.py)."""

    def __init__(
        self,
        world: World,
        node_id: str,
        voters: tuple[str, ...],
        disk: SimDisk,
        send: Callable[[Sequence[Message]], None],
        rng_source: random.Random,
        timing: NodeTiming,
        raft_options: dict[str, Any],
        snapshot_entries: int = 10_000,
        stream_snapshot: SnapshotStreamer | None = None,
    ) -> None:
        self.world = world
        self.id = node_id
        self.voters = voters
        self.disk = disk
        self._send = send
        self._rng_source = rng_source
        self.timing = timing
        self.raft_options = dict(raft_options)
        self.election_ticks = self.raft_options.pop("election_ticks", 6)
        self.snapshot_entries = snapshot_entries
        self._stream_snapshot = stream_snapshot
        self.rng = random.Random(rng_source.getrandbits(64))  # runtime jitter
        self.up = False
        self.incarnation = 0
        self.rt: NodeRuntime | None = None
        # One-shot callbacks run when this node's runtime learns it became leader (the
        # nemesis uses them to crash a fresh leader before its no-op commits).
        self.on_leader: list[Callable[[SimNode], None]] = []
        # One-shot callbacks run when this node, as leader, advances its commit index -
        # before the Ready announcing it is sent (etcd's "before leader send" failpoint).
        self.on_commit: list[Callable[[SimNode], None]] = []
        # One-shot callbacks run right after this node sent a vote grant.
        self.on_vote: list[Callable[[SimNode], None]] = []
        self.snapshots_installed = 0
        self.compactions = 0
        # False for a spare that has not joined yet and for a removed node once stopped:
        # nothing (the nemesis, the heal) may start it then.
        self.in_service = True
        # Voter sets this node's core held earlier in the current step (cleared after it).
        self.step_voters: list[tuple[str, ...]] = []
        self._reset_volatile()

    # -- views used by the runner and the invariants --------------------------------------

    @property
    def raw(self) -> RawNode | None:
        return self.rt.raw if self.rt is not None else None

    @property
    def role(self) -> Role:
        return self.rt.role if self.rt is not None else Role.FOLLOWER

    @property
    def leader(self) -> str:
        return self.rt.leader if self.rt is not None else ""

    @property
    def applied_index(self) -> int:
        if self.rt is not None:
            return self.rt.applied_index
        return self.disk.store.applied_index()

    # -- lifecycle ---------------------------------------------------------------------

    def _reset_volatile(self) -> None:
        self._turn_scheduled = False
        self._busy = False  # a plan is being carried out (between next_plan and finish)
        self._was_leader = False

    def open_raw(self, config: RaftConfig, storage: LogStorage, rng: random.Random) -> RawNode:
        """Build the core over the durable store (hook for the forget-the-vote mutation)."""
        return RawNode(config, storage, rng, logger=self._core_log)

    def _core_log(self, text: str) -> None:
        self.world.log(f"core {text}")

    def start(self) -> None:
        """Boot, or restart after a crash, from whatever the store made durable."""
        assert not self.up
        self.incarnation += 1
        self.up = True
        self._reset_volatile()
        store = self.disk.store
        # Each incarnation gets a fresh stream derived from the node's own stream.
        self.rt = SimRuntime(
            self,
            node_id=self.id,
            voters=self.voters,
            store=store,
            rng=random.Random(self._rng_source.getrandbits(64)),
            election_ticks=self.election_ticks,
            snapshot_entries=self.snapshot_entries,
            can_send_snapshots=self._stream_snapshot is not None,
            resyncing=self.disk.resync_marker,
            joining=self.disk.join_marker,
            log=self._core_log,
            clock=lambda: self.world.now_s,
            min_lease_ttl=1,  # elections here take well under a second
            lease_rng=random.Random(f"lease-{self.world.seed}-{self.id}-{self.incarnation}"),
            raft_options=self.raft_options,
        )
        hs = store.initial_state()
        self.world.log(
            f"START {self.id} #{self.incarnation} term={hs.term} vote={hs.vote or '-'} "
            f"commit={hs.commit} applied={store.applied_index()} last={store.last_index()}"
            f"{' RESYNC' if self.disk.resync_marker else ''}"
            f"{' JOINING' if self.disk.join_marker else ''}"
        )
        self.world.schedule(self.rng.randint(0, self.timing.tick_us), self._tick,
                            self.incarnation)

    def crash(self) -> None:
        """Lose all volatile state and the write in progress; the store survives."""
        if not self.up:
            return
        self.world.log(f"CRASH {self.id} #{self.incarnation}"
                       f"{' (write in progress lost)' if self.disk.pending else ''}")
        self.up = False
        self.incarnation += 1
        self.disk.crash()
        rt, self.rt = self.rt, None
        if rt is not None:
            rt.fail_all(ConnectionLost(f"{self.id} crashed"))
        self._reset_volatile()

    # -- inputs ------------------------------------------------------------------------

    def deliver(self, msg: Message) -> None:
        if not self.up or self.rt is None:
            return
        self.world.log(f"recv {describe(msg)}")
        if self.rt.deliver(msg):
            self._wake()

    def deliver_snapshot(self, src: str, term: int, data: bytes) -> None:
        """A whole snapshot arrived (InstallSnapshot); raises ValueError if damaged."""
        assert self.rt is not None
        self.world.log(f"recv snapshot from {src} t{term} ({len(data)} bytes)")
        self.rt.deliver_snapshot(src, term, data)
        self._wake()

    def propose(self, data: bytes) -> Promise[ApplyResult]:
        fut: Promise[ApplyResult] = Promise()
        if self.rt is None:
            fut.set_exception(ConnectionLost(f"{self.id} is down"))
            return fut
        self.rt.propose(data, fut)
        self._wake()
        return fut

    def read_index(self) -> Promise[int]:
        fut: Promise[int] = Promise()
        if self.rt is None:
            fut.set_exception(ConnectionLost(f"{self.id} is down"))
            return fut
        self.rt.read_index(fut)
        self._wake()
        return fut

    def conf_change(self, change: raft_pb2.ConfChange) -> Promise[ApplyResult]:
        """Ask this node's runtime (the leader's, if it is one) for a membership change."""
        fut: Promise[ApplyResult] = Promise()
        if self.rt is None:
            fut.set_exception(ConnectionLost(f"{self.id} is down"))
            return fut
        self.rt.propose_conf_change(change, fut)
        self._wake()
        return fut

    def transfer(self, target: str) -> Promise[None]:
        """Ask this node's runtime to hand its leadership to `target`."""
        fut: Promise[None] = Promise()
        if self.rt is None:
            fut.set_exception(ConnectionLost(f"{self.id} is down"))
            return fut
        self.rt.transfer_leadership(target, fut)
        self._wake()
        return fut

    def report_unreachable(self, peer: str) -> None:
        """The transport lost messages to `peer`."""
        if self.up and self.rt is not None:
            self.rt.report_unreachable(peer)
            self._wake()

    def _tick(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.rt is None:
            return
        self.rt.tick()
        self._wake()
        period = self.timing.tick_us * self.timing.tick_factor
        self.world.schedule(period, self._tick, incarnation)

    # -- the loop ------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._turn_scheduled or self._busy:
            return
        self._turn_scheduled = True
        lo, hi = self.timing.turn_us
        delay = self.rng.randint(lo, hi)
        stalled = self.timing.stalled_until - self.world.now
        self.world.schedule(max(delay, stalled), self._turn, self.incarnation)

    def _turn(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        self._turn_scheduled = False
        if self._busy:
            return  # inputs wait for the plan being carried out; its end wakes us
        if self.timing.stalled_until > self.world.now:
            self._wake()
            return
        rt = self.rt
        assert rt is not None
        commit = rt.raw.raft.log.committed
        rt.feed()
        if not self._commit_failpoint(commit):
            return  # crashed at the failpoint
        plan = rt.next_plan()
        if plan is None:
            self._maybe_compact()
            return
        self._carry_out(plan)

    def _commit_failpoint(self, commit_before: int) -> bool:
        """Run on_commit hooks if this leader just advanced its commit index; False if a
        hook crashed the node."""
        raw = self.raw
        if not self.on_commit or raw is None or raw.raft.role != Role.LEADER:
            return True
        if raw.raft.log.committed <= commit_before:
            return True
        incarnation = self.incarnation
        hooks, self.on_commit = self.on_commit, []
        for hook in hooks:
            hook(self)
        return incarnation == self.incarnation

    def _emit(self, msgs: Sequence[Message]) -> None:
        self._send(msgs)
        if self.on_vote and any(m.type == MessageType.VOTE_RESP and not m.reject for m in msgs):
            hooks, self.on_vote = self.on_vote, []
            for hook in hooks:
                hook(self)

    def send_early(self, plan: Plan) -> bool:
        """Whether this plan's messages go out before its write (the plan decides)."""
        return bool(plan.send_now)

    def _carry_out(self, plan: Plan) -> None:
        incarnation = self.incarnation
        if plan.ready.soft_state is not None:
            self._on_soft_state(plan.ready.soft_state.role)
            if incarnation != self.incarnation:
                return  # a hook crashed the node before it sent anything
        messages = (*plan.send_now, *plan.send_after)
        early = self.send_early(plan)
        if early and messages:
            self._emit(messages)
        for peer, term in plan.snapshot_to:
            self._start_snapshot(peer, term)
        if plan.needs_write:
            self._busy = True
            self.disk.write(plan, lambda results: self._persisted(incarnation, plan, messages,
                                                                  early, results))
        else:
            self._finish(plan, messages, early, [])

    def _persisted(self, incarnation: int, plan: Plan, messages: tuple[Message, ...],
                   early: bool, results: list[ApplyResult]) -> None:
        if incarnation != self.incarnation:
            return
        self._busy = False
        self._finish(plan, messages, early, results)

    def _finish(self, plan: Plan, messages: tuple[Message, ...], early: bool,
                results: list[ApplyResult]) -> None:
        rt = self.rt
        assert rt is not None
        if not early and messages:
            self._emit(messages)
        if plan.install is not None:
            self.snapshots_installed += 1
        commit = rt.raw.raft.log.committed
        rt.finish(plan, results)
        if rt.join_finished():
            self.disk.join_marker = False
        if rt.resync_finished():
            self.disk.resync_marker = False
            self.world.log(f"{self.id} resync finished: an ordinary member again")
        if not self._commit_failpoint(commit):
            return
        self._maybe_compact()
        if rt.wants_turn():
            self._wake()

    def _maybe_compact(self) -> None:
        rt = self.rt
        assert rt is not None
        upto = rt.compaction_due()
        if upto is not None:
            self.disk.store.compact(upto)
            self.compactions += 1
            self.world.log(f"{self.id} compacted the log up to {upto}")

    # -- snapshots ---------------------------------------------------------------------------

    def _start_snapshot(self, peer: str, term: int) -> None:
        """Stream our current state to `peer`, as NodeDriver does over InstallSnapshot."""
        assert self._stream_snapshot is not None
        meta, data = self.disk.store.export_snapshot()
        incarnation = self.incarnation
        self.world.log(f"{self.id} streams snapshot at {meta.index} to {peer}")

        def done(ok: bool) -> None:
            if incarnation != self.incarnation or self.rt is None:
                return  # we crashed meanwhile: the new runtime knows nothing of it
            self.rt.snapshot_sent(peer, meta.index if ok else None)
            self._wake()

        self._stream_snapshot(self.id, peer, term, data, done)

    # -- role changes ------------------------------------------------------------------------

    def _on_soft_state(self, role: Role) -> None:
        was_leader, self._was_leader = self._was_leader, role == Role.LEADER
        if role == Role.LEADER and not was_leader and self.on_leader:
            hooks, self.on_leader = self.on_leader, []
            for hook in hooks:
                hook(self)
