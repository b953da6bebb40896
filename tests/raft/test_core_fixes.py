"""Regression tests for core fixes: each one failed against the code before its fix.

1. Stale (duplicated, reordered) answers never lower a follower's match; only a follower
   that says it is rebuilding its data dir (`Message.rebuilding`) is re-probed from below.
2. A single-node leader releases a read queued before its no-op commits.
3. A follower that already holds every entry sent to it is not re-probed just because its
   acknowledgement is slow (it is asked for the acknowledgement with an empty append, which
   also recovers a lost one).
4. A resynced (passive) node is not woken by a leader of a term older than one it has
   evidence of.
6. A new leader answers ReadIndex only after its no-op commits (proved to catch the bug by
   running the same scenario with `committed_in_term` mutated).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from kvstore.raft.core import Raft, RaftConfig
from kvstore.raft.progress import ProgressState
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import MemoryStorage
from kvstore.raft.types import Entry, EntryType, Message, MessageType, ReadState, Role
from kvstore.server import wire
from tests.raft.harness import Cluster

MT = MessageType
Drop = Callable[[Message], bool]


# -- helpers ------------------------------------------------------------------------------


def _deliver(c: Cluster, drop: Drop = lambda m: False) -> list[Message]:
    """Run every node's Ready once, then step what is in flight except what `drop` picks.
    Returns the messages that were dropped (so a test can replay them later)."""
    for node_id in c.ids:
        c.process(node_id)
    msgs, c.inflight = c.inflight, []
    dropped = [m for m in msgs if drop(m)]
    for m in msgs:
        if not drop(m):
            c.nodes[m.dst].step(m)
    return dropped


def _run(c: Cluster, drop: Drop, rounds: int = 50) -> None:
    for _ in range(rounds):
        _deliver(c, drop)


def _wipe_and_resync(c: Cluster, node_id: str) -> None:
    """Restart `node_id` on an empty data dir marked RESYNC (passive until contact)."""
    c.storage[node_id] = MemoryStorage()
    c.applied[node_id] = []
    cfg = RaftConfig(node_id, tuple(c.ids), election_ticks=10, passive_until_contact=True)
    c.nodes[node_id] = RawNode(cfg, c.storage[node_id], random.Random(3))


def _passive_node() -> Raft:
    cfg = RaftConfig("n3", ("n1", "n2", "n3"), passive_until_contact=True)
    return Raft(cfg, MemoryStorage(), random.Random(1))


# -- 1. progress never goes backwards on stale answers -----------------------------------


def test_stale_heartbeat_answer_never_lowers_match() -> None:
    c = Cluster(3)
    c.elect("n1")
    c.tick("n1")
    c.process("n1")
    hb = [m for m in c.inflight if m.dst == "n2"]
    c.inflight = [m for m in c.inflight if m.dst != "n2"]
    for m in hb:
        c.nodes["n2"].step(m)
    c.process("n2")
    old = [m for m in c.inflight if m.type == MT.HEARTBEAT_RESP]
    assert [m.index for m in old] == [1]
    c.stabilize()
    c.nodes["n1"].propose([b"a", b"b", b"c"])
    c.stabilize()
    pr = c.nodes["n1"].raft.prs["n2"]
    assert (pr.match, pr.state) == (4, ProgressState.REPLICATE)

    c.nodes["n1"].step(old[0])  # the network delivers an old copy of the answer again

    assert (pr.match, pr.state) == (4, ProgressState.REPLICATE)
    c.process("n1")
    assert not [m for m in c.msgs_of(MT.APP) if m.dst == "n2" and m.entries]


def test_stale_append_reject_never_lowers_match() -> None:
    c = Cluster(3)
    c.elect("n1")
    c.cut.add(("n1", "n3"))
    c.nodes["n1"].propose([b"a"])
    c.stabilize()
    c.cut.clear()
    c.nodes["n1"].propose([b"b"])  # n3 lacks entry 2: it rejects this append
    rejects = _deliver(c, drop=lambda m: m.type == MT.APP_RESP and m.reject)
    rejects += _deliver(c, drop=lambda m: m.type == MT.APP_RESP and m.reject)
    assert [(m.src, m.reject_hint) for m in rejects] == [("n3", 1)]
    for m in rejects:
        c.nodes["n1"].step(m)
    c.stabilize()
    pr = c.nodes["n1"].raft.prs["n3"]
    assert (pr.match, pr.state) == (3, ProgressState.REPLICATE)

    c.nodes["n1"].step(rejects[0])  # a duplicate of the old reject arrives late

    assert (pr.match, pr.state) == (3, ProgressState.REPLICATE)
    assert pr.next == 4


def test_rebuilding_follower_flags_its_answers_until_it_holds_leader_data() -> None:
    r = _passive_node()
    r.step(Message(MT.HEARTBEAT, "n1", "n3", 2, commit=3))
    assert not r.passive, "leader contact lets it vote again"
    assert r.rebuilding, "but it holds no data yet"
    (resp,) = r.msgs
    assert (resp.type, resp.index, resp.rebuilding) == (MT.HEARTBEAT_RESP, 0, True)
    r.msgs = []
    r.step(Message(MT.APP, "n1", "n3", 2, log_term=2, index=3, commit=3))
    (resp,) = r.msgs
    assert (resp.type, resp.reject, resp.rebuilding) == (MT.APP_RESP, True, True)
    r.msgs = []
    r.step(Message(MT.SNAP, "n1", "n3", 2, log_term=2, index=3))
    assert not r.rebuilding
    (resp,) = r.msgs
    assert (resp.type, resp.index, resp.rebuilding) == (MT.APP_RESP, 3, False)


def test_successful_append_ends_rebuilding() -> None:
    r = _passive_node()
    r.step(Message(MT.APP, "n1", "n3", 1, log_term=0, index=0, commit=1,
                   entries=(Entry(1, 1, EntryType.NOOP),)))
    assert not r.rebuilding and not r.passive
    (resp,) = r.msgs
    assert (resp.index, resp.reject, resp.rebuilding) == (1, False, False)


def test_only_a_rebuilding_answer_lowers_match_and_probes_from_what_it_holds() -> None:
    c = Cluster(3)
    c.elect("n1")
    c.nodes["n1"].propose([b"a", b"b"])
    c.stabilize()
    leader = c.nodes["n1"].raft
    pr = leader.prs["n3"]
    assert pr.match == 3
    leader.step(Message(MT.HEARTBEAT_RESP, "n3", "n1", 1, index=0))
    assert pr.match == 3
    leader.step(Message(MT.APP_RESP, "n3", "n1", 1, index=3, reject=True, reject_hint=0))
    assert pr.match == 3
    leader.step(Message(MT.HEARTBEAT_RESP, "n3", "n1", 1, index=0, rebuilding=True))
    assert (pr.match, pr.next, pr.state) == (0, 1, ProgressState.PROBE)


def test_wiped_follower_is_rebuilt_even_when_its_first_answer_is_a_reject() -> None:
    c = Cluster(3)
    c.elect("n1")
    for k in range(3):
        c.nodes["n1"].propose([b"v%d" % k])
        c.stabilize()
    _wipe_and_resync(c, "n3")
    c.nodes["n1"].propose([b"after"])  # n3's first contact is an append it cannot take
    c.stabilize()
    c.tick_all(2)
    assert c.data("n3") == c.data("n1")
    assert not c.nodes["n3"].raft.rebuilding


def test_rebuilding_flag_survives_the_wire() -> None:
    for flag in (False, True):
        m = Message(MT.HEARTBEAT_RESP, "n3", "n1", 4, index=7, log_term=3, rebuilding=flag)
        assert wire.message_from_pb(wire.message_to_pb(m)) == m


# -- 2. a single-node leader releases reads queued before its no-op commits --------------


def test_single_node_read_queued_before_the_noop_commits_is_released() -> None:
    c = Cluster(1)
    node = c.nodes["n1"]
    while node.role != Role.LEADER:
        node.tick()
    node.read_index(1)  # the no-op is appended but not yet durable, so not committed
    c.stabilize()  # has_ready / ready / advance until idle: no other write follows
    assert [(r.request_id, r.index) for r in c.reads["n1"]] == [(1, 1)]
    assert not node.raft.read_round_pending()
    assert not node.has_ready()


def test_read_round_pending_reports_a_wanted_round_only_on_a_leader() -> None:
    c = Cluster(3)
    c.elect("n1")
    leader = c.nodes["n1"].raft
    assert not leader.read_round_pending()
    leader.read_index(1)
    assert leader.read_round_pending()
    leader.flush_read_round()
    assert not leader.read_round_pending()
    assert not c.nodes["n2"].raft.read_round_pending()


# -- 3. a slow acknowledgement is not mistaken for lost appends ---------------------------


def test_follower_holding_everything_is_not_reprobed_while_its_ack_is_slow() -> None:
    c = Cluster(3)
    c.elect("n1")
    c.nodes["n1"].propose([b"x"])
    # n2 receives and stores entry 2 but its answer is slow (held back, not lost).
    slow = _deliver(c, drop=lambda m: m.type == MT.APP_RESP and m.src == "n2")
    slow += _deliver(c, drop=lambda m: m.type == MT.APP_RESP and m.src == "n2")
    assert [m.index for m in slow] == [2]
    pr = c.nodes["n1"].raft.prs["n2"]
    resent: list[Message] = []

    def record(m: Message) -> bool:
        if m.type == MT.APP and m.dst == "n2" and m.entries:
            resent.append(m)
        return False

    for _ in range(3):  # three heartbeat intervals without an acknowledgement from n2
        c.tick("n1")
        _run(c, record, rounds=3)
    assert pr.state == ProgressState.REPLICATE
    assert resent == [], "entries the follower already holds were sent again"
    c.nodes["n1"].step(slow[0])
    assert pr.match == 2


def test_lost_ack_from_a_follower_holding_everything_is_recovered_without_writes() -> None:
    c = Cluster(3)
    c.elect("n1")
    c.isolate("n3")  # n2's acknowledgement is needed to commit
    c.nodes["n1"].propose([b"x"])
    lost = _deliver(c, drop=lambda m: m.type == MT.APP_RESP and m.src == "n2")
    lost += _deliver(c, drop=lambda m: m.type == MT.APP_RESP and m.src == "n2")
    assert [m.index for m in lost] == [2]  # and never delivered
    c.stabilize()
    assert c.nodes["n1"].raft.log.committed == 1
    c.tick_all(3)  # heartbeats only, no new proposal
    assert c.nodes["n1"].raft.log.committed == 2
    assert c.data("n1") == [b"x"]


# -- 4. a stale leader never wakes a passive node -----------------------------------------


def test_lower_term_leader_never_clears_passive() -> None:
    r = _passive_node()
    r.step(Message(MT.VOTE, "n1", "n3", 7, log_term=7, index=10))
    assert r.term == 7 and r.passive
    for t in (MT.APP, MT.HEARTBEAT, MT.SNAP):
        r.step(Message(t, "n2", "n3", 5, log_term=5, index=4))
    assert r.passive and r.leader == ""


def test_pre_vote_evidence_of_a_newer_term_keeps_a_stale_leader_from_clearing_passive() -> None:
    """A pre-vote never changes a node's term, so a resynced node that saw one for term 8
    (from a node at term 7 whose log ends in term 7) stayed at term 0, and a deposed leader
    of term 5 then looked current to it and made it a voter again: it could then vote a
    second time in a term it voted in before the wipe."""
    r = _passive_node()
    r.step(Message(MT.PRE_VOTE, "n1", "n3", 8, log_term=7, index=10))
    (resp,) = r.msgs
    assert resp.reject
    r.msgs = []
    r.step(Message(MT.HEARTBEAT, "n2", "n3", 5))
    assert r.passive
    # The stale leader is told of the newer term, so it steps down.
    assert [(m.type, m.term) for m in r.msgs] == [(MT.APP_RESP, 7)]
    r.msgs = []
    r.step(Message(MT.HEARTBEAT, "n1", "n3", 7))
    assert not r.passive and r.leader == "n1"


def test_pre_vote_never_changes_the_term_of_an_ordinary_node() -> None:
    cfg = RaftConfig("n3", ("n1", "n2", "n3"))
    r = Raft(cfg, MemoryStorage(), random.Random(1))
    r.step(Message(MT.PRE_VOTE, "n1", "n3", 8, log_term=7, index=10))
    assert r.term == 0


# -- 6. ReadIndex waits for the new leader's no-op ----------------------------------------


def _read_at_new_leader_before_its_noop_commits(c: Cluster) -> tuple[int, list[ReadState]]:
    """n1 commits x (index 2) with n2's help and acknowledges it; n2 never learns that it
    is committed. n1 is cut off; n2 wins term 2 with n3's vote but its appends are lost, so
    its no-op stays uncommitted while heartbeats still flow. A read at n2 now must not be
    answered with n2's commit index (1): that would miss the acknowledged x.
    Returns (index of x, read states n2 produced while its appends were being lost)."""
    c.elect("n1")
    c.tick_all(1)
    c.cut.add(("n1", "n3"))
    c.nodes["n1"].propose([b"x"])
    _deliver(c)  # n1 -> n2 append
    _deliver(c)  # n2 -> n1 ack: committed on n1, which tells nobody yet
    _deliver(c)
    assert c.data("n1") == [b"x"]
    x_index = c.nodes["n1"].raft.log.committed
    n2 = c.nodes["n2"].raft
    assert n2.log.committed < x_index <= n2.log.last_index()
    c.isolate("n1")
    c.nodes["n3"].raft.election_elapsed = 100  # out of n1's lease
    lose_appends: Drop = lambda m: m.type == MT.APP and m.src == "n2"  # noqa: E731
    for _ in range(100):
        if n2.role == Role.LEADER:
            break
        c.tick("n2")
        _run(c, lose_appends, rounds=5)
    assert n2.role == Role.LEADER and n2.term == 2
    c.nodes["n2"].read_index(7)
    _run(c, lose_appends)
    return x_index, list(c.reads["n2"])


def test_new_leader_answers_reads_only_after_its_noop_commits() -> None:
    c = Cluster(3)
    x_index, early = _read_at_new_leader_before_its_noop_commits(c)
    assert early == []
    c.tick_all(3)  # the appends get through: the no-op commits, and x with it
    assert [r.request_id for r in c.reads["n2"]] == [7]
    assert c.reads["n2"][0].index >= x_index


def test_the_read_scenario_catches_a_leader_that_skips_the_noop_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutation check for the test above: without the rule, the read is answered with a
    read index that misses an acknowledged write."""
    monkeypatch.setattr(Raft, "committed_in_term", lambda self: True)
    c = Cluster(3)
    x_index, early = _read_at_new_leader_before_its_noop_commits(c)
    assert [r.request_id for r in early] == [7]
    assert early[0].index < x_index
