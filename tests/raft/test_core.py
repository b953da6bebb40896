"""Deterministic tests of the pure Raft core, driven by hand through RawNode."""

from __future__ import annotations

import random

import pytest

from kvstore.raft.core import RaftConfig
from kvstore.raft.errors import NotLeader
from kvstore.raft.progress import ProgressState
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import MemoryStorage
from kvstore.raft.types import Entry, EntryType, HardState, Message, MessageType, Role
from tests.raft.harness import Cluster

MT = MessageType


def test_single_election_gives_one_leader_and_noop():
    c = Cluster(3)
    c.elect("n1")
    assert c.leaders() == ["n1"]
    assert {c.nodes[i].raft.term for i in c.ids} == {1}
    c.tick_all(1)  # followers learn the commit index from the next heartbeat
    # The no-op of term 1 is committed and applied everywhere.
    for i in c.ids:
        assert [(e.index, e.type) for e in c.applied[i]] == [(1, EntryType.NOOP)]


def test_term_and_vote_are_persisted_before_vote_requests_go_out():
    storage = MemoryStorage()
    node = RawNode(RaftConfig("n1", ("n1", "n2", "n3"), pre_vote=False), storage,
                   random.Random(1))
    while node.role != Role.CANDIDATE:
        node.tick()
    rd = node.ready()
    assert rd.hard_state == HardState(term=1, vote="n1", commit=0)
    assert [m.type for m in rd.messages] == [MT.VOTE, MT.VOTE]
    assert rd.send_before_persist is False


def test_split_vote_resolves_with_randomized_timeouts():
    c = Cluster(5, seed=7)
    # Everyone campaigns at once: first attempt may split; randomized timeouts resolve it.
    for i in c.ids:
        c.nodes[i].raft.election_elapsed = 10**6
    for i in c.ids:
        c.tick(i)
    c.stabilize()
    for _ in range(200):
        if len(c.leaders()) == 1:
            break
        c.tick_all()
    assert len(c.leaders()) == 1
    terms = {c.nodes[i].raft.term for i in c.ids}
    assert len(terms) == 1


def test_vote_refused_to_candidate_with_stale_log():
    c = Cluster(3, pre_vote=False)
    c.elect("n1")
    c.isolate("n3")
    c.nodes["n1"].propose([b"x"])
    c.stabilize()
    c.heal()
    # n3 lacks the entry; n1, n2 must refuse to elect it.
    n3 = c.nodes["n3"]
    n3.raft.become_follower(n3.raft.term, "")
    n3.raft._campaign(pre=False)
    c.process("n3")
    reqs = list(c.inflight)
    c.inflight = []
    for m in reqs:
        if m.dst == "n2":
            c.nodes["n2"].raft.leader = ""  # outside the lease, so the request is considered
            c.nodes["n2"].raft.election_elapsed = 100
            c.nodes["n2"].step(m)
    c.process("n2")
    resp = [m for m in c.inflight if m.type == MT.VOTE_RESP]
    assert resp and all(m.reject for m in resp)


def test_follower_truncates_conflicting_suffix():
    c = Cluster(3)
    c.elect("n1")
    c.isolate("n1")
    c.nodes["n1"].propose([b"lost-1", b"lost-2"])  # never replicated
    c.stabilize()
    c.elect("n2")
    c.nodes["n2"].propose([b"kept"])
    c.stabilize()
    c.heal()
    c.tick_all(30)  # n1 steps down via check-quorum or on contact, then catches up
    c.stabilize()
    c.nodes[c.leaders()[0]].propose([b"after"])
    c.stabilize()
    c.tick_all(1)
    for i in c.ids:
        assert c.data(i)[-2:] == [b"kept", b"after"]
    logs = {i: [(e.index, e.term) for e in c.storage[i].log] for i in c.ids}
    assert logs["n1"] == logs["n2"] == logs["n3"]
    assert b"lost-1" not in [e.data for e in c.storage["n1"].log]


def test_fast_backtracking_needs_few_round_trips():
    c = Cluster(3)
    c.elect("n1")
    c.isolate("n3")
    for k in range(50):
        c.nodes["n1"].propose([b"v%d" % k])
        c.stabilize()
    c.heal()
    rounds = 0
    c.nodes["n1"].propose([b"tail"])
    while c.data("n3")[-1:] != [b"tail"]:
        rounds += 1
        assert rounds < 20
        c.tick("n1")  # heartbeats reveal the lost appends
        c.process("n1")
        msgs, c.inflight = c.inflight, []
        for m in msgs:
            c.nodes[m.dst].step(m)
        for i in c.ids:
            c.process(i)
    assert c.data("n3") == c.data("n1")


