"""Proof that the simulator can fail: each test breaks one safety rule on purpose (by
patching the core or subclassing the simulated runtime, never through flags in the code
under test) and requires a safety invariant or the linearizability check to catch it
within the CI seed set.

The seeds are searched in CI order and the first catch wins; the test prints which seed
and invariant caught it. `pytest tests/sim/test_mutations.py --seed S -k NAME` replays one.
Liveness failures do not count as catches: the point is to see the damage.
"""

from __future__ import annotations

import random

import pytest

from kvstore.raft.core import Raft, RaftConfig
from kvstore.raft.log import RaftLog
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import LogStorage
from kvstore.raft.types import Entry, HardState, Message, Role, Snapshot, SnapshotMeta
from kvstore.server.runtime import Plan
from kvstore.state import machine
from kvstore.state.commands import ApplyResult
from tests.sim.conftest import CLUSTER_SIZES, ci_cases
from tests.sim.invariants import Invariants
from tests.sim.node import SimNode
from tests.sim.runner import run_seed
from tests.sim.world import SimulationFailure

SAFETY = {
    "Election Safety",
    "Vote Uniqueness",
    "Log Matching",
    "Commit durability",
    "Commit agreement",
    "Leader Completeness",
    "State Machine Safety",
    "At-most-once",
    "No acknowledged write lost",
    "Failed means not applied",
    "Convergence",
    "Stale reads",
    "Stale reads monotonic",
    "Linearizability",
    "Durable term monotonicity",
    "Commit monotonicity",
    "Applied monotonicity",
    # the leader's belief about durable copies, and a read's floor (thesis 10.2.1, 6.4)
    "Match soundness",
    "ReadIndex safety",
    # leases never expire early; watches see every change once, in order
    "Lease expiry",
    "Watch order",
    "Watch completeness",
    "Hash checks agree",
    # membership (tests/sim/reconfig.py runs; they hold trivially without reconfiguration)
    "Vote quorum",
    "Learner never leads",
    "Removed never leads",
    "Join by snapshot",
}


def first_catch(replay_seed: int | None, node_class: type[SimNode] = SimNode) -> SimulationFailure:
    cases = ci_cases() if replay_seed is None else [(n, replay_seed) for n in CLUSTER_SIZES]
    return _first_catch_in(cases, "", replay_seed is not None, node_class=node_class)


def _first_catch_in(cases: list[tuple[int, int]], kind: str, replaying: bool,
                    **overrides: object) -> SimulationFailure:
    """The first safety failure over `cases` ((nodes, seed) runs of `kind`: "" or
    "churn "); skips a replayed seed that catches nothing, fails if no run catches."""
    for nodes, seed in cases:
        try:
            run_seed(seed, nodes, **overrides)
        except SimulationFailure as failure:
            if failure.invariant == "Liveness":
                continue
            assert failure.invariant in SAFETY, f"not a safety catch:\n{failure}"
            print(f"caught by {failure.invariant} at {kind}seed {seed} ({nodes} nodes): "
                  f"{failure.detail.splitlines()[0]}")
            return failure
    if replaying:
        pytest.skip(f"{kind}seed {cases[0][1]} does not catch this mutation")
    pytest.fail(f"the mutation survived all {len(cases)} {kind or 'CI '}runs")


# -- the core ---------------------------------------------------------------------------


