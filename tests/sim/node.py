"""One simulated node: a RawNode driven by the rules of kvstore.server.node.NodeDriver.

The rules copied from NodeDriver, because they are what the simulation must exercise:
  * a loop turn feeds every tick (at most 3 after a stall), message, proposal and read that
    arrived since the last turn; all proposals of a turn become ONE propose call;
  * a Ready is carried out as its docstring says: messages go out before the write only when
    `send_before_persist` says so (a leader's appends), otherwise after the write completes;
    the write (hard state + entries + committed entries applied) is one atomic durable step;
  * no input reaches the core between ready() and advance(): inputs queue meanwhile;
  * proposals are answered by (log index, term), never by order; ReadIndex requests are
    answered once applied >= the read index; everything pending fails on step-down;
  * losses the transport noticed are reported to the core (report_unreachable) at the next
    turn; SNAP requests are answered "failed" (report_snapshot), as NodeDriver does without
    a snapshot sender - MemoryNodeStore cannot compact, so snapshots are not simulated.

Crash drops everything volatile (the RawNode, queues, the write in progress); restart builds
a new RawNode over the surviving store with applied = store.applied_index().
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from kvstore.raft.core import RaftConfig
from kvstore.raft.errors import NotLeader
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import LogStorage
from kvstore.raft.types import Entry, Message, MessageType, Ready, Role
from kvstore.server.node import LeadershipLost, resolve_applied
from kvstore.state.commands import ApplyResult
from tests.sim.disk import SimDisk
from tests.sim.network import describe
from tests.sim.world import World

T = TypeVar("T")

MAX_TICKS_PER_TURN = 3  # NodeDriver: after a stall, don't fire a burst of elections


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


class SimNode:
    """The runtime of one node. Subclass and override `open_raw` or `send_early` to build
    deliberately broken runtimes (see test_mutations.py)."""

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
    ) -> None:
        self.world = world
        self.id = node_id
        self.voters = voters
        self.disk = disk
        self._send = send
        self._rng_source = rng_source
        self.timing = timing
        self.raft_options = raft_options
        self.rng = random.Random(rng_source.getrandbits(64))  # runtime jitter
        self.up = False
        self.incarnation = 0
        self.raw: RawNode | None = None
        # One-shot callbacks run when this node's runtime learns it became leader (the
        # nemesis uses them to crash a fresh leader before its no-op commits).
        self.on_leader: list[Callable[[SimNode], None]] = []
        # One-shot callbacks run when this node, as leader, advances its commit index -
        # before the Ready announcing it is sent (etcd's "before leader send" failpoint).
        self.on_commit: list[Callable[[SimNode], None]] = []
        # One-shot callbacks run right after this node sent a vote grant.
        self.on_vote: list[Callable[[SimNode], None]] = []
        self._reset_volatile()

    # -- lifecycle ---------------------------------------------------------------------

    def _reset_volatile(self) -> None:
        self.role = Role.FOLLOWER
        self.leader = ""
        self.applied_index = self.disk.store.applied_index()
        self._inbox: list[Message] = []
        self._proposals: list[tuple[bytes, Promise[ApplyResult]]] = []
        self._read_requests: list[Promise[int]] = []
        self._unreachable: list[str] = []
        self._snapshot_reports: list[tuple[str, int | None]] = []
        self._ticks_due = 0
        self._turn_scheduled = False
        self._busy = False  # a Ready is being carried out (between ready() and advance())
        self._waiting_entries: dict[int, tuple[int, Promise[ApplyResult]]] = {}
        self._read_ids = itertools.count(1)
        self._waiting_read_ids: dict[int, Promise[int]] = {}
        self._waiting_apply: list[tuple[int, Promise[int]]] = []

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
        config = RaftConfig(
            node_id=self.id,
            voters=self.voters,
            applied=store.applied_index(),
            **self.raft_options,
        )
        # Each incarnation gets a fresh stream derived from the node's own stream.
        self.raw = self.open_raw(config, store, random.Random(self._rng_source.getrandbits(64)))
        hs = store.initial_state()
        self.world.log(
            f"START {self.id} #{self.incarnation} term={hs.term} vote={hs.vote or '-'} "
            f"commit={hs.commit} applied={store.applied_index()} last={store.last_index()}"
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
        self.raw = None
        self._fail_all(ConnectionLost(f"{self.id} crashed"))
        self._reset_volatile()

    # -- inputs ------------------------------------------------------------------------

    def deliver(self, msg: Message) -> None:
        if not self.up:
            return
        self.world.log(f"recv {describe(msg)}")
        self._inbox.append(msg)
        self._wake()

    def propose(self, data: bytes) -> Promise[ApplyResult]:
        """NodeDriver.propose: refuse at once unless this runtime believes it leads."""
        fut: Promise[ApplyResult] = Promise()
        if self.role != Role.LEADER:
            fut.set_exception(NotLeader(self.leader))
            return fut
        self._proposals.append((data, fut))
        self._wake()
        return fut

    def read_index(self) -> Promise[int]:
        fut: Promise[int] = Promise()
        if self.role != Role.LEADER:
            fut.set_exception(NotLeader(self.leader))
            return fut
        self._read_requests.append(fut)
        self._wake()
        return fut

    def report_unreachable(self, peer: str) -> None:
        """The transport lost messages to `peer` (NodeDriver.report_unreachable)."""
        if self.up and peer not in self._unreachable:
            self._unreachable.append(peer)
            self._wake()

    def _tick(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        self._ticks_due += 1
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
            return  # inputs wait for the Ready being carried out; its end wakes us
        if self.timing.stalled_until > self.world.now:
            self._wake()
            return
        assert self.raw is not None
        commit = self.raw.raft.log.committed
        if not self.raw.has_ready():
            self._feed_inputs()
        if not self._commit_failpoint(commit):
            return  # crashed at the failpoint
        if self.raw.has_ready():
            self._handle_ready(self.raw.ready())

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

    def _has_inputs(self) -> bool:
        return bool(self._inbox or self._proposals or self._read_requests or self._ticks_due
                    or self._unreachable or self._snapshot_reports)

    def _feed_inputs(self) -> None:
        raw = self.raw
        assert raw is not None
        ticks, self._ticks_due = self._ticks_due, 0
        for _ in range(min(ticks, MAX_TICKS_PER_TURN)):
            raw.tick()
        msgs, self._inbox = self._inbox, []
        for m in msgs:
            raw.step(m)
        reports, self._snapshot_reports = self._snapshot_reports, []
        for peer, index in reports:
            raw.report_snapshot(peer, index)
        lost, self._unreachable = self._unreachable, []
        for peer in lost:
            raw.report_unreachable(peer)
        props, self._proposals = self._proposals, []
        props = [p for p in props if not p[1].done()]
        if props:
            try:
                first, term = raw.propose([data for data, _ in props])
            except NotLeader as err:
                for _, fut in props:
                    fut.set_exception(NotLeader(err.leader))
            else:
                self.world.log(f"{self.id} proposed [{first}..{first + len(props) - 1}] t{term}")
                for i, (_, fut) in enumerate(props):
                    self._waiting_entries[first + i] = (term, fut)
        reads, self._read_requests = self._read_requests, []
        for rfut in reads:
            if rfut.done():
                continue
            rid = next(self._read_ids)
            try:
                raw.read_index(rid)
            except NotLeader as err:
                rfut.set_exception(NotLeader(err.leader))
            else:
                self._waiting_read_ids[rid] = rfut

    def _emit(self, msgs: Sequence[Message]) -> None:
        self._send(msgs)
        if self.on_vote and any(m.type == MessageType.VOTE_RESP and not m.reject for m in msgs):
            hooks, self.on_vote = self.on_vote, []
            for hook in hooks:
                hook(self)

    def send_early(self, rd: Ready) -> bool:
        """Whether this Ready's messages go out before its write (the Ready decides)."""
        return rd.send_before_persist

    def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            incarnation = self.incarnation
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
            if incarnation != self.incarnation:
                return  # a hook crashed the node before it sent anything
        # MemoryNodeStore has no compaction, so no follower ever needs a snapshot and none
        # is ever installed; a SNAP request is answered as NodeDriver does without a
        # snapshot sender: "failed", and the core retries later.
        assert rd.snapshot is None, "snapshots are not simulated"
        messages = [m for m in rd.messages if m.type != MessageType.SNAP]
        for m in rd.messages:
            if m.type == MessageType.SNAP:
                self._snapshot_reports.append((m.dst, None))
        early = self.send_early(rd)
        if early and messages:
            self._emit(messages)
        if rd.must_sync or rd.committed:
            self._busy = True
            incarnation = self.incarnation
            self.disk.write(rd.hard_state, rd.entries, rd.committed,
                            lambda results: self._persisted(incarnation, rd, messages, early,
                                                            results))
        else:
            self._finish_ready(rd, messages, early, [])

    def _persisted(self, incarnation: int, rd: Ready, messages: list[Message], early: bool,
                   results: list[ApplyResult]) -> None:
        if incarnation != self.incarnation:
            return
        self._busy = False
        self._finish_ready(rd, messages, early, results)

    def _finish_ready(self, rd: Ready, messages: list[Message], early: bool,
                      results: list[ApplyResult]) -> None:
        if not early and messages:
            self._emit(messages)
        if rd.committed:
            self.applied_index = rd.committed[-1].index
            self._resolve_applied(rd.committed, results)
        for rs in rd.read_states:
            fut = self._waiting_read_ids.pop(rs.request_id, None)
            if fut is not None and not fut.done():
                self._waiting_apply.append((rs.index, fut))
        for rid in rd.dropped_reads:
            fut = self._waiting_read_ids.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(LeadershipLost("leadership lost before the read was confirmed"))
        self._release_reads()
        assert self.raw is not None
        commit = self.raw.raft.log.committed
        self.raw.advance(rd)
        if not self._commit_failpoint(commit):
            return
        if self.raw.has_ready() or self._has_inputs():
            self._wake()

    def _resolve_applied(self, committed: tuple[Entry, ...], results: list[ApplyResult]) -> None:
        resolve_applied(self._waiting_entries, committed, results)

    def _release_reads(self) -> None:
        still = []
        for index, fut in self._waiting_apply:
            if fut.done():
                continue
            if index <= self.applied_index:
                fut.set_result(index)
            else:
                still.append((index, fut))
        self._waiting_apply = still

    def _on_soft_state(self, role: Role, leader: str) -> None:
        was_leader = self.role == Role.LEADER
        self.role, self.leader = role, leader
        if was_leader and role != Role.LEADER:
            self._fail_all(LeadershipLost("leadership lost; the write may or may not apply"))
        if role == Role.LEADER and not was_leader and self.on_leader:
            hooks, self.on_leader = self.on_leader, []
            for hook in hooks:
                hook(self)

    def _fail_all(self, err: Exception) -> None:
        for _, fut in self._waiting_entries.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting_entries.clear()
        for _, pfut in self._proposals:
            if not pfut.done():
                pfut.set_exception(err)
        self._proposals.clear()
        for rfut in [*self._read_requests, *self._waiting_read_ids.values(),
                     *(f for _, f in self._waiting_apply)]:
            if not rfut.done():
                rfut.set_exception(err)
        self._read_requests.clear()
        self._waiting_read_ids.clear()
        self._waiting_apply.clear()