def test_previous_term_entry_is_not_committed_by_counting_replicas():
    """Thesis 3.6.2 / figure 3.7: only current-term entries commit by counting."""
    c = Cluster(3, pre_vote=False)
    c.elect("n1")
    c.isolate("n1")
    # n1 appends an entry in term 1 that only it has.
    c.nodes["n1"].propose([b"old"])
    c.stabilize()
    c.heal()
    n1 = c.nodes["n1"].raft
    # Force n1 to win term 2 (n2, n3 have shorter logs so they vote for it).
    n1.become_follower(n1.term, "")
    for i in ("n2", "n3"):
        c.nodes[i].raft.leader = ""
        c.nodes[i].raft.election_elapsed = 100
    n1._campaign(pre=False)
    # Deliver votes but hold back every append so the term-2 no-op is not acknowledged.
    for _ in range(10):
        c.process("n1")
        c.process("n2")
        c.process("n3")
        msgs, c.inflight = c.inflight, []
        for m in msgs:
            if m.type in (MT.VOTE, MT.VOTE_RESP):
                c.nodes[m.dst].step(m)
    assert n1.role == Role.LEADER and n1.term == 2
    # Now let n2 acknowledge ONLY the old entry (index 2), as if the no-op were lost.
    n1.step(Message(MT.APP_RESP, "n2", "n1", 2, index=2))
    assert n1.log.committed == 1, "a term-1 entry must not commit by replica count in term 2"
    n1.step(Message(MT.APP_RESP, "n2", "n1", 2, index=3))
    assert n1.log.committed == 3  # committing the no-op commits the old entry with it


def test_leader_does_not_count_its_own_unsynced_entries():
    c = Cluster(5)
    c.elect("n1")
    leader = c.nodes["n1"]
    leader.propose([b"x"])
    rd = leader.ready()
    assert rd.send_before_persist  # appends go out in parallel with the leader's fsync
    idx = rd.entries[-1].index
    # Two followers acknowledge before the leader's own write is durable: 2 of 5.
    for f in ("n2", "n3"):
        leader.step(Message(MT.APP_RESP, f, "n1", 1, index=idx))
    assert leader.raft.log.committed < idx
    c.storage["n1"].save(rd.hard_state, rd.entries)
    leader.advance(rd)  # now the leader's copy counts: 3 of 5
    assert leader.raft.log.committed == idx


def test_pre_vote_keeps_a_rejoining_node_from_deposing_the_leader():
    c = Cluster(3)
    c.elect("n1")
    c.isolate("n3")
    c.tick("n3", 200)  # would have bumped its term many times without pre-vote
    c.process("n3")
    c.inflight = []
    assert c.nodes["n3"].raft.term == 1
    c.heal()
    c.tick_all(20)
    assert c.leaders() == ["n1"]
    assert c.nodes["n1"].raft.term == 1


def test_without_pre_vote_a_rejoining_node_disrupts():
    c = Cluster(3, pre_vote=False, check_quorum=False)
    c.elect("n1")
    c.isolate("n3")
    c.tick("n3", 200)
    c.process("n3")
    c.inflight = []
    assert c.nodes["n3"].raft.term > 1  # the contrast that pre-vote prevents


def test_check_quorum_makes_an_isolated_leader_step_down():
    c = Cluster(3)
    c.elect("n1")
    c.isolate("n1")
    c.tick("n1", 25)
    c.stabilize()
    assert c.nodes["n1"].role == Role.FOLLOWER


def test_proposal_on_follower_raises_not_leader_with_hint():
    c = Cluster(3)
    c.elect("n2")
    with pytest.raises(NotLeader) as err:
        c.nodes["n1"].propose([b"x"])
    assert err.value.leader == "n2"


def test_batch_of_proposals_is_one_append_per_follower():
    c = Cluster(3)
    c.elect("n1")
    c.nodes["n1"].propose([b"a", b"b", b"c"])
    rd = c.nodes["n1"].ready()
    apps = [m for m in rd.messages if m.type == MT.APP]
    assert sorted(m.dst for m in apps) == ["n2", "n3"]
    assert all(len(m.entries) == 3 for m in apps)
    c.nodes["n1"].advance(rd)


def test_pipeline_sends_next_batch_before_previous_is_acked():
    c = Cluster(3)
    c.elect("n1")
    leader = c.nodes["n1"]
    sent = []
    for k in range(3):
        leader.propose([b"%d" % k])
        rd = leader.ready()
        sent.append([m for m in rd.messages if m.type == MT.APP and m.dst == "n2"])
        c.storage["n1"].save(rd.hard_state, rd.entries)
        leader.advance(rd)
    assert all(len(s) == 1 for s in sent)  # each batch went out without waiting for acks


