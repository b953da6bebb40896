"""NodeRuntime: the rules between the Raft core and the world, with no I/O.

The server (kvstore.server.node.NodeDriver, asyncio) and the simulator (tests/sim, virtual
time) are thin shells around this one synchronous object, so the simulator checks the rules
the server runs, not a copy of them. The runtime never touches sockets, threads, clocks or
disk: the shell feeds it inputs, asks it for a Plan, carries the plan out (send, write,
stream snapshots), and reports back with `finish`.

The rules:
  * Inputs (ticks, peer messages, proposals, read requests, transport loss, snapshot
    results) queue until the next turn; `feed` hands them all to the core at once, so every
    proposal of a turn becomes ONE append, one write and one message per follower. After a
    stall at most MAX_TICKS_PER_TURN ticks fire, so a paused process does not start a burst
    of elections.
  * No input reaches the core between a Ready and its `finish`: the shell is writing it, and
    the core must never run ahead of its own disk.
  * A plan's messages go out before its write only when the Ready allows it (a leader's
    appends, thesis 10.2.1); everything else waits until the write is durable.
  * Proposals are answered by (log index, term), never by order; an entry replaced after a
    leader change fails its waiter. ReadIndex requests are answered once applied >= their
    read index. Everything pending fails when the node stops leading.
  * A leader streams at most one snapshot per follower at a time; without a snapshot sender
    a request is reported failed at once and the core retries later.
  * The log is compacted once it holds `snapshot_entries` applied entries, keeping a fifth
    of them as a tail so briefly lagging followers catch up from the log.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvstore.raft.core import RaftConfig
from kvstore.raft.errors import ConfChangeRefused, NotLeader
from kvstore.raft.rawnode import RawNode, Status
from kvstore.raft.storage import LogStorage
from kvstore.raft.types import (
    Entry,
    HardState,
    Message,
    MessageType,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from kvstore.server import peer_checks, reconfig
from kvstore.server.lessor import Lessor
from kvstore.server.outcomes import (
    LeadershipLost,
    SnapshotRefused,
    Waiter,
    resolve_applied,
)
from kvstore.server.reconfig import MembershipRefused
from kvstore.state import commands, membership
from kvstore.state.alarms import NOSPACE, Alarm
from kvstore.state.commands import ApplyResult
from kvstore.state.membership import Member
from kvstore.storage import snapshot_file
from kvstore.storage.errors import StorageError
from kvstore.v1 import raft_pb2

MAX_TICKS_PER_TURN = 3
MAX_HASH_CHECKS = 16
QUOTA_CHECK_ENTRIES = 32
QUOTA_CHECK_BYTES = 64 << 10
_LOGGED_COUNTS = frozenset(10**k for k in range(12))  # which refusals of a kind are logged


class NodeStore(LogStorage, Protocol):
    """What a node needs of its durable store (LmdbNodeStore, MemoryNodeStore)."""

    def persist_and_apply(
        self, hard_state: HardState | None, entries: tuple[Entry, ...],
        committed: tuple[Entry, ...],
        on_applied: Callable[[list[ApplyResult]], None] | None = None,
    ) -> list[ApplyResult]: ...

    def applied_index(self) -> int: ...

    def compact(self, upto: int) -> None: ...

    def size_bytes(self) -> int: ...

    def alarms(self) -> list[Alarm]: ...

    def leases(self) -> list[tuple[int, int]]: ...

    def install_snapshot(self, data: bytes, hard_state: HardState | None) -> SnapshotMeta: ...

    def members(self) -> list[Member]: ...

    def removed_members(self) -> list[str]: ...


def _nothing() -> None:
    """What an internal proposal (a lease revoke) does when it settles: nothing; a revoke
    that did not apply is proposed again by the lessor."""


class _Unwatched:
    """A waiter for proposals the runtime makes itself (alarms): nobody awaits them."""

    def __init__(self, on_done: Callable[[], None]) -> None:
        self._done = False
        self._on_done = on_done

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        self._done = True
        self._on_done()

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self._on_done()


@dataclass(frozen=True)
class Plan:
    """What the shell must do for one Ready, in this order:

    1. send `send_now` (may overlap the write);
    2. start streaming our state to each peer in `snapshot_to` (in the background; report
       each outcome with `NodeRuntime.snapshot_sent`);
    3. if `needs_write`: carry out the durable write (`execute_write` does it on a store);
    4. send `send_after`, only once the write is durable;
    5. call `NodeRuntime.finish(plan, results)`.
    """

    ready: Ready
    send_now: tuple[Message, ...]
    send_after: tuple[Message, ...]
    snapshot_to: tuple[tuple[str, int], ...]  # (peer, our term)

    @property
    def install(self) -> Snapshot | None:
        return self.ready.snapshot

    @property
    def needs_write(self) -> bool:
        return self.ready.must_sync or bool(self.ready.committed)


def execute_write(store: NodeStore, plan: Plan,
                  on_applied: Callable[[list[ApplyResult]], None] | None = None,
                  ) -> list[ApplyResult]:
    """The durable part of a plan: install a received snapshot, then persist hard state and
    entries and apply committed entries (one transaction in LmdbNodeStore). `on_applied`
    is told the results once computed, before the commit (NodeDriver answers some writes
    then: see NodeRuntime.answer_early). Raises on a storage failure, which is fatal to the
    node (fail-stop)."""
    rd = plan.ready
    hard_state = rd.hard_state
    if rd.snapshot is not None:
        store.install_snapshot(rd.snapshot.data, hard_state)
        hard_state = None
    if hard_state is not None or rd.entries or rd.committed:
        return store.persist_and_apply(hard_state, rd.entries, rd.committed, on_applied)
    return []


class NodeRuntime:
    def __init__(
        self,
        node_id: str,
        voters: Iterable[str],
        store: NodeStore,
        rng: random.Random,
        *,
        election_ticks: int = 6,
        snapshot_entries: int = 10_000,
        can_send_snapshots: bool = True,
        resyncing: bool = False,
        joining: bool = False,
        log: Callable[[str], None] | None = None,
        raft_options: dict[str, Any] | None = None,
        quota_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_lease_ttl: int = 2,
        lease_rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.snapshot_entries = snapshot_entries
        self._can_send_snapshots = can_send_snapshots
        self._log = log or (lambda _text: None)
        # The applied membership wins over the bootstrap one (`voters`: the cluster's
        # initial voters, from --peers), which only a store that never recorded one uses.
        self.members: list[Member] = store.members()
        voters, learners = (membership.voters_and_learners(self.members) if self.members
                            else (tuple(voters), ()))
        self.membership_version = 0  # bumped whenever the applied membership changes
        cfg = RaftConfig(
            node_id=node_id,
            voters=tuple(voters),
            learners=learners,
            election_ticks=election_ticks,
            applied=store.applied_index(),
            passive_until_contact=resyncing,
            joining=joining,
            **(raft_options or {}),
        )
        self.raw = self.open_raw(cfg, store, rng)
        self.resyncing = resyncing
        self.joining = joining
        self.role = Role.FOLLOWER
        self.leader = ""
        self.applied_index = store.applied_index()
        # Queued inputs.
        self._ticks_due = 0
        self._inbox: list[Message] = []
        self._proposals: list[tuple[bytes, Waiter]] = []
        self._read_requests: list[Waiter] = []
        self._unreachable: list[str] = []
        self._snapshot_reports: list[tuple[str, int | None]] = []
        # Waiting requests.
        self._waiting_entries: dict[int, tuple[int, Waiter]] = {}
        self._read_ids = itertools.count(1)
        self._waiting_read_ids: dict[int, Waiter] = {}
        self._waiting_apply: list[tuple[int, Waiter]] = []
        self._streaming: set[str] = set()  # peers we are sending a snapshot to
        self._refusals: dict[str, int] = {}  # refused peer messages, per kind and sender
        # Who may send us messages: every other member.
        self._peers = frozenset({*cfg.voters, *cfg.learners}) - {node_id}
        self._conf_proposals: list[tuple[raft_pb2.ConfChange, Waiter]] = []
        self._transfers = reconfig.Transfers()
        self.quota_bytes = quota_bytes
        # Hashes of our state taken at hash-check entries: log index -> digest (the latest few).
        self.hash_checks: dict[int, str] = {}
        self._alarm_proposed = False  # a NOSPACE alarm of ours is in the log, not yet applied
        # Entries applied since the database was last measured (the first batch measures).
        self._unmeasured_entries = QUOTA_CHECK_ENTRIES
        self._unmeasured_bytes = 0
        self._in_plan: Plan | None = None
        # The leader's lease clock (leader only; see lessor.py). Lease ids come from their
        # own rng (default: seeded from the OS), so they never shift the core's randomness.
        self.lessor = Lessor(clock, lease_rng or random.Random(), min_lease_ttl)

    def open_raw(self, config: RaftConfig, storage: LogStorage, rng: random.Random) -> RawNode:
        """Build the core (a hook for the simulator's deliberately broken runtimes)."""
        return RawNode(config, storage, rng, logger=self._log)

    # -- inputs: queued until the next turn ----------------------------------------------

    def tick(self) -> None:
        self._ticks_due += 1

    def deliver(self, msg: Message) -> bool:
        """A message from a peer. Returns False, logs why and drops it when no correct peer
        could have sent it (kvstore.server.peer_checks: addressed elsewhere, from a
        non-member, a SNAP — which only `deliver_snapshot` makes, after checking the
        snapshot itself —, out-of-range terms or indexes, broken entry sequences, an
        acknowledgement past our log). Never raises: one bad message must not end a peer's
        stream."""
        why = peer_checks.refusal(msg, self._receiver())
        if why is not None:
            self._log_refusal(f"{peer_checks.type_name(msg.type)} from {msg.src!r}",
                              f"to {msg.dst!r}: {why}")
            return False
        self._inbox.append(msg)
        return True

    def _log_refusal(self, what: str, why: str) -> None:
        """Log refused peer messages without letting a flood of them flood the log: per
        kind of message and sender, the 1st, 10th, 100th, ... refusal is logged (counted,
        not timed: the runtime has no clock)."""
        n = self._refusals[what] = self._refusals.get(what, 0) + 1
        if n in _LOGGED_COUNTS:
            times = "" if n == 1 else f" ({n} so far)"
            self._log(f"refused {what} {why}{times}")

    def _receiver(self) -> peer_checks.Receiver:
        raw = self.raw
        leading = raw.role == Role.LEADER
        return peer_checks.Receiver(self.node_id, self._peers, raw.term,
                                    raw.last_index() if leading else None)

    def deliver_snapshot(self, src: str, term: int, data: bytes) -> None:
        """A complete snapshot arrived from `src` (leader of `term`). Raises ValueError
        (the transport refuses the stream with its message) unless `src` is the leader we
        follow in our current term and the data is intact. The core decides whether to
        install it; the data travels with the message and comes back in the Ready that
        installs it.

        Why only from the current leader: a snapshot replaces our whole state and log, so
        it is the most damaging thing a peer can send. A correct leader sends one only
        after probing us with appends, which made us follow it in its term (a resyncing
        node too: it adopts the term and the leader of the first append or heartbeat that
        reaches it), so refusing anything else costs a correct leader at most a retry. The
        core agrees: a lower term is refused there too, and within a term there is only
        one leader."""
        raw = self.raw
        why = peer_checks.snapshot_refusal(src, term, self._peers, raw.term,
                                           raw.soft_state().leader)
        if why is not None:
            self._log(f"refused snapshot from {src!r} at term {term}: {why}")
            raise SnapshotRefused(f"snapshot from {src} rejected: {why}")
        try:
            header, _ = snapshot_file.read(data)
        except StorageError as err:
            raise ValueError(f"snapshot from {src} rejected: {err}") from None
        why = peer_checks.snapshot_meta_refusal(header.index, header.term, term)
        if why is not None:
            self._log(f"refused snapshot from {src!r} at term {term}: {why}")
            raise ValueError(f"snapshot from {src} rejected: {why}")
        snap = Snapshot(SnapshotMeta(header.index, header.term), data)
        self._inbox.append(Message(MessageType.SNAP, src, self.node_id, term,
                                   log_term=header.term, index=header.index, snapshot=snap))

    def propose(self, data: bytes, waiter: Waiter) -> None:
        """Queue a command for the next batch; `waiter` gets the ApplyResult once applied."""
        if self.role != Role.LEADER:
            waiter.set_exception(NotLeader(self.leader))
            return
        self._proposals.append((data, waiter))

    def read_index(self, waiter: Waiter) -> None:
        """`waiter` gets a linearizable read point once this node has applied through an
        index the leader confirmed after the request arrived."""
        if self.role != Role.LEADER:
            waiter.set_exception(NotLeader(self.leader))
            return
        self._read_requests.append(waiter)

    def propose_conf_change(self, change: raft_pb2.ConfChange, waiter: Waiter) -> None:
        """Queue one membership change; `waiter` gets its ApplyResult once applied (with
        `error` set if the state machine refused it), or NotLeader / MembershipRefused."""
        if self.role != Role.LEADER:
            waiter.set_exception(NotLeader(self.leader))
            return
        self._conf_proposals.append((change, waiter))

    def transfer_leadership(self, target: str, waiter: Waiter) -> None:
        """Hand leadership to `target`; `waiter` gets None once it leads (NotLeader,
        MembershipRefused when it cannot start or timed out)."""
        if self.role != Role.LEADER:
            waiter.set_exception(NotLeader(self.leader))
            return
        self._transfers.request(target, waiter)

    def removed(self) -> bool:
        """This node applied a membership that no longer includes it."""
        return bool(self.members) and all(m.id != self.node_id for m in self.members)

    def report_unreachable(self, peer: str) -> None:
        """The transport lost messages to `peer`."""
        if peer not in self._unreachable:
            self._unreachable.append(peer)

    def snapshot_sent(self, peer: str, index: int | None) -> None:
        """Streaming our state to `peer` finished: it covered up to `index`, or failed."""
        self._streaming.discard(peer)
        self._snapshot_reports.append((peer, index))

    def has_inputs(self) -> bool:
        return bool(self._ticks_due or self._inbox or self._proposals or self._read_requests
                    or self._unreachable or self._snapshot_reports or self._conf_proposals
                    or self._transfers.queued)

    def wants_turn(self) -> bool:
        """Whether a turn (feed + plans) has anything to do."""
        return self._in_plan is None and (self.has_inputs() or self.raw.has_ready())

    # -- the turn ------------------------------------------------------------------------

    def feed(self) -> None:
        """Hand every queued input to the core."""
        assert self._in_plan is None, "inputs wait until the plan in progress finishes"
        raw = self.raw
        ticks, self._ticks_due = self._ticks_due, 0
        for _ in range(min(ticks, MAX_TICKS_PER_TURN)):
            raw.tick()
        if ticks:
            for lease_id in self.lessor.expired():
                self._log(f"lease {lease_id:x} expired: proposing its revoke")
                self.propose(commands.encode_lease_revoke(lease_id), _Unwatched(_nothing))
        msgs, self._inbox = self._inbox, []
        for m in msgs:
            raw.step(m)
        reports, self._snapshot_reports = self._snapshot_reports, []
        for peer, index in reports:
            raw.report_snapshot(peer, index)
        lost, self._unreachable = self._unreachable, []
        for peer in lost:
            raw.report_unreachable(peer)
        props = [(d, w) for d, w in self._proposals if not w.done()]
        self._proposals = []
        if props:
            try:
                first, term = raw.propose([data for data, _ in props])
            except NotLeader as err:
                for _, w in props:
                    w.set_exception(NotLeader(err.leader))
            else:
                for i, (_, w) in enumerate(props):
                    self._waiting_entries[first + i] = (term, w)
        confs, self._conf_proposals = self._conf_proposals, []
        for change, w in confs:
            if not w.done():
                self._feed_conf_change(change, w)
        self._transfers.start(raw, self.node_id)
        reads, self._read_requests = self._read_requests, []
        for w in reads:
            if w.done():
                continue
            rid = next(self._read_ids)
            try:
                raw.read_index(rid)
            except NotLeader as err:
                w.set_exception(NotLeader(err.leader))
            else:
                self._waiting_read_ids[rid] = w

    def _feed_conf_change(self, change: raft_pb2.ConfChange, w: Waiter) -> None:
        raw = self.raw
        try:
            why = raw.conf_change_refusal()
        except NotLeader as err:
            w.set_exception(NotLeader(err.leader))
            return
        if why is not None:
            w.set_exception(MembershipRefused(f"{membership.describe(change)}: {why}", True))
            return
        why, retryable = reconfig.leader_refusal(change, self.node_id, self.members,
                                                 self.store.removed_members(),
                                                 raw.status())
        if why is not None:
            w.set_exception(MembershipRefused(f"{membership.describe(change)}: {why}",
                                              retryable))
            return
        try:
            index, term = raw.propose_conf_change(change.SerializeToString())
        except (NotLeader, ConfChangeRefused) as err:  # not expected after the checks
            w.set_exception(err if isinstance(err, NotLeader) else MembershipRefused(str(err)))
            return
        self._log(f"proposed membership change at {index}: {membership.describe(change)}")
        self._waiting_entries[index] = (term, w)

    def _apply_membership(self, members: Sequence[Member]) -> None:
        self.members = list(members)
        voters, learners = membership.voters_and_learners(members)
        self.raw.apply_conf(voters, learners)
        self._peers = frozenset({*voters, *learners}) - {self.node_id}
        self.membership_version += 1

    def next_plan(self) -> Plan | None:
        """The next Ready as a plan, or None when the core has nothing to hand out."""
        assert self._in_plan is None, "finish() the plan in progress first"
        if not self.raw.has_ready():
            return None
        rd = self.raw.ready()
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
        messages: list[Message] = []
        snapshot_to: list[tuple[str, int]] = []
        for m in rd.messages:
            if m.type != MessageType.SNAP:
                messages.append(m)
            elif not self._can_send_snapshots:
                self._snapshot_reports.append((m.dst, None))
            elif m.dst not in self._streaming:
                self._streaming.add(m.dst)
                snapshot_to.append((m.dst, m.term))
        early = rd.send_before_persist
        plan = Plan(
            ready=rd,
            send_now=tuple(messages) if early else (),
            send_after=() if early else tuple(messages),
            snapshot_to=tuple(snapshot_to),
        )
        self._in_plan = plan
        return plan

    def answer_early(self, plan: Plan, results: Sequence[ApplyResult],
                     eligible: Callable[[Waiter], bool]) -> int:
        """Answer the `eligible` proposals among the plan's committed entries from their
        results while the write that applied them is not yet committed; returns how many.

        Sound because a committed entry is already durable in the logs of a quorum: the
        write that applies it only records its effect here, and if that write fails the
        node stops (fail-stop) and applies the entry again from its log on restart, with
        the same outcome (apply is deterministic and the session table is in the same
        transaction). What the caller must still do is keep readers of this node's local
        state from seeing the state before the write is committed (NodeDriver.settled);
        ReadIndex reads wait for `applied_index`, which moves only in finish()."""
        assert plan is self._in_plan, "answer_early() takes the plan in progress"
        return resolve_applied(self._waiting_entries, plan.ready.committed, results,
                               only=eligible)

    def finish(self, plan: Plan, results: Sequence[ApplyResult]) -> None:
        """The plan was carried out (its write is durable, `results` are the applied
        entries' outcomes): answer what waits on it and let the core advance."""
        assert plan is self._in_plan, "finish() takes the plan in progress"
        self._in_plan = None
        rd = plan.ready
        if rd.snapshot is not None:
            self.applied_index = rd.snapshot.meta.index
            self._log(f"installed snapshot at index {rd.snapshot.meta.index} "
                      f"(term {rd.snapshot.meta.term})")
            installed = self.store.members()
            if installed:
                self._apply_membership(installed)
        if rd.committed:
            self.applied_index = rd.committed[-1].index
            for r in results:
                if r.members is not None:
                    self._apply_membership(r.members)
            resolve_applied(self._waiting_entries, rd.committed, results)
            self._keep_hash_checks(results)
            self.lessor.applied(r.lease for r in results if r.lease is not None)
        for rs in rd.read_states:
            w = self._waiting_read_ids.pop(rs.request_id, None)
            if w is not None and not w.done():
                self._waiting_apply.append((rs.index, w))
        for rid in rd.dropped_reads:
            w = self._waiting_read_ids.pop(rid, None)
            if w is not None and not w.done():
                w.set_exception(LeadershipLost("leadership lost before the read was confirmed"))
        self._release_reads()
        self.raw.advance(rd)
        if self._transfers.waiting and self.role == Role.LEADER and not self.raw.transferee:
            self._transfers.fail("leader transfer timed out: the target did not catch up "
                                 "or win its election within an election timeout")
        if rd.committed and self._quota_check_due(rd.committed):
            self._check_quota()

    def _keep_hash_checks(self, results: Sequence[ApplyResult]) -> None:
        for r in results:
            if r.digest:
                self.hash_checks[r.index] = r.digest
        while len(self.hash_checks) > MAX_HASH_CHECKS:
            del self.hash_checks[min(self.hash_checks)]

    def _quota_check_due(self, committed: Sequence[Entry]) -> bool:
        """Measuring the database (a read transaction and a stat of every database) is not
        free, and this runs on the commit path: measure after every QUOTA_CHECK_ENTRIES
        applied entries or QUOTA_CHECK_BYTES of entry data, whichever comes first."""
        if self.quota_bytes is None:
            return False
        self._unmeasured_entries += len(committed)
        self._unmeasured_bytes += sum(len(e.data) for e in committed)
        if (self._unmeasured_entries < QUOTA_CHECK_ENTRIES
                and self._unmeasured_bytes < QUOTA_CHECK_BYTES):
            return False
        self._unmeasured_entries = self._unmeasured_bytes = 0
        return True

    def _check_quota(self) -> None:
        """As etcd: once this node's database passes the quota, raise the NOSPACE alarm
        through the log, so every member refuses puts from the same entry on. Only a
        leader can propose; a follower's database holds the same data."""
        if self.quota_bytes is None or self.role != Role.LEADER or self._alarm_proposed:
            return
        size = self.store.size_bytes()
        if size <= self.quota_bytes:
            return
        if any(a.type == NOSPACE and a.member == self.node_id for a in self.store.alarms()):
            return
        self._log(f"database size {size} bytes passed the quota of "
                  f"{self.quota_bytes}: raising the NOSPACE alarm")
        self._alarm_proposed = True
        self.propose(commands.encode_alarm(True, NOSPACE, self.node_id),
                     _Unwatched(self._alarm_settled))

    def _alarm_settled(self) -> None:
        self._alarm_proposed = False

    def resync_finished(self) -> bool:
        """True once, when a resyncing node holds data from a leader and it is durable:
        from then on its data dir is an ordinary member's. (Not at mere contact: a node
        that restarted after contact but before any data would no longer flag its answers
        as rebuilding, and the leader would never re-replicate to it.)"""
        st = self.raw.status()
        if self.resyncing and self._in_plan is None and not st.passive and not st.rebuilding:
            self.resyncing = False
            return True
        return False

    def join_finished(self) -> bool:
        """True once, when a joining node's snapshot from the leader is installed and
        durable: from then on its data dir is an ordinary member's."""
        if self.joining and self._in_plan is None and not self.raw.status().joining:
            self.joining = False
            return True
        return False

    def compaction_due(self) -> int | None:
        """The index to compact the log up to, if it holds enough applied entries."""
        first = self.store.first_index()
        if self.applied_index - first + 1 < self.snapshot_entries:
            return None
        upto = self.applied_index - self.snapshot_entries // 5
        return upto if upto >= first else None

    def fail_all(self, err: Exception) -> None:
        """Fail every queued and waiting request (step-down, shutdown, crash)."""
        for _, w in self._waiting_entries.values():
            if not w.done():
                w.set_exception(err)
        self._waiting_entries.clear()
        for _, w in [*self._proposals, *self._conf_proposals]:
            if not w.done():
                w.set_exception(err)
        self._proposals.clear()
        self._conf_proposals.clear()
        self._transfers.fail_all(err)
        for w in [*self._read_requests, *self._waiting_read_ids.values(),
                  *(w for _, w in self._waiting_apply)]:
            if not w.done():
                w.set_exception(err)
        self._read_requests.clear()
        self._waiting_read_ids.clear()
        self._waiting_apply.clear()

    def _release_reads(self) -> None:
        if not self._waiting_apply:
            return
        still = []
        for index, w in self._waiting_apply:
            if w.done():
                continue
            if index <= self.applied_index:
                w.set_result(index)
            else:
                still.append((index, w))
        self._waiting_apply = still

    def _on_soft_state(self, role: Role, leader: str) -> None:
        was_leader = self.role == Role.LEADER
        self.role, self.leader = role, leader
        if self._transfers.waiting and leader:
            self._transfers.leader_known(leader)
        self._log(f"{self.node_id} is now {role.label} (leader {leader or 'unknown'})")
        if role == Role.LEADER and not was_leader:
            self.lessor.promote(self.store.leases())
        elif role != Role.LEADER:
            self.lessor.demote(leader)
        if was_leader and role != Role.LEADER:
            # Stepping down is how a transfer succeeds: its waiters wait for the new leader.
            transfers, self._transfers.waiting = self._transfers.waiting, []
            self.fail_all(LeadershipLost("leadership lost; the write may or may not apply"))
            self._transfers.waiting = transfers

    # -- views ---------------------------------------------------------------------------

    @property
    def term(self) -> int:
        return self.raw.hard_state().term

    def status(self) -> Status:
        return self.raw.status()
