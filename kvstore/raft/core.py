"""The Raft protocol as a deterministic state machine (Ongaro's thesis, chapter 3 and 6).

No I/O, no clock, no global randomness: time is `tick()`, input is `step(msg)`,
`propose(...)` and `read_index(...)`, randomness is the injected `random.Random`.
Output accumulates in `msgs`, `read_states`, `dropped_reads` and the log, and is handed
out by RawNode.ready().

Extensions beyond the paper, as in etcd/raft: pre-vote (thesis 9.6) so a node coming back
from a partition cannot depose a healthy leader; check-quorum, so a leader that cannot
reach a majority steps down; leader stickiness (a node that heard from a leader within the
election timeout ignores vote requests); a no-op at the start of each term; ReadIndex
(thesis 6.4) with one heartbeat round confirming every read queued meanwhile.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore.raft import quorum
from kvstore.raft.errors import NotLeader
from kvstore.raft.log import RaftLog
from kvstore.raft.progress import Progress, ProgressState
from kvstore.raft.reconfig import Reconfiguration
from kvstore.raft.storage import LogStorage
from kvstore.raft.types import (
    FORCE_VOTE,
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)

MT = MessageType


@dataclass(frozen=True)
class RaftConfig:
    node_id: str
    voters: tuple[str, ...]  # every voter (this node too, unless it is a learner or new)
    election_ticks: int = 10  # randomized timeout is in [election_ticks, 2 * election_ticks)
    heartbeat_ticks: int = 1
    max_inflight: int = 8  # unacknowledged appends per follower (pipelining bound)
    max_msg_bytes: int = 4 << 20  # soft cap on the entry bytes in one append
    pre_vote: bool = True
    check_quorum: bool = True
    applied: int = 0  # what the state machine has already applied (from its own storage)
    # A node resynced from an empty data dir has forgotten its term and vote; until it hears
    # from a leader it neither campaigns nor votes, so it can never vote twice in one term.
    passive_until_contact: bool = False
    learners: tuple[str, ...] = ()  # members that receive the log but do not vote
    # A node that joined an existing cluster with an empty data dir (`serve --join`).
    joining: bool = False


@dataclass
class _PendingRead:
    request_id: int
    index: int
    round: int


class Raft(Reconfiguration):
    def __init__(
        self,
        config: RaftConfig,
        storage: LogStorage,
        rng: random.Random,
        logger: Callable[[str], None] | None = None,
    ) -> None:
        self.id = config.node_id
        self.cfg = config
        self.voters: tuple[str, ...] = ()
        self.learners: tuple[str, ...] = ()
        self.peers: tuple[str, ...] = ()  # every other member, voter or learner
        self.voter_peers: tuple[str, ...] = ()
        self._set_config(config.voters, config.learners)
        # Index of the last membership change this leader proposed, or of its term's first
        # entry: no change is proposed before the log is applied that far.
        self.pending_conf_index = 0
        self.lead_transferee = ""  # leader: the voter leadership is being handed to
        self.transfer_elapsed = 0
        self.rng = rng
        self.log = RaftLog(storage, config.applied)
        self._logger = logger
        hs = storage.initial_state()
        self.term = hs.term
        self.vote = hs.vote
        self.leader = ""
        self.role = Role.FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[int] = []
        self.prs: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._pending_reads: list[_PendingRead] = []
        self._read_round = 0
        self._read_round_wanted = False
        self.passive = config.passive_until_contact
        # Separate from `passive` (which only governs voting and is cleared by any contact
        # from a current leader): set until a leader's data actually reached us (an accepted
        # append or a snapshot). While set, our answers say so, and only such answers may
        # lower the leader's match for us: a wiped node really holds less than it once
        # acknowledged, a stale answer from a healthy one does not.
        self.rebuilding = config.passive_until_contact
        # While rebuilding: the highest commit index a leader has told us. We acknowledged
        # entries before the wipe that may have counted toward a commit, so until our log
        # reaches every commit we hear of, our vote could elect a leader without them: a
        # rebuilding node neither votes nor campaigns.
        self.rebuild_until = 0
        # A joining node takes the leader's state as a snapshot before anything else: its
        # store knows the membership it was told when it joined, not the history of
        # membership changes (tombstones included) that replaying the log from index 1
        # would need to reproduce the same state. Until then it refuses appends, flags its
        # answers, and does not campaign.
        self.joining = config.joining
        self._reset_timeout()

    # -- helpers ---------------------------------------------------------------------

    def _log_event(self, text: str) -> None:
        if self._logger is not None:
            self._logger(f"{self.id} {text}")

    def _send(self, msg: Message) -> None:
        self.msgs.append(msg)

    def _reset_timeout(self) -> None:
        e = self.cfg.election_ticks
        self.randomized_timeout = e + self.rng.randrange(e)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = ""
        self.leader = ""
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_timeout()
        self.votes = {}
        self.prs = {}
        self.lead_transferee = ""
        self._drop_pending_reads()

    def _drop_pending_reads(self) -> None:
        self.dropped_reads.extend(r.request_id for r in self._pending_reads)
        self._pending_reads = []
        self._read_round_wanted = False

    def _quorum(self) -> int:
        return quorum.majority(len(self.voters))

    def committed_in_term(self) -> bool:
        """A leader may serve ReadIndex only after committing an entry of its own term."""
        return self.log.term(self.log.committed) == self.term

    # -- role transitions ------------------------------------------------------------

    def become_follower(self, term: int, leader: str) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader
        self._log_event(f"became follower at term {term} (leader {leader or '-'})")

    def _become_pre_candidate(self) -> None:
        # Pre-vote does not touch term or vote, so nothing needs persisting.
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader = ""
        self._log_event(f"became pre-candidate at term {self.term}")

    def _become_candidate(self) -> None:
        assert self.role != Role.LEADER
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._log_event(f"became candidate at term {self.term}")

    def _become_leader(self) -> None:
        assert self.role == Role.CANDIDATE
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self.log.last_index()
        for v in sorted((self.id, *self.peers)):
            pr = Progress(last + 1, self.cfg.max_inflight)
            pr.recent_active = True
            self.prs[v] = pr
        self.prs[self.id].match = self.log.stable_last_index()
        # No membership change until this term's first entry is applied: every change an
        # earlier leader left in our log is applied (and in force) by then (the fix to the
        # single-server change bug, Ongaro 2015, in its apply-time form).
        self.pending_conf_index = last + 1
        self._log_event(f"became leader at term {self.term}")
        # Thesis 6.4: commit an entry of this term before serving reads; also commits
        # everything earlier from previous terms.
        self._append([Entry(self.term, last + 1, EntryType.NOOP, b"")])

    def _campaign(self, pre: bool, forced: bool = False) -> None:
        if pre:
            self._become_pre_candidate()
            msg_type, term = MT.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            msg_type, term = MT.VOTE, self.term
        self.votes[self.id] = True
        if self._tally():
            return
        last = self.log.last_index()
        last_term = self.log.last_term()
        context = FORCE_VOTE if forced else 0
        for p in self.voter_peers:
            self._send(Message(msg_type, self.id, p, term, log_term=last_term, index=last,
                               context=context))

    def _tally(self) -> bool:
        """Act on the votes so far; True when the election was decided."""
        result = quorum.vote_result(self.votes, self.voters)
        if result is None:
            return False
        if result:
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre=False)
            else:
                self._become_leader()
        else:
            self.become_follower(self.term, "")
        return True

    # -- time ------------------------------------------------------------------------

    def tick(self) -> None:
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if (self.election_elapsed >= self.randomized_timeout and not self.passive
                    and not self.rebuilding and not self.joining and self.is_voter()):
                self.election_elapsed = 0
                self._reset_timeout()
                self._campaign(pre=self.cfg.pre_vote)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.lead_transferee:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.cfg.election_ticks:
                self._log_event(f"leader transfer to {self.lead_transferee} timed out")
                self.lead_transferee = ""
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._log_event("stepped down: no quorum heard within the election timeout")
                self.become_follower(self.term, "")
                return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = 1 if self.is_voter() else 0
        for p in self.peers:
            pr = self.prs[p]
            if pr.recent_active and p in self.voters:
                active += 1
            pr.recent_active = False
        return active >= self._quorum()

    # -- proposals and reads -----------------------------------------------------------

    def propose(self, payloads: Sequence[bytes]) -> tuple[int, int]:
        """Append one entry per payload as a single batch; returns (first index, term)."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee:
            # Etcd drops proposals during a transfer too: the target must catch up with a
            # log that stops growing. Clients retry at the hinted next leader.
            raise NotLeader(self.lead_transferee)
        first = self.log.last_index() + 1
        self._append([Entry(self.term, first + i, EntryType.NORMAL, p)
                      for i, p in enumerate(payloads)])
        return first, self.term

    def _append(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        # Our own match advances only once the runtime reports the entries durable
        # (on_persisted), so the leader never counts an unsynced copy toward commit.
        self._broadcast_append()

    def read_index(self, request_id: int) -> None:
        """Ask for a linearizable read point; answered later by a ReadState or a drop."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        index = self.log.committed
        if len(self.voters) == 1 and self.committed_in_term():
            self.read_states.append(ReadState(index, request_id))
            return
        # Reads queued before our no-op commits get their index once it does.
        self._pending_reads.append(_PendingRead(request_id, index, self._read_round + 1))
        if self.committed_in_term():
            self._read_round_wanted = True

    def read_round_pending(self) -> bool:
        """Whether flush_read_round() would send a round: lets RawNode.has_ready() stay a
        pure query while ready() does the flushing."""
        return self._read_round_wanted and self.role == Role.LEADER

    def flush_read_round(self) -> None:
        """Send one heartbeat round confirming every read queued since the last round."""
        if not self.read_round_pending():
            return
        self._read_round_wanted = False
        self._read_round += 1
        self._broadcast_heartbeat()

    def _release_reads(self) -> None:
        if not self._pending_reads or not self.committed_in_term():
            return
        acks = sorted((self.prs[p].read_ack for p in self.voter_peers), reverse=True)
        # Self counts as one ack of every round; need quorum - 1 peers. Alone we are the
        # quorum: every queued read, even one waiting for a round not flushed yet, is done.
        need = self._peer_acks_needed()
        confirmed = acks[need - 1] if need > 0 else self._read_round + 1
        done = [r for r in self._pending_reads if r.round <= confirmed]
        if not done:
            return
        self._pending_reads = [r for r in self._pending_reads if r.round > confirmed]
        for r in done:
            self.read_states.append(ReadState(r.index, r.request_id))

    def _on_noop_committed(self) -> None:
        """Reads that arrived before this term's first commit now get a read point."""
        if not self._pending_reads:
            return
        for r in self._pending_reads:
            r.index = max(r.index, self.log.committed)
            r.round = self._read_round + 1
        # Alone, the commit itself confirms leadership (our caller releases the reads);
        # otherwise a heartbeat round must. No later commit may be needed for either.
        self._read_round_wanted = self._peer_acks_needed() > 0

    def _peer_acks_needed(self) -> int:
        """Peers that must answer a read round besides ourselves (0 in a one-node cluster)."""
        return self._quorum() - (1 if self.is_voter() else 0)

    # -- sending -----------------------------------------------------------------------

    def _broadcast_append(self) -> None:
        for p in self.peers:
            self._send_append(p)

    def _broadcast_heartbeat(self) -> None:
        for p in self.peers:
            pr = self.prs[p]
            commit = min(pr.match, self.log.committed)
            self._send(Message(MT.HEARTBEAT, self.id, p, self.term, commit=commit,
                               context=self._read_round))

    def _send_append(self, to: str) -> None:
        """Send what `to` lacks. In REPLICATE nothing goes out when it lacks nothing: a new
        commit index reaches followers with the next append or heartbeat (at most one tick
        later), not in a message of its own. A Python gRPC message costs far more than the
        Raft work it carries, and such empty appends would double the messages, answers
        and follower transactions of every commit."""
        pr = self.prs[to]
        if pr.is_paused():
            return
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            # What the follower needs next was compacted away: it needs a snapshot.
            assert prev < self.log.first_index(), f"no term for {prev} below the last index"
            pr.become_snapshot()
            self._log_event(f"{to} needs a snapshot (next {pr.next})")
            self._send(Message(MT.SNAP, self.id, to, self.term))
            return
        entries = self.log.entries(pr.next, self.log.last_index() + 1, self.cfg.max_msg_bytes)
        if not entries and pr.state == ProgressState.REPLICATE:
            return
        self._send(Message(MT.APP, self.id, to, self.term, log_term=prev_term, index=prev,
                           entries=tuple(entries), commit=self.log.committed))
        pr.sent(entries[-1].index if entries else prev)

    # -- stepping messages ---------------------------------------------------------------

    def step(self, m: Message) -> None:
        if m.src not in self.peers:
            # Only a member (voter or learner) other than ourselves may speak to us: a stranger's
            # vote could elect us, its append could make us follow it.
            self._log_event(f"ignored {m.type.name} from non-member {m.src!r}")
            return
        if self.passive and m.type == MT.PRE_VOTE:
            self._adopt_pre_vote_term(m)
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                in_lease = (self.cfg.check_quorum and self.leader != ""
                            and self.election_elapsed < self.cfg.election_ticks
                            and not (m.type == MT.VOTE and m.context == FORCE_VOTE))
                if in_lease:
                    # Leader stickiness: we heard from a live leader recently.
                    return
            if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            else:
                leader = m.src if m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP, MT.TIMEOUT_NOW) else ""
                self.become_follower(m.term, leader)
        elif m.term < self.term:
            if (m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP)
                    and (self.cfg.check_quorum or self.cfg.pre_vote)):
                # A deposed leader: tell it our term so it steps down.
                self._send(Message(MT.APP_RESP, self.id, m.src, self.term))
            elif m.type == MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, self.id, m.src, self.term, reject=True))
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _adopt_pre_vote_term(self, m: Message) -> None:
        """A resynced node forgot its term, so a deposed leader of any term it has not heard
        of would look current and end `passive` (letting it vote again in terms it may have
        voted in before the wipe). A pre-vote never changes an ordinary node's term, but it
        proves that its sender is at term m.term - 1; a passive node, which neither votes
        nor campaigns, adopts that term so that older leaders are refused and told to step
        down, like every other message below its term."""
        if m.term - 1 > self.term:
            self.become_follower(m.term - 1, "")

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = not self.passive and not self.rebuilding and (
            self.vote == m.src
            or (self.vote == "" and self.leader == "")
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        resp_type = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A pre-vote answer carries the term the candidate would use.
            self._send(Message(resp_type, self.id, m.src, m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.src
            self._log_event(f"granted {resp_type.name} to {m.src} at term {m.term}")
        else:
            self._send(Message(resp_type, self.id, m.src, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        want = MT.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type == want:
            self.votes.setdefault(m.src, not m.reject)  # step() let only voters through
            self._tally()
        elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            # Someone won this term.
            self.become_follower(m.term, m.src)
            self._step_follower(m)

    def _step_follower(self, m: Message) -> None:
        if self.passive and m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            self.passive = False
            self._log_event(f"heard from leader {m.src}: no longer passive")
        if self.rebuilding:
            told = m.index if m.type == MT.SNAP else m.commit
            self.rebuild_until = max(self.rebuild_until, told)
        if m.type == MT.APP:
            self.election_elapsed = 0
            self.leader = m.src
            self._handle_append(m)
        elif m.type == MT.SNAP:
            self.election_elapsed = 0
            self.leader = m.src
            self._handle_snapshot(m)
        elif m.type == MT.TIMEOUT_NOW:
            if m.src == self.leader and self.is_voter() and not self.rebuilding:
                self._log_event(f"leader {m.src} handed leadership to us: campaigning now")
                self._campaign(pre=False, forced=True)
        elif m.type == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.leader = m.src
            self.log.commit_to(min(m.commit, self.log.last_index()))
            # Our last index tells the leader whether we hold everything it sent (a slow
            # acknowledgement, not a lost append) and, with `rebuilding`, that we lost data.
            self._send(Message(MT.HEARTBEAT_RESP, self.id, m.src, self.term, context=m.context,
                               index=self.log.last_index(), rebuilding=self.rebuilding,
                               needs_snapshot=self.joining))

    def _handle_append(self, m: Message) -> None:
        if self.joining:
            self._answer_append(m.src, index=m.index, reject=True, reject_hint=m.index,
                                hint_term=m.log_term)
            return
        if m.index < self.log.committed:
            self._answer_append(m.src, index=self.log.committed)
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._received_leader_data()
            self._answer_append(m.src, index=last_new)
            return
        hint = self.log.find_conflict_by_term(m.index, m.log_term)
        self._answer_append(m.src, index=m.index, reject=True, reject_hint=hint,
                            hint_term=self.log.term(hint) or 0)

    def _answer_append(self, to: str, index: int, reject: bool = False, reject_hint: int = 0,
                       hint_term: int = 0) -> None:
        """An APP_RESP, flagged while we are still rebuilding a wiped data dir."""
        self._send(Message(MT.APP_RESP, self.id, to, self.term, index=index, reject=reject,
                           reject_hint=reject_hint, hint_term=hint_term,
                           rebuilding=self.rebuilding, needs_snapshot=self.joining))

    def _received_leader_data(self) -> None:
        """Our log now matches the leader's (an accepted append or a snapshot). Once it also
        reaches every commit index a leader told us of, we are rebuilt: from here on the
        leader may trust that we never hold less than we acknowledge, and we may vote."""
        if self.rebuilding and self.log.last_index() >= self.rebuild_until:
            self.rebuilding = False
            self._log_event(f"rebuilt up to {self.log.last_index()}: may vote and campaign")

    def _handle_snapshot(self, m: Message) -> None:
        """The runtime received the leader's state up to m.index (term m.log_term)."""
        snap = SnapshotMeta(m.index, m.log_term)
        if snap.index <= self.log.committed:
            ack = self.log.committed  # stale: we are already past it
        elif self.log.match_term(snap.index, snap.term):
            self.log.commit_to(snap.index)  # our log has it: just fast-forward the commit
            self._received_leader_data()
            ack = snap.index
        else:
            self._log_event(f"restoring snapshot at {snap.index} (term {snap.term})")
            # The data rides on the message (the runtime made it) to the Ready that installs it.
            self.log.restore(m.snapshot if m.snapshot is not None else Snapshot(snap))
            self._received_leader_data()
            if self.joining:
                self.joining = False
                self._log_event(f"joined with the leader's snapshot at {snap.index}")
            ack = snap.index
        self._answer_append(m.src, index=ack)

    def report_unreachable(self, peer: str) -> None:
        """The runtime dropped messages to `peer`: optimistic replication may have a gap
        that only a probe reveals (etcd's ReportUnreachable)."""
        pr = self.prs.get(peer) if self.role == Role.LEADER else None
        if pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: str, index: int | None) -> None:
        """The runtime finished streaming a snapshot up to `index` to `peer` (None: failed)."""
        pr = self.prs.get(peer) if self.role == Role.LEADER else None
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if index is None:
            pr.become_probe()
            pr.probe_sent = True  # retry after the next heartbeat answer, not in a tight loop
        else:
            pr.snapshot_sent(index)

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.src)
        if pr is None:
            return
        if m.type == MT.APP_RESP:
            if m.index > self.log.last_index():
                # No append of ours reaches past our own log (a leader never shortens it in
                # its term): a broken or forged answer. Counting it would set match and next
                # beyond the log, which no later append can be built from.
                self._log_event(f"ignored APP_RESP from {m.src} beyond our last index "
                                f"({m.index} > {self.log.last_index()})")
                return
            self._on_append_answer(m, pr)
        elif m.type == MT.HEARTBEAT_RESP:
            if m.context > self._read_round:
                # Followers echo the round of our heartbeat; a round we never sent would
                # confirm reads that no majority has confirmed.
                self._log_event(f"ignored HEARTBEAT_RESP from {m.src} for read round "
                                f"{m.context} (ours is {self._read_round})")
                return
            self._on_heartbeat_answer(m, pr)

    def _on_append_answer(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if self._send_snapshot_if_asked(m, pr):
            return
        if self._maybe_lost_data(m, pr, m.reject_hint if m.reject else m.index):
            self._send_append(m.src)
            return
        if m.reject:
            probe = m.reject_hint
            if m.hint_term > 0:
                probe = self.log.find_conflict_by_term(m.reject_hint, m.hint_term)
            # Never moves `next` to or below `match`: a reject below it is stale.
            if pr.maybe_decrease_to(m.index, probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.src)
            return
        if pr.maybe_update(m.index):
            if pr.state != ProgressState.REPLICATE:
                pr.become_replicate()
            if self._maybe_commit():
                self._broadcast_append()
            else:
                self._send_append(m.src)
        if m.src == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, self.id, m.src, self.term))

    def _on_heartbeat_answer(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        self._send_snapshot_if_asked(m, pr)  # its read acks still count below
        pr.probe_sent = False
        self._maybe_lost_data(m, pr, m.index)
        if self._no_ack_for_a_heartbeat(pr):
            if self._holds_all_sent(m, pr):
                self._solicit_ack(m.src, pr)
            else:
                # Appends were lost and an optimistic `next` would never show the gap
                # (found by tests/sim; Raft must not rely on the transport noticing loss).
                pr.become_probe()
        pr.match_at_heartbeat = pr.match
        if m.context > pr.read_ack:
            pr.read_ack = m.context
            self._release_reads()
        if pr.match < self.log.last_index():
            self._send_append(m.src)

    def _maybe_lost_data(self, m: Message, pr: Progress, held: int) -> bool:
        """Lower match only for a follower that says it is rebuilding a wiped data dir
        (`kvstore cluster resync`) and holds less than it once acknowledged; probe from
        what it holds. Any other answer below match is stale (duplicated or reordered) and
        must not undo progress. Commit never depends on match going down."""
        if not m.rebuilding or held >= pr.match:
            return False
        self._log_event(f"{m.src} lost its data (holds {held}, acknowledged {pr.match})")
        pr.match = held
        pr.become_probe()
        return True

    @staticmethod
    def _no_ack_for_a_heartbeat(pr: Progress) -> bool:
        """Entries sent in REPLICATE are outstanding and the follower acknowledged nothing
        since the previous heartbeat answer."""
        return (pr.state == ProgressState.REPLICATE and pr.match < pr.next - 1
                and pr.match == pr.match_at_heartbeat)

    @staticmethod
    def _holds_all_sent(m: Message, pr: Progress) -> bool:
        """The follower's log (counting entries it received but has not acknowledged yet)
        reaches everything we sent it: it is slow to answer, not missing appends."""
        return m.index >= pr.next - 1

    def _solicit_ack(self, to: str, pr: Progress) -> None:
        """Ask a follower that seems to hold every entry we sent for an acknowledgement
        with an empty append instead of sending the entries again: its answer may just be
        slow (a long fsync) or lost, and commit may be waiting for it. The append carries
        the term of `next - 1`, so a follower whose log only looks long enough (an old
        term's tail) rejects it and is probed as usual."""
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:  # compacted meanwhile: probing finds out what it needs
            pr.become_probe()
            return
        self._send(Message(MT.APP, self.id, to, self.term, log_term=prev_term, index=prev,
                           commit=self.log.committed))

    def _maybe_commit(self) -> bool:
        index = quorum.committed_index({p: pr.match for p, pr in self.prs.items()},
                                       self.voters)
        had = self.committed_in_term()
        if not self.log.maybe_commit(index, self.term):
            return False
        if not had:
            self._on_noop_committed()
        self._release_reads()
        return True

    # -- durability feedback -------------------------------------------------------------

    def on_persisted(self, index: int, term: int) -> None:
        """The runtime made our log durable up to `index` (entry of `term`)."""
        self.log.stable_to(index, term)
        if self.role == Role.LEADER and self.log.term(index) == term:
            if self.prs[self.id].maybe_update(index) and self._maybe_commit():
                self._broadcast_append()