def test_read_index_waits_for_heartbeat_quorum_and_batches_reads():
    c = Cluster(3)
    c.elect("n1")
    leader = c.nodes["n1"]
    for rid in (1, 2, 3):
        leader.read_index(rid)
    rd = leader.ready()
    hbs = [m for m in rd.messages if m.type == MT.HEARTBEAT]
    assert len(hbs) == 2  # one round for all three reads
    assert rd.read_states == ()
    leader.advance(rd)
    for m in hbs:
        c.nodes[m.dst].step(m)
    for i in ("n2", "n3"):
        c.process(i)
    resp = list(c.inflight)
    c.inflight = []
    leader.step(resp[0])  # one follower + leader = majority
    rd = leader.ready()
    assert [r.request_id for r in rd.read_states] == [1, 2, 3]
    assert all(r.index == leader.raft.log.committed for r in rd.read_states)
    leader.advance(rd)


def test_read_index_on_isolated_leader_is_never_served():
    c = Cluster(3)
    c.elect("n1")
    c.isolate("n1")
    c.nodes["n1"].read_index(9)
    c.stabilize()
    assert c.reads["n1"] == []
    c.tick("n1", 25)  # check-quorum: steps down and drops the read
    c.stabilize()
    assert c.dropped["n1"] == [9]


def test_new_leader_serves_reads_only_after_its_noop_commits():
    c = Cluster(3)
    c.elect("n1")
    c.isolate("n1")
    c.elect("n2")
    c.heal()
    c.stabilize()
    n2 = c.nodes["n2"]
    # Simulate a fresh leader whose no-op is not committed: cut its outbound appends.
    c.isolate("n2")
    c.tick("n2", 25)
    c.stabilize()
    c.heal()
    c.elect("n3")
    c.isolate("n3")
    leader = c.nodes["n3"]
    if leader.role != Role.LEADER:
        pytest.skip("n3 stepped down under isolation before the check")
    leader.read_index(5)
    c.stabilize()
    assert c.reads["n3"] == []
    assert n2.role != Role.LEADER


def test_restart_recovers_term_vote_and_log():
    c = Cluster(3)
    c.elect("n1")
    c.nodes["n1"].propose([b"a"])
    c.stabilize()
    c.restart("n2")
    raft = c.nodes["n2"].raft
    assert raft.term == 1 and raft.vote == "n1"
    assert raft.log.last_index() == 2
    c.nodes["n1"].propose([b"b"])
    c.stabilize()
    c.tick_all(3)
    assert c.data("n2") == [b"a", b"b"]  # re-applied from index 1 after the restart


def test_single_node_cluster_commits_alone():
    c = Cluster(1)
    c.elect("n1")
    c.nodes["n1"].propose([b"solo"])
    c.stabilize()
    assert c.data("n1") == [b"solo"]
    c.nodes["n1"].read_index(1)
    c.stabilize()
    assert [r.request_id for r in c.reads["n1"]] == [1]


def test_five_nodes_tolerate_two_failures():
    c = Cluster(5)
    c.elect("n1")
    c.isolate("n4")
    c.isolate("n5")
    c.nodes["n1"].propose([b"x"])
    c.stabilize()
    assert c.data("n1") == [b"x"]


def test_minority_leader_cannot_commit():
    c = Cluster(5)
    c.elect("n1")
    for i in ("n3", "n4", "n5"):
        c.isolate(i)
    c.nodes["n1"].propose([b"x"])
    c.stabilize()
    assert c.data("n1") == []
    assert c.nodes["n1"].raft.log.committed == 1


def test_restart_applied_index_from_state_machine_skips_reapply():
    storage = MemoryStorage()
    storage.save(HardState(1, "n1", 2), [Entry(1, 1, EntryType.NOOP), Entry(1, 2, data=b"a")])
    node = RawNode(RaftConfig("n1", ("n1",), applied=2), storage, random.Random(0))
    assert not node.ready().committed


# -- snapshots and compaction ---------------------------------------------------------


def _lagging_follower_after_compaction(c: Cluster) -> None:
    c.elect("n1")
    c.isolate("n3")
    for k in range(20):
        c.nodes["n1"].propose([b"v%d" % k])
        c.stabilize()
    for i in ("n1", "n2"):
        c.compact(i, c.nodes[i].raft.log.applied - 2)  # keep a short tail
    c.heal()


def test_follower_behind_the_compacted_log_catches_up_by_snapshot():
    c = Cluster(3)
    _lagging_follower_after_compaction(c)
    c.tick_all(3)
    c.nodes["n1"].propose([b"after"])
    c.stabilize()
    c.tick_all(2)
    assert c.snapshots_sent == 1
    assert c.data("n3") == c.data("n1")
    assert c.data("n3")[-1] == b"after"
    # n3's log now starts after the snapshot, and its commit/applied caught up.
    n3 = c.nodes["n3"].raft
    assert c.storage["n3"].first_index() > 1
    assert n3.log.applied == c.nodes["n1"].raft.log.applied


