"""Scripted membership scenarios at the core level: why the two rules that keep at most one
membership change unapplied are needed, and the core's learner / removal / transfer rules.

Membership takes effect when a change is APPLIED (kvstore.state.membership), so the log
may hold changes a node has not applied yet. If two could be unapplied at once, a lagging
node could count with a configuration two servers away from another node's, and two such
majorities need not intersect:

    C = {n1,n2,n3}; "add n4" and "add n5" both committed under C. n2 has applied both
    (its configuration is {n1..n5}); an entry X after them is committed by {n1,n3} under
    C; n2 - without X - is then elected by {n2,n4,n5}, a majority of {n1..n5}. X is lost.

The random churn of tests/sim does not reach this interleaving within a CI budget, so the
two mutation tests below script it, deterministically, on RawNodes driven by hand; each
also checks that the real code refuses the second change at the point the mutant accepts
it. The harness applies membership changes the way the runtime does: at apply time, by
calling apply_conf before advancing past the Ready.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from kvstore.raft.core import Raft, RaftConfig
from kvstore.raft.errors import ConfChangeRefused, NotLeader
from kvstore.raft.rawnode import RawNode
from kvstore.raft.types import Entry, EntryType, Message, MessageType, Role
from kvstore.state.membership import CT, decode_change, encode_change
from tests.raft.harness import Cluster

MT = MessageType
INITIAL = ("n1", "n2", "n3")
ALL = ("n1", "n2", "n3", "n4", "n5")
X = b"X: committed, then lost"


class MembershipCluster(Cluster):
    """n1..n3 form the cluster; n4 and n5 are new servers already running with the
    configuration they will have once both are added (as a joining node learns it), so
    they answer votes from members of that configuration. Conf changes apply at apply
    time; `drop` filters messages in flight (one entry per append: max_msg_bytes=1)."""

    def __init__(self) -> None:
        self.voters: dict[str, set[str]] = {n: set(INITIAL) for n in INITIAL}
        self.voters.update({n: set(ALL) for n in ALL[3:]})
        self.learners: dict[str, set[str]] = {n: set() for n in ALL}
        super().__init__(5, seed=7, max_msg_bytes=1)
        self.drop: Callable[[Message], bool] = lambda _m: False
        self.heal()

    def heal(self) -> None:
        """Everything connected except the new servers, which nobody has reached yet
        (so their logs stay empty until the lagging node campaigns)."""
        self.cut.clear()
        for n in ALL[3:]:
            self.cut_off(n, INITIAL)

    def _new_node(self, node_id: str) -> RawNode:
        cfg = RaftConfig(node_id=node_id, voters=tuple(sorted(self.voters[node_id])),
                         learners=tuple(sorted(self.learners[node_id])),
                         applied=self.storage[node_id].first_index() - 1,
                         **self.cfg)  # type: ignore[arg-type]
        return RawNode(cfg, self.storage[node_id], random.Random(f"{self.seed}-{node_id}"))

    def process(self, node_id: str) -> bool:
        node = self.nodes[node_id]
        if not node.has_ready():
            return False
        rd = node.ready()
        self.storage[node_id].save(rd.hard_state, rd.entries)
        self.applied[node_id].extend(rd.committed)
        for e in rd.committed:
            if e.type == EntryType.CONF_CHANGE:
                self._apply_change(node_id, e)
        for m in rd.messages:
            if (m.src, m.dst) not in self.cut and not self.drop(m):
                self.inflight.append(m)
        node.advance(rd)
        return True

    def _apply_change(self, node_id: str, e: Entry) -> None:
        cc = decode_change(e.data)
        voters, learners = self.voters[node_id], self.learners[node_id]
        if cc.type == CT.CONF_ADD_VOTER:
            voters.add(cc.node_id)
        elif cc.type == CT.CONF_ADD_LEARNER:
            learners.add(cc.node_id)
        elif cc.type == CT.CONF_PROMOTE:
            learners.discard(cc.node_id)
            voters.add(cc.node_id)
        elif cc.type == CT.CONF_REMOVE:
            voters.discard(cc.node_id)
            learners.discard(cc.node_id)
        self.nodes[node_id].apply_conf(sorted(voters), sorted(learners))

    def delivers(self, m: Message) -> bool:
        return (m.src, m.dst) not in self.cut and not self.drop(m)

    def cut_off(self, a: str, others: tuple[str, ...]) -> None:
        for b in others:
            if b != a:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def raft(self, node_id: str) -> Raft:
        return self.nodes[node_id].raft

    def holds(self, node_id: str, index: int, data: bytes) -> bool:
        log = self.raft(node_id).log
        return index <= log.last_index() and log.entries(index, index + 1)[0].data == data

    def add(self, leader: str, node_id: str) -> bytes:
        data = encode_change(CT.CONF_ADD_VOTER, node_id, f"sim:{node_id}")
        self.nodes[leader].propose_conf_change(data)
        return data


def carries(dst: str, index: int) -> Callable[[Message], bool]:
    """Appends to `dst` that carry entry `index`."""
    return lambda m: (m.type == MT.APP and m.dst == dst
                      and any(e.index == index for e in m.entries))


def elect_without_replicating(c: MembershipCluster, cand: str) -> None:
    """Elect `cand` and stop the moment it leads: its no-op is appended, not sent."""
    for n in c.ids:
        if n != cand:
            r = c.raft(n)
            r.election_elapsed = max(r.election_elapsed, r.cfg.election_ticks)
    for _ in range(100):
        c.tick(cand)
        for _ in range(50):
            progressed = any([c.process(n) for n in c.ids if c.nodes[n].role != Role.LEADER])
            msgs, c.inflight = c.inflight, []
            for m in msgs:
                c.nodes[m.dst].step(m)
                if c.nodes[cand].role == Role.LEADER:
                    return
            if not progressed and not msgs:
                break
    raise AssertionError(f"{cand} was not elected")


def lose_x(c: MembershipCluster, committer: str, lagging: str, x_index: int) -> None:
    """The end of both scenarios: `lagging` (configuration {n1..n5}, without X) is elected
    by {lagging, n4, n5} although `committer` has committed and applied X."""
    assert c.raft(committer).log.committed >= x_index
    assert any(e.data == X for e in c.applied[committer]), "X was applied"
    assert set(c.raft(lagging).voters) == set(ALL), "the lagging node applied both adds"
    assert not c.holds(lagging, x_index, X)
    c.drop = lambda _m: False
    c.cut.clear()
    for other in INITIAL:
        if other != lagging:
            c.cut_off(other, ALL)
    c.elect(lagging)
    r = c.raft(lagging)
    assert r.role == Role.LEADER
    # Leader Completeness broken: an entry committed in an earlier term is missing.
    assert not c.holds(lagging, x_index, X)
    c.cut.clear()
    c.stabilize()
    # ... and the new leader commits a different entry at that index: the committer's
    # state machine applied X there, the new leader's (and its followers') something else
    # (State Machine Safety).
    assert r.log.committed >= x_index and not c.holds(lagging, x_index, X)
    assert [e.data for e in c.applied[lagging] if e.index == x_index] != [X]
    assert [e.data for e in c.applied[committer] if e.index == x_index] == [X]


def test_one_pending_change_rule_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation (b): propose_conf_change does not set pending_conf_index, so a leader may
    put a second change in its log before the first is applied.

    n1 leads C={n1,n2,n3}, proposes "add n4" (2), "add n5" (3) and X (4). n3 gets all
    three, n2 only the two changes (the append carrying 4 is lost): n1 commits 4 under C
    with {n1,n3}; n2 learns commit 3 and applies both changes. n2, cut off from n1 and
    n3, is elected by n4 and n5 (empty logs) - a majority of {n1..n5} - without X, and X
    is overwritten on n1 and n3 when the partition heals."""
    c = MembershipCluster()
    c.elect("n1")
    c.add("n1", "n4")
    with pytest.raises(ConfChangeRefused, match="still being applied"):
        c.add("n1", "n5")  # the real code refuses here

    original = Raft.propose_conf_change

    def no_pending(self: Raft, data: bytes) -> tuple[int, int]:
        saved = self.pending_conf_index
        result = original(self, data)
        self.pending_conf_index = saved
        return result

    monkeypatch.setattr(Raft, "propose_conf_change", no_pending)
    c = MembershipCluster()
    c.elect("n1")
    c.add("n1", "n4")
    c.add("n1", "n5")
    x_index, _ = c.nodes["n1"].propose([X])
    assert x_index == 4
    c.drop = carries("n2", x_index)
    c.stabilize()  # every acknowledgement reaches n1 before it applies anything
    assert c.raft("n1").log.committed == x_index
    c.tick("n1")  # a heartbeat tells n2 commit 3 (its match)
    c.stabilize()
    lose_x(c, "n1", "n2", x_index)


