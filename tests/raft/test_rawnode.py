"""RawNode's Ready boundary: has_ready() only looks; ready() hands out; status() copies."""

from __future__ import annotations

from kvstore.raft.types import MessageType, Role
from tests.raft.harness import Cluster


def test_has_ready_is_a_pure_query() -> None:
    c = Cluster(3)
    c.elect("n1")
    leader = c.nodes["n1"]
    leader.read_index(7)
    before = (list(leader.raft.msgs), leader.raft.read_round_pending(), leader.raft._read_round)
    for _ in range(3):
        assert leader.has_ready()
    after = (list(leader.raft.msgs), leader.raft.read_round_pending(), leader.raft._read_round)
    assert before == after  # asking sent no heartbeat round
    rd = leader.ready()
    assert [m.type for m in rd.messages] == [MessageType.HEARTBEAT, MessageType.HEARTBEAT]
    leader.advance(rd)
    assert not leader.has_ready()


def test_status_is_a_copy_of_the_core_state() -> None:
    c = Cluster(3)
    c.elect("n2")
    st = c.nodes["n2"].status()
    assert st.role == Role.LEADER and st.leader == "n2" and st.commit == st.last_index
    assert set(st.progress) == {"n1", "n3"}
    assert all(p.match == st.last_index and p.state == "replicate"
               for p in st.progress.values())
    c.nodes["n2"].propose([b"x"])
    assert c.nodes["n2"].status().last_index == st.last_index + 1  # the old copy is unchanged
    assert st.last_index == c.nodes["n1"].status().last_index
    assert c.nodes["n1"].status().progress == {}