def test_failed_snapshot_is_retried_after_a_heartbeat():
    c = Cluster(3)
    _lagging_follower_after_compaction(c)
    c.fail_snapshots = True
    c.tick_all(3)
    assert c.snapshots_sent == 0
    assert c.data("n3") == []
    c.fail_snapshots = False
    c.tick_all(3)
    assert c.snapshots_sent == 1
    assert c.data("n3") == c.data("n1")


def test_snapshot_covering_entries_the_follower_has_only_moves_its_commit():
    c = Cluster(3)
    c.elect("n1")
    c.nodes["n1"].propose([b"a", b"b"])
    c.stabilize()
    n2 = c.nodes["n2"]
    # Deliver entry 4 without its commit, then a snapshot up to 4.
    c.isolate("n3")
    c.nodes["n1"].propose([b"c"])
    c.process("n1")
    app = [m for m in c.inflight if m.type == MT.APP and m.dst == "n2"][0]
    c.inflight = []
    n2.step(Message(MT.APP, "n1", "n2", 1, log_term=app.log_term, index=app.index,
                    entries=app.entries, commit=3))
    c.process("n2")
    c.inflight = []
    n2.step(Message(MT.SNAP, "n1", "n2", 1, log_term=1, index=4))
    rd = n2.ready()
    assert rd.snapshot is None  # its log already matches: no restore
    assert [e.index for e in rd.committed] == [4]
    n2.advance(rd)


def test_stale_snapshot_is_acknowledged_with_the_commit_index():
    c = Cluster(3)
    c.elect("n1")
    c.nodes["n1"].propose([b"a", b"b"])
    c.stabilize()
    c.tick_all(1)
    n2 = c.nodes["n2"]
    n2.step(Message(MT.SNAP, "n1", "n2", 1, log_term=1, index=2))
    rd = n2.ready()
    assert rd.snapshot is None
    assert [(m.type, m.index) for m in rd.messages] == [(MT.APP_RESP, 3)]
    n2.advance(rd)


def test_resynced_node_neither_campaigns_nor_votes_until_it_hears_a_leader():
    c = Cluster(3)
    c.elect("n1")
    c.isolate("n1")
    # n3 comes back from a wiped data dir: it has forgotten what it voted.
    c.storage["n3"] = MemoryStorage()
    c.applied["n3"] = []
    cfg = RaftConfig("n3", tuple(c.ids), election_ticks=10, passive_until_contact=True)
    c.nodes["n3"] = RawNode(cfg, c.storage["n3"], random.Random(3))
    c.tick("n3", 100)
    c.process("n3")
    assert c.nodes["n3"].role == Role.FOLLOWER and c.inflight == []
    c.nodes["n3"].step(Message(MT.VOTE, "n2", "n3", 1, log_term=1, index=1))
    c.process("n3")
    assert [m.reject for m in c.inflight if m.type == MT.VOTE_RESP] == [True]
    c.inflight = []
    c.heal()
    c.tick_all(3)  # n1's heartbeats reach n3, which becomes a normal voter again
    assert not c.nodes["n3"].raft.passive


def test_leader_re_replicates_to_a_follower_whose_data_was_wiped():
    c = Cluster(3)
    c.elect("n1")
    for k in range(5):
        c.nodes["n1"].propose([b"v%d" % k])
        c.stabilize()
    c.storage["n3"] = MemoryStorage()
    c.applied["n3"] = []
    cfg = RaftConfig("n3", tuple(c.ids), election_ticks=10, passive_until_contact=True)
    c.nodes["n3"] = RawNode(cfg, c.storage["n3"], random.Random(3))
    c.tick_all(3)  # no new writes: heartbeat answers alone reveal the lost data
    assert c.data("n3") == c.data("n1")
    c.nodes["n1"].propose([b"after"])
    c.stabilize()
    c.tick_all(1)
    assert c.data("n3")[-1] == b"after"


def test_runtime_reported_loss_sends_replication_back_to_probing():
    c = Cluster(3)
    c.elect("n1")
    c.nodes["n1"].propose([b"a"])
    c.stabilize()  # n2 and n3 are in REPLICATE now
    c.cut.add(("n1", "n3"))
    c.nodes["n1"].propose([b"lost-for-n3"])
    c.stabilize()
    c.cut.clear()
    assert c.nodes["n1"].raft.prs["n3"].state == ProgressState.REPLICATE
    c.nodes["n1"].report_unreachable("n3")
    assert c.nodes["n1"].raft.prs["n3"].state == ProgressState.PROBE
    c.tick_all(2)
    assert c.data("n3") == [b"a", b"lost-for-n3"]
