"""RawNode: the one public entry point of the core, handing work out as a Ready.

Protocol per loop turn: feed inputs (step / tick / propose / read_index), then, if
has_ready(), take `rd = ready()`, do what Ready's docstring says, and call advance(rd)
before the next ready(). Between ready() and advance() the caller must not feed inputs:
the runtime persists in that window, so the core never runs ahead of its own disk.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvstore.raft.core import Raft, RaftConfig
from kvstore.raft.storage import LogStorage
from kvstore.raft.types import HardState, Message, Ready, Role, SoftState


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What a leader knows of one follower's log."""

    match: int
    next: int
    state: str  # "probe" | "replicate" | "snapshot"
    active: bool = True  # heard from within the current election timeout


@dataclass(frozen=True, slots=True)
class Status:
    id: str
    role: Role
    term: int
    vote: str
    leader: str
    commit: int
    applied: int
    first_index: int  # the log holds entries from here on (earlier ones are in a snapshot)
    last_index: int
    passive: bool  # resynced and not yet reached by a leader: neither votes nor campaigns
    rebuilding: bool  # resynced and not yet holding data from a leader
    progress: dict[str, PeerStatus] = field(default_factory=dict)  # leader only
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    transferee: str = ""  # leader: the voter leadership is being handed to
    joining: bool = False  # joined with an empty data dir; no snapshot installed yet


class RawNode:
    def __init__(
        self,
        config: RaftConfig,
        storage: LogStorage,
        rng: random.Random,
        logger: Callable[[str], None] | None = None,
    ) -> None:
        self.raft = Raft(config, storage, rng, logger)
        self._prev_hard = storage.initial_state()
        self._prev_soft = self.soft_state()
        self._in_ready: Ready | None = None

    # -- inputs ----------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def step(self, msg: Message) -> None:
        if msg.dst == self.raft.id:
            self.raft.step(msg)

    def propose(self, payloads: Sequence[bytes]) -> tuple[int, int]:
        """Propose a batch; returns (index of the first entry, term). Raises NotLeader."""
        return self.raft.propose(payloads)

    def propose_conf_change(self, data: bytes) -> tuple[int, int]:
        """Propose one membership change; returns (index, term). Raises NotLeader,
        ConfChangeRefused."""
        return self.raft.propose_conf_change(data)

    def conf_change_refusal(self) -> str | None:
        """Why a membership change cannot be proposed now (None: it can). Raises NotLeader."""
        return self.raft.conf_change_refusal()

    def apply_conf(self, voters: Sequence[str], learners: Sequence[str]) -> None:
        """The applied membership is now `voters` + `learners`."""
        self.raft.apply_conf(voters, learners)

    def transfer_leadership(self, target: str) -> None:
        """Start handing leadership to `target`. Raises NotLeader, TransferRefused."""
        self.raft.transfer_leadership(target)

    def report_unreachable(self, peer: str) -> None:
        """Messages to `peer` were lost in transit; replication to it restarts with a probe."""
        self.raft.report_unreachable(peer)

    def report_snapshot(self, peer: str, index: int | None) -> None:
        """Streaming a snapshot to `peer` finished: it covered up to `index`, or failed."""
        self.raft.report_snapshot(peer, index)

    def read_index(self, request_id: int) -> None:
        """Request a linearizable read point. Raises NotLeader."""
        self.raft.read_index(request_id)

    # -- views -----------------------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(self.raft.role, self.raft.leader)

    def hard_state(self) -> HardState:
        return HardState(self.raft.term, self.raft.vote, self.raft.log.committed)

    @property
    def role(self) -> Role:
        return self.raft.role

    @property
    def term(self) -> int:
        """The current term (cheaper than status(): the runtime checks every peer message
        against it)."""
        return self.raft.term

    def last_index(self) -> int:
        return self.raft.log.last_index()

    @property
    def transferee(self) -> str:
        """Leader: the voter leadership is being handed to ("" when none)."""
        return self.raft.lead_transferee

    def status(self) -> Status:
        """A snapshot of the core's state for operators and services (never a live view)."""
        r = self.raft
        progress: dict[str, PeerStatus] = {}
        if r.role == Role.LEADER:
            progress = {
                p: PeerStatus(pr.match, pr.next, pr.state.name.lower(), pr.recent_active)
                for p, pr in r.prs.items() if p != r.id
            }
        return Status(
            id=r.id,
            role=r.role,
            term=r.term,
            vote=r.vote,
            leader=r.leader,
            commit=r.log.committed,
            applied=r.log.applied,
            first_index=r.log.first_index(),
            last_index=r.log.last_index(),
            passive=r.passive,
            rebuilding=r.rebuilding,
            joining=r.joining,
            progress=progress,
            voters=r.voters,
            learners=r.learners,
            transferee=r.lead_transferee,
        )

    # -- output ----------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether ready() would hand out work. A pure query: it changes nothing."""
        r = self.raft
        return bool(
            r.read_round_pending()
            or r.msgs
            or r.read_states
            or r.dropped_reads
            or r.log.unstable
            or r.log.pending_snapshot is not None
            or r.log.committed > r.log.applied
            or self.hard_state() != self._prev_hard
            or self.soft_state() != self._prev_soft
        )

    def ready(self) -> Ready:
        assert self._in_ready is None, "advance() the previous Ready first"
        r = self.raft
        r.flush_read_round()
        hard = self.hard_state()
        soft = self.soft_state()
        same_vote = hard.term == self._prev_hard.term and hard.vote == self._prev_hard.vote
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=r.log.unstable_entries(),
            messages=tuple(r.msgs),
            committed=tuple(r.log.next_committed()),
            read_states=tuple(r.read_states),
            # A leader's appends may go out while it writes its own copy (thesis 10.2.1);
            # anything that answers for our term, vote or log waits for the write.
            send_before_persist=r.role == Role.LEADER and same_vote,
            dropped_reads=tuple(r.dropped_reads),
            snapshot=r.log.incoming_snapshot,
        )
        r.msgs = []
        r.read_states = []
        r.dropped_reads = []
        self._prev_soft = soft
        self._in_ready = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The Ready was carried out: entries and hard state are durable, committed
        entries are applied."""
        assert rd is self._in_ready
        self._in_ready = None
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            self.raft.log.snapshot_installed(rd.snapshot.meta)
        if rd.committed:
            self.raft.log.applied_to(rd.committed[-1].index)
        if rd.entries:
            last = rd.entries[-1]
            self.raft.on_persisted(last.index, last.term)
