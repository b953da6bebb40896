"""Membership changes and leader transfer in the Raft core (thesis ch. 4 and 3.10), as a
mixin of kvstore.raft.core.Raft: the same deterministic state machine, kept in its own
module because it is a concern of its own.

A change takes effect when the runtime reports it applied (apply_conf), not when appended:
see kvstore.state.membership for why. The rules that makes necessary, enforced here:
  * one change pending at a time: none is proposed while the log holds one that is not
    applied (pending_conf_index);
  * a new leader proposes none before its first entry of the term is applied, so every
    change an earlier leader left in its log is in force first (the apply-time form of
    the fix to the single-server change bug Ongaro posted in 2015);
  * a leader removed (or made a learner) steps down once the change is applied, after
    telling the others the commit index and handing leadership to its most up-to-date
    voter with TIMEOUT_NOW;
  * a joining node asks for the leader's state as a snapshot (see Raft.joining).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvstore.raft.errors import ConfChangeRefused, NotLeader, TransferRefused
from kvstore.raft.log import RaftLog
from kvstore.raft.progress import Progress, ProgressState
from kvstore.raft.types import Entry, EntryType, Message, MessageType, Role

MT = MessageType


class Reconfiguration:
    # Provided by Raft (declared for readers and type checkers).
    id: str
    term: int
    role: Role
    leader: str
    log: RaftLog
    prs: dict[str, Progress]
    election_elapsed: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    peers: tuple[str, ...]
    voter_peers: tuple[str, ...]
    pending_conf_index: int
    lead_transferee: str
    transfer_elapsed: int
    _send: Callable[[Message], None]
    _log_event: Callable[[str], None]
    _append: Callable[[list[Entry]], None]
    _send_append: Callable[[str], None]
    _broadcast_append: Callable[[], None]
    _broadcast_heartbeat: Callable[[], None]
    _maybe_commit: Callable[[], bool]
    _release_reads: Callable[[], None]
    committed_in_term: Callable[[], bool]
    become_follower: Callable[[int, str], None]

    def _set_config(self, voters: Sequence[str], learners: Sequence[str]) -> None:
        self.voters = tuple(sorted(set(voters)))
        self.learners = tuple(sorted(set(learners) - set(voters)))
        self.peers = tuple(sorted({*self.voters, *self.learners} - {self.id}))
        self.voter_peers = tuple(v for v in self.voters if v != self.id)

    def is_voter(self) -> bool:
        return self.id in self.voters

    def conf_change_refusal(self) -> str | None:
        """Why the leader may not propose a membership change now, or None. Membership
        takes effect when applied, so two changes may never be in the log unapplied at
        once: their combined effect could differ by two servers from the configuration a
        lagging node still uses, and two such majorities need not overlap."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee:
            return f"a leader transfer to {self.lead_transferee} is under way"
        if self.log.applied < self.pending_conf_index:
            if self.log.term(self.pending_conf_index) == self.term and not self.committed_in_term():
                return "the new leader has not committed an entry of its term yet"
            return "a previous membership change is still being applied"
        return None

    def propose_conf_change(self, data: bytes) -> tuple[int, int]:
        """Append one membership change (its data is the state machine's business);
        returns (index, term). Raises NotLeader, ConfChangeRefused."""
        why = self.conf_change_refusal()
        if why is not None:
            raise ConfChangeRefused(why)
        index = self.log.last_index() + 1
        self._append([Entry(self.term, index, EntryType.CONF_CHANGE, data)])
        self.pending_conf_index = index
        return index, self.term

    def apply_conf(self, voters: Sequence[str], learners: Sequence[str]) -> None:
        """A membership change was applied (or a snapshot installed, or the node started):
        from now on these are the voters and learners. Called by the runtime in apply order."""
        old = set(self.peers)
        self._set_config(voters, learners)
        self._log_event(f"membership now voters {','.join(self.voters) or '-'}"
                        f" learners {','.join(self.learners) or '-'}")
        if self.role == Role.LEADER:
            last = self.log.last_index()
            for p in set(self.peers) - old:
                pr = Progress(last + 1, self.cfg.max_inflight)
                pr.recent_active = True
                self.prs[p] = pr
            for p in old - set(self.peers):
                self.prs.pop(p, None)
            if self.lead_transferee and self.lead_transferee not in self.voter_peers:
                self.lead_transferee = ""
            if not self.is_voter():
                self._step_down_removed()
                return
            if self._maybe_commit():
                self._broadcast_append()
            self._release_reads()
            for p in set(self.peers) - old:
                self._send_append(p)
        elif self.role != Role.FOLLOWER and not self.is_voter():
            self.become_follower(self.term, "")

    def _step_down_removed(self) -> None:
        """We were removed (or demoted) while leading: tell the others the commit index
        that includes the change, hand leadership to the most up-to-date voter at once
        rather than leave the cluster to wait an election timeout, and step down."""
        self._broadcast_heartbeat()
        best = max(self.voter_peers, key=lambda p: self.prs[p].match, default="")
        if best and self.prs[best].match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, self.id, best, self.term))
        self._log_event("no longer a voter: stepping down")
        self.become_follower(self.term, "")

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to `target` (thesis 3.10): stop taking proposals, bring it up to
        date, then tell it to campaign at once. Gives up after an election timeout.
        Raises NotLeader, TransferRefused."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id:
            return
        if target not in self.voter_peers:
            raise TransferRefused(f"{target} is not a voter of this cluster")
        self.lead_transferee = target
        self.transfer_elapsed = 0
        # Our election timer restarts so check-quorum does not end the transfer early.
        self.election_elapsed = 0
        self._log_event(f"transferring leadership to {target}")
        if self.prs[target].match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, self.id, target, self.term))
        else:
            self._send_append(target)

    def _send_snapshot_if_asked(self, m: Message, pr: Progress) -> bool:
        """A joining node asks for our state as a snapshot (see Raft.joining)."""
        if not m.needs_snapshot:
            return False
        if pr.state != ProgressState.SNAPSHOT:
            pr.become_snapshot()
            self._log_event(f"{m.src} joined the cluster: sending it a snapshot")
            self._send(Message(MT.SNAP, self.id, m.src, self.term))
        return True