def test_noop_guard_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation (a): _become_leader does not set pending_conf_index, so a new leader may
    propose a change while a change of an earlier term is still unapplied in its log.

    n1 leads C={n1,n2,n3} and proposes "add n4" (2); only n2 stores it, then n1 is cut
    off. n2 is elected (term 2) and at once - before its no-op (3) commits - proposes
    "add n5" (4) and X (5): two changes unapplied. n3 gets everything and n2 commits 5
    under C with {n2,n3}; n1 comes back, gets 3 and 4 but not 5 (lost), learns commit 4
    and applies both changes. n1, cut off again, is elected by n4 and n5 without X."""
    for mutant in (False, True):
        if mutant:
            original = Raft._become_leader

            def no_guard(self: Raft, original: Callable[[Raft], None] = original) -> None:
                saved = self.pending_conf_index
                original(self)
                self.pending_conf_index = saved

            monkeypatch.setattr(Raft, "_become_leader", no_guard)
        c = MembershipCluster()
        c.elect("n1")
        c.drop = carries("n3", 2)
        c.add("n1", "n4")
        c.stabilize()
        assert c.raft("n2").log.last_index() == 2 and c.raft("n3").log.last_index() == 1
        c.drop = lambda _m: False
        c.cut_off("n1", ALL)
        elect_without_replicating(c, "n2")
        assert c.raft("n2").role == Role.LEADER and c.raft("n2").log.applied < 2
        if not mutant:
            with pytest.raises(ConfChangeRefused, match="not committed an entry of its term"):
                c.add("n2", "n5")  # the real code refuses here
            continue
        c.add("n2", "n5")
        x_index, _ = c.nodes["n2"].propose([X])
        assert x_index == 5
        # n1 is still cut off; n3 gets 2..5 in one append and n2 commits 5 under C.
        cfg = c.raft("n2").cfg
        c.raft("n2").cfg = dataclasses.replace(cfg, max_msg_bytes=4 << 20)
        c.stabilize()
        assert c.raft("n2").log.committed == 5
        c.raft("n2").cfg = cfg
        c.heal()
        c.cut_off("n1", ("n3", "n4", "n5"))
        c.drop = carries("n1", x_index)
        for _ in range(3):  # heartbeats make n2 probe n1 again
            c.tick("n2")
            c.stabilize()
        lose_x(c, "n2", "n1", x_index)


# -- the core's other membership rules ----------------------------------------------------


def learner_cluster() -> MembershipCluster:
    """n1..n3 voters, n4 a learner everywhere (n5 unused)."""
    c = MembershipCluster()
    for n in ALL:
        c.voters[n] = set(INITIAL)
        c.learners[n] = {"n4"}
    c.nodes = {i: c._new_node(i) for i in c.ids}
    c.cut.clear()
    return c


def test_learner_never_campaigns_and_its_acks_never_commit() -> None:
    c = learner_cluster()
    c.elect("n1")
    # A learner's election timer runs out again and again: it never campaigns.
    c.tick("n4", 200)
    assert c.nodes["n4"].role == Role.FOLLOWER and not c.inflight
    # With n2 and n3 cut off, only the learner acknowledges: nothing commits.
    c.cut_off("n1", ("n2", "n3"))
    before = c.raft("n1").log.committed
    c.nodes["n1"].propose([b"v"])
    c.stabilize()
    assert c.raft("n4").log.last_index() == c.raft("n1").log.last_index()
    assert c.raft("n1").log.committed == before
    # A learner that is asked for a vote is not counted: n1's election needs n2 or n3.
    assert "n4" not in c.raft("n1").voter_peers


def test_removed_leader_steps_down_and_hands_over() -> None:
    c = MembershipCluster()
    c.elect("n1")
    c.nodes["n1"].propose_conf_change(encode_change(CT.CONF_REMOVE, "n1"))
    c.stabilize()
    leaders = c.leaders()
    assert "n1" not in leaders and len(leaders) == 1, leaders
    assert c.raft(leaders[0]).term == 2  # TIMEOUT_NOW: an election at once, no timeout
    # The removed node's messages are ignored by the members.
    c.tick("n1", 100)
    assert c.raft(leaders[0]).role == Role.LEADER and c.raft(leaders[0]).term == 2


def test_transfer_times_out_and_refuses_proposals_meanwhile() -> None:
    c = MembershipCluster()
    c.elect("n1")
    c.cut_off("n2", INITIAL)  # the target never catches up
    c.nodes["n1"].propose([b"v"])
    c.stabilize()
    c.nodes["n1"].transfer_leadership("n2")
    with pytest.raises(NotLeader):
        c.nodes["n1"].propose([b"w"])
    assert "transfer" in (c.raft("n1").conf_change_refusal() or "")
    c.tick("n1", c.raft("n1").cfg.election_ticks)
    c.stabilize()
    assert c.raft("n1").role == Role.LEADER and c.nodes["n1"].transferee == ""
    c.nodes["n1"].propose([b"w"])  # proposals are taken again
