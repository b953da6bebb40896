"""The core stays safe and alive on peer input it cannot trust ("Trust nothing on the wire").

The runtime (kvstore.server.peer_checks) drops malformed messages before they reach the core;
these tests pin what the core does on its own, because it must not depend on that filter for
its safety: a vote or an acknowledgement counts only from a configured voter (as etcd-io/raft's
quorum.VoteResult tallies only the configuration's voters), an acknowledgement beyond the
leader's own log is ignored instead of tripping an assert, and a ReadIndex confirmation for a
round the leader never sent confirms nothing.
"""

from __future__ import annotations

import random

import pytest

from kvstore.raft import quorum
from kvstore.raft.core import Raft, RaftConfig
from kvstore.raft.storage import MemoryStorage
from kvstore.raft.types import Message, MessageType, ReadState, Role
from tests.raft.harness import Cluster

MT = MessageType


def _candidate(pre_vote: bool) -> Raft:
    cfg = RaftConfig("n1", ("n1", "n2", "n3"), election_ticks=2, pre_vote=pre_vote)
    r = Raft(cfg, MemoryStorage(), random.Random(1))
    for _ in range(10):
        r.tick()
        if r.role != Role.FOLLOWER:
            break
    assert r.role == (Role.PRE_CANDIDATE if pre_vote else Role.CANDIDATE)
    return r


# -- quorum arithmetic counts only voters --------------------------------------------------


def test_vote_result_ignores_votes_from_outside_the_configuration() -> None:
    voters = ("n1", "n2", "n3")
    assert quorum.vote_result({"n1": True, "intruder": True}, voters) is None
    assert quorum.vote_result({"n1": True, "x": True, "y": True, "z": True}, voters) is None
    assert quorum.vote_result({"n1": True, "n2": True}, voters) is True
    # Rejections from strangers cannot lose an election either.
    assert quorum.vote_result({"n1": True, "x": False, "y": False}, voters) is None
    assert quorum.vote_result({"n1": True, "n2": False, "n3": False}, voters) is False


def test_committed_index_counts_only_voters() -> None:
    voters = ("n1", "n2", "n3")
    assert quorum.committed_index({"n1": 9, "intruder": 9}, voters) == 0
    assert quorum.committed_index({"n1": 9, "n2": 5, "intruder": 9}, voters) == 5


# -- elections -----------------------------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [False, True])
def test_a_vote_from_a_stranger_does_not_elect(pre_vote: bool) -> None:
    """A 3-node candidate became leader after one VOTE_RESP from id "intruder"."""
    r = _candidate(pre_vote)
    resp = MT.PRE_VOTE_RESP if pre_vote else MT.VOTE_RESP
    term = r.term + 1 if pre_vote else r.term
    for stranger in ("intruder", "n4", ""):
        r.step(Message(resp, stranger, "n1", term))
    assert r.role == (Role.PRE_CANDIDATE if pre_vote else Role.CANDIDATE)
    r.step(Message(resp, "n2", "n1", term))
    assert r.role == (Role.CANDIDATE if pre_vote else Role.LEADER)


# -- a leader and acknowledgements it cannot have caused ---------------------------------


def _leader() -> tuple[Cluster, Raft]:
    c = Cluster(3)
    c.elect("n1")
    c.stabilize()
    return c, c.nodes["n1"].raft


def test_an_ack_beyond_the_leaders_log_is_ignored() -> None:
    """It used to set match and next past the log and trip `assert prev < first_index()`."""
    c, r = _leader()
    last, commit = r.log.last_index(), r.log.committed
    for index in (last + 1, 2**62, 2**64 - 1):
        r.step(Message(MT.APP_RESP, "n2", "n1", r.term, index=index))
        r.step(Message(MT.APP_RESP, "n3", "n1", r.term, index=index, reject=True,
                       reject_hint=index, hint_term=r.term))
    assert r.prs["n2"].match <= last and r.prs["n3"].match <= last
    assert r.log.committed == commit
    c.nodes["n1"].propose([b"after"])  # replication carries on
    c.stabilize()
    assert r.prs["n2"].match == r.log.last_index() == r.prs["n3"].match


def test_a_read_confirmation_for_a_round_never_sent_confirms_nothing() -> None:
    c, r = _leader()
    r.read_index(7)
    assert not r.read_states
    for peer in ("n2", "n3"):
        r.step(Message(MT.HEARTBEAT_RESP, peer, "n1", r.term, context=2**62,
                       index=r.log.last_index()))
    assert r.read_states == [] and all(r.prs[p].read_ack <= r._read_round for p in r.peers)
    c.stabilize()  # the real round answers it
    assert [rs.request_id for rs in c.reads["n1"]] == [7]
    assert c.reads["n1"] == [ReadState(r.log.committed, 7)]
