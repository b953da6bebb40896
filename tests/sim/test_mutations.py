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

from kvstore.raft.core import RaftConfig
from kvstore.raft.log import RaftLog
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import LogStorage
from kvstore.raft.types import HardState, Ready
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
}


def first_catch(replay_seed: int | None, node_class: type[SimNode] = SimNode) -> SimulationFailure:
    cases = ci_cases() if replay_seed is None else [(n, replay_seed) for n in CLUSTER_SIZES]
    for nodes, seed in cases:
        try:
            run_seed(seed, nodes, node_class=node_class)
        except SimulationFailure as failure:
            if failure.invariant == "Liveness":
                continue
            assert failure.invariant in SAFETY, f"not a safety catch:\n{failure}"
            print(f"caught by {failure.invariant} at seed {seed} ({nodes} nodes): "
                  f"{failure.detail.splitlines()[0]}")
            return failure
    if replay_seed is not None:
        pytest.skip(f"seed {replay_seed} does not catch this mutation")
    pytest.fail(f"the mutation survived all {len(cases)} CI runs")


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


# -- the runtime --------------------------------------------------------------------------


class AckBeforeFsyncNode(SimNode):
    """A runtime that sends every Ready's messages before its write completes - also a
    follower's append responses and votes, which must wait for the fsync."""

    def send_early(self, rd: Ready) -> bool:
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