def test_vote_without_log_up_to_date_check(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Thesis 3.6.1 removed: any candidate gets the vote, stale log or not."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, last_index, last_term: True)
    failure = first_catch(replay_seed)
    assert failure.invariant in {"Leader Completeness", "Commit agreement", "Log Matching",
                                 "State Machine Safety", "Linearizability"}


def test_commit_previous_term_entry_by_counting_replicas(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Thesis 3.6.2 removed: a leader commits whatever a majority stores, even an entry of
    an earlier term (figure 3.7: such an entry can still be overwritten)."""

    def maybe_commit(self: RaftLog, index: int, term: int) -> bool:
        if index > self.committed:
            self.committed = index
            return True
        return False

    monkeypatch.setattr(RaftLog, "maybe_commit", maybe_commit)
    failure = first_catch(replay_seed)
    assert failure.invariant in {"Leader Completeness", "Commit agreement", "Log Matching",
                                 "State Machine Safety", "Linearizability",
                                 "No acknowledged write lost"}


def test_read_index_before_noop_commits(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Thesis 6.4 (ReadIndex, step 1) removed: a new leader answers ReadIndex before an
    entry of its own term has committed, so its read point can be a commit index older
    than writes the previous leader already acknowledged: a stale read.

    Only Linearizability sees it today, and only in a few CI runs late in the set: a stale
    read is visible only on a key whose newer write completed before the read began. A
    "ReadIndex safety" check (a linearizable read includes everything committed anywhere
    when it arrived) would catch it at seed 0."""
    monkeypatch.setattr(Raft, "committed_in_term", lambda self: True)
    failure = first_catch(replay_seed)
    assert failure.invariant in {"Linearizability", "ReadIndex safety"}


def test_follower_truncates_matching_entries(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Thesis 3.5 (figure 3.1, AppendEntries receiver steps 3-4) broken: a follower whose
    log matches `prev` deletes everything after it and appends the message's entries even
    when they are already there and its log is longer, so a stale, duplicated or reordered
    append throws away entries it acknowledged, which the leader may count toward commit."""

    def maybe_append(self: RaftLog, prev_index: int, prev_term: int, commit: int,
                     entries: tuple[Entry, ...]) -> int | None:
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        if entries:
            self.append(entries)  # replaces the whole suffix after prev_index
        self.commit_to(min(commit, last_new))
        return last_new

    monkeypatch.setattr(RaftLog, "maybe_append", maybe_append)
    failure = first_catch(replay_seed)
    assert failure.invariant in {"Commit durability", "Match soundness", "Leader Completeness",
                                 "Commit agreement", "Log Matching", "State Machine Safety",
                                 "Linearizability", "No acknowledged write lost"}


def test_leader_counts_its_unsynced_entries(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Thesis 10.2.1 broken: a leader may write its log in parallel with replication and
    commit once a majority holds an entry on disk, but its own copy counts only once it is
    durable (Raft.on_persisted). Here its own match advances as soon as entries are
    appended (new terms' no-ops included), before the write.

    The runtime hands the core no input between a Ready and its finish, so this wrong
    self-count never decides a commit here; the Match soundness invariant catches the
    leader's wrong belief itself (a future runtime that overlaps its own writes with
    processing would turn it into lost writes)."""
    original = Raft._append

    def append_and_count(self: Raft, entries: list[Entry]) -> None:
        original(self, entries)
        if self.role == Role.LEADER:
            self.prs[self.id].maybe_update(self.log.last_index())

    monkeypatch.setattr(Raft, "_append", append_and_count)
    failure = first_catch(replay_seed)
    assert failure.invariant in {"Commit durability", "Match soundness", "Leader Completeness",
                                 "Commit agreement", "Linearizability",
                                 "No acknowledged write lost"}


def test_snapshot_replaces_longer_matching_log(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Thesis 5.3 (figure 5.3, InstallSnapshot receiver step 6) broken: a follower whose
    log already holds the snapshot's last entry must keep the entries after it; here it
    restores the snapshot anyway and discards them, although it may have acknowledged them
    (the trace marks each such discard with "MUTANT discards")."""

    def handle_snapshot(self: Raft, m: Message) -> None:
        snap = SnapshotMeta(m.index, m.log_term)
        if snap.index <= self.log.committed:
            ack = self.log.committed
        else:
            last = self.log.last_index()
            if self.log.match_term(snap.index, snap.term) and last > snap.index:
                self._log_event(f"MUTANT discards {snap.index + 1}..{last}")
            self._log_event(f"restoring snapshot at {snap.index} (term {snap.term})")
            self.log.restore(m.snapshot if m.snapshot is not None else Snapshot(snap))
            self._received_leader_data()
            ack = snap.index
        self._answer_append(m.src, index=ack)

    monkeypatch.setattr(Raft, "_handle_snapshot", handle_snapshot)
    failure = first_catch(replay_seed)
    assert failure.invariant in {"Commit durability", "Match soundness", "Leader Completeness",
                                 "Commit agreement", "Log Matching", "State Machine Safety",
                                 "Linearizability", "No acknowledged write lost"}


# -- the state machine --------------------------------------------------------------------


def test_session_dedup_switched_off(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Thesis 6.3 removed: the state machine no longer answers a retried (client_id, seq)
    from the client's session but executes it again, so a write retried after a lost
    answer or a failover takes effect twice."""
    original = machine.ShardedStateMachine._apply_one

    def apply_again(self: machine.ShardedStateMachine, txn: machine.KVTxn, entry: Entry,
                    batch: machine._Batch) -> ApplyResult:
        result = original(self, txn, entry, batch)
        if result.duplicate:  # forget the recorded answer and run the command again
            session = batch.sessions[machine._storage_key(result.client_id)]
            assert session is not None
            del session.results[result.seq]
            result = original(self, txn, entry, batch)
        return result

    monkeypatch.setattr(machine.ShardedStateMachine, "_apply_one", apply_again)
    failure = first_catch(replay_seed)
    assert failure.invariant in {"At-most-once", "No acknowledged write lost",
                                 "Linearizability"}


# -- the runtime --------------------------------------------------------------------------


class AckBeforeFsyncNode(SimNode):
    """A runtime that sends every Ready's messages before its write completes - also a
    follower's append responses and votes, which must wait for the fsync."""

    def send_early(self, plan: Plan) -> bool:
        return True


def test_ack_before_fsync(replay_seed: int | None) -> None:
    failure = first_catch(replay_seed, AckBeforeFsyncNode)
    assert failure.invariant in SAFETY


def test_ack_before_fsync_loses_acknowledged_entries(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """The same mutation with the Commit durability check switched off: the damage itself
    (a crash losing an acknowledged entry, then a leader without it) must be caught."""
    monkeypatch.setattr(Invariants, "_check_durable_quorum", lambda self, *args: None)
    # The same belief checked continuously (proposed; absent until invariants.py has it).
    monkeypatch.setattr(Invariants, "_check_match_soundness", lambda self: None, raising=False)
    failure = first_catch(replay_seed, AckBeforeFsyncNode)
    assert failure.invariant != "Commit durability"


class _VotelessStorage:
    """The durable store as a restarted core sees it, minus the vote."""

    def __init__(self, storage: LogStorage) -> None:
        self._storage = storage

    def initial_state(self) -> HardState:
        hs = self._storage.initial_state()
        return HardState(term=hs.term, vote="", commit=hs.commit)

    def __getattr__(self, name: str) -> object:
        return getattr(self._storage, name)


class ForgetfulNode(SimNode):
    """Restarts read their hard state without the vote."""

    def open_raw(self, config: RaftConfig, storage: LogStorage, rng: random.Random) -> RawNode:
        return super().open_raw(config, _VotelessStorage(storage), rng)  # type: ignore[arg-type]


def test_forget_vote_on_restart(replay_seed: int | None) -> None:
    failure = first_catch(replay_seed, ForgetfulNode)
    assert failure.invariant in {"Vote Uniqueness", "Election Safety", "Leader Completeness"}


# -- leases and watches -------------------------------------------------------------------


def test_new_leader_keeps_old_expiry_clock(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """etcd's rule removed: a new leader does not give leases a full TTL but counts them
    from when they were granted (as if it knew the old leader's clock), so a lease kept
    alive through the old leader expires early after a failover."""
    from kvstore.server import lessor as lessor_mod

    def promote(self: lessor_mod.Lessor, leases) -> None:  # noqa: ANN001
        self.is_leader = True
        self._ttl = dict(leases)
        self._expiry = {lid: 0.0 for lid in self._ttl}  # "already due"
        self._revoking = {}

    monkeypatch.setattr(lessor_mod.Lessor, "promote", promote)
    failure = first_catch(replay_seed)
    assert failure.invariant == "Lease expiry"


def test_watch_events_skip_a_revision(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """A watch cursor that moves one revision too far after each read loses the first
    change of the next batch."""
    from kvstore.storage.memory_store import MemoryNodeStore

    original = MemoryNodeStore.events

    def events(self: MemoryNodeStore, start_rev: int, key: bytes, range_end: bytes, **kw):  # noqa: ANN003, ANN202
        got, nxt = original(self, start_rev, key, range_end, **kw)
        return got, nxt + 1 if got else nxt

    monkeypatch.setattr(MemoryNodeStore, "events", events)
    failure = first_catch(replay_seed)
    assert failure.invariant == "Watch completeness"


# -- membership -------------------------------------------------------------------------
# The no-op guard and the one-pending-change rule are proven needed by scripted scenarios
# (tests/raft/test_membership_scenarios.py): random churn does not reach the interleaving
# that loses an entry within a CI budget.

CHURN_SEEDS = 60  # reconfiguration runs searched: 3 nodes first, then 5


def first_churn_catch(replay_seed: int | None) -> SimulationFailure:
    """Like first_catch, over membership-churn runs (tests/sim/reconfig.py)."""
    seeds = range(CHURN_SEEDS) if replay_seed is None else [replay_seed]
    cases = [(n, s) for n in CLUSTER_SIZES for s in seeds]
    return _first_catch_in(cases, "churn ", replay_seed is not None, reconfig=True)


def test_learners_counted_for_commit(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Mutation (c): the commit index is the quorum-th highest match over every member's
    progress, learners included (the quorum size still from the voters)."""
    from kvstore.raft import quorum

    def committed_index(match_indexes, voters) -> int:  # noqa: ANN001
        matches = sorted(match_indexes.values(), reverse=True)
        return matches[quorum.majority(len(voters)) - 1] if matches else 0

    monkeypatch.setattr(quorum, "committed_index", committed_index)
    failure = first_churn_catch(replay_seed)
    assert failure.invariant in {"Commit durability", "Leader Completeness",
                                 "Commit agreement", "Linearizability",
                                 "No acknowledged write lost"}


def test_removed_node_campaigns_and_is_heard(
    monkeypatch: pytest.MonkeyPatch, replay_seed: int | None
) -> None:
    """Mutation (d): a node that is not a learner counts as a voter (so a removed node
    keeps campaigning, and a removed leader does not step down), and messages from
    non-members are accepted (by the runtime's peer checks and by the core)."""
    import dataclasses

    from kvstore.server import peer_checks

    monkeypatch.setattr(Raft, "is_voter", lambda self: self.id not in self.learners)
    original_step = Raft.step

    def step(self: Raft, m: Message) -> None:
        if m.src in self.peers or m.src == self.id:
            original_step(self, m)
            return
        peers = self.peers
        self.peers = (*peers, m.src)
        try:
            original_step(self, m)
        finally:
            self.peers = peers

    monkeypatch.setattr(Raft, "step", step)
    refusal = peer_checks.refusal
    monkeypatch.setattr(peer_checks, "refusal", lambda m, rx: refusal(
        m, dataclasses.replace(rx, peers=rx.peers | {m.src})))
    failure = first_churn_catch(replay_seed)
    assert failure.invariant in SAFETY


def test_joiner_replays_the_log(monkeypatch: pytest.MonkeyPatch, replay_seed: int | None) -> None:
    """Mutation: a joining node does not wait for the leader's snapshot (Raft.joining is
    ignored), so it replays the log from index 1 over the membership it was told, which
    lacks the history (tombstones) that log assumes."""
    original_init = Raft.__init__

    def init(self, config, *args, **kwargs) -> None:  # noqa: ANN001
        original_init(self, config, *args, **kwargs)
        self.joining = False

    monkeypatch.setattr(Raft, "__init__", init)
    failure = first_churn_catch(replay_seed)
    assert failure.invariant == "Join by snapshot"
