"""Membership churn: an operator who changes who is in the cluster while it runs.

Why an operator and not more nemesis faults: membership changes are requests an operator
makes through the leader (etcd's MemberAdd/Promote/Remove, MoveLeader), refused and retried
as a real one would be, and they interleave with every fault the nemesis injects. What
the operator does, all through the production runtime of the current leader:

* add a spare as a learner, then - once the change is applied - "start" it the way
  `serve --join` does: its empty store is seeded with the membership the cluster told it
  (itself included, as a learner), and it catches up by appends or a snapshot;
* promote a learner (refused until it is nearly caught up: the operator retries);
* remove a voter - sometimes the leader itself, which must hand over and step down - or a
  learner; replace a crashed voter (remove it; a spare is added later);
* transfer leadership to another voter.

A removed node is not stopped at once: it keeps running for a while (`linger_us`). One
that never learned of its removal (the leader stops talking to it once the change is
applied) keeps campaigning with its old membership: that is the disruption attempt the
members must ignore. Then it is stopped for good (`in_service` False), as an operator
decommissions it.

The operator draws from its own random stream (never world.derive()), so a run without
reconfiguration is exactly what it was before this module existed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable

from kvstore.raft.types import Message, MessageType, Role
from kvstore.server.reconfig import MembershipRefused
from kvstore.state.commands import ApplyResult
from kvstore.state.membership import CT, Member
from kvstore.v1 import raft_pb2
from tests.sim.node import Promise, SimNode
from tests.sim.world import US_PER_MS, World

MAX_VOTERS = 5
MIN_VOTERS = 3  # below this only to replace a crashed voter


def peer_address(node_id: str) -> str:
    """A node's peer address in the simulation (any unique non-empty string will do)."""
    return f"sim:{node_id}"


def initial_members(ids: Iterable[str]) -> list[Member]:
    """The bootstrap membership (`--peers`): every initial node a voter."""
    return [Member(n, peer_address(n)) for n in ids]


class Reconfigurer:
    """The operator. `counts` says what it did (the CI test asserts on them)."""

    def __init__(
        self,
        world: World,
        rng: random.Random,
        nodes: dict[str, SimNode],
        spares: list[str],
        leader: Callable[[], str | None],
        interval_us: tuple[int, int] = (80 * US_PER_MS, 300 * US_PER_MS),
        linger_us: tuple[int, int] = (200 * US_PER_MS, 1200 * US_PER_MS),
        on_join: Callable[[str], None] = lambda _node: None,
    ) -> None:
        self._on_join = on_join  # tells the invariants the node's membership was seeded
        self.world = world
        self.rng = rng
        self.nodes = nodes
        self.spares = list(spares)  # not yet asked to join, in order
        self._leader = leader
        self.interval_us = interval_us
        self.linger_us = linger_us
        self.active = False
        self.joined: set[str] = set()
        # Ids seen removed by a leader's applied membership (running or stopped).
        self.removed: set[str] = set()
        self._lingering: set[str] = set()
        # Usually one request at a time, as one operator makes them; sometimes another
        # (a second operator) while one is in flight: the leader must refuse a second
        # change until the first is applied.
        self._in_flight = False
        self.overlap = 0.3
        self.counts: Counter[str] = Counter()

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        self.active = True
        self.world.schedule(self.rng.randint(*self.interval_us), self._act)

    def stop(self) -> None:
        """The chaos ends: no more requests; lingering removed nodes are stopped now (the
        cluster must settle without them). The processes keep following the applied
        membership: a change still in flight may yet be applied."""
        self.active = False
        for n in sorted(self._lingering):
            self._stop(n)
        self._follow()

    def _follow(self) -> None:
        """After the chaos: reconcile now and then, without making requests."""
        lid = self._leader()
        if lid is not None and self.nodes[lid].rt is not None:
            self._reconcile(self.nodes[lid])
        for n in sorted(self._lingering):
            self._stop(n)
        self.world.schedule(20 * US_PER_MS, self._follow)

    def _act(self) -> None:
        if not self.active:
            return
        self.world.schedule(self.rng.randint(*self.interval_us), self._act)
        lid = self._leader()
        if lid is None:
            return
        leader = self.nodes[lid]
        if leader.rt is None or leader.role != Role.LEADER:
            return
        self._reconcile(leader)
        if self._in_flight and self.rng.random() >= self.overlap:
            return
        members = {m.id: m for m in leader.rt.members}
        voters = sorted(n for n, m in members.items() if not m.learner)
        learners = sorted(n for n, m in members.items() if m.learner)
        down_voters = [v for v in voters if not self.nodes[v].up]
        options: list[tuple[str, int]] = []
        if self.spares and len(members) < MAX_VOTERS:
            options.append(("add", 3))
        if learners:
            options.append(("promote", 4))
        if len(voters) > MIN_VOTERS:
            options.append(("remove", 3))
        if learners and len(members) >= MAX_VOTERS:
            options.append(("remove-learner", 1))
        if down_voters:
            options.append(("replace", 3))
        if len(voters) > 1:
            options.append(("transfer", 2))
        if not options:
            return
        action = self.rng.choices([o for o, _ in options], [w for _, w in options])[0]
        if action == "add":
            spare = self.spares[0]
            self._change(leader, "add_learner", CT.CONF_ADD_LEARNER, spare, peer_address(spare))
        elif action == "promote":
            self._change(leader, "promote", CT.CONF_PROMOTE, self.rng.choice(learners))
        elif action == "remove":
            victim = lid if self.rng.random() < 0.4 else self.rng.choice(voters)
            self._change(leader, "remove_leader" if victim == lid else "remove",
                         CT.CONF_REMOVE, victim)
        elif action == "remove-learner":
            self._change(leader, "remove_learner", CT.CONF_REMOVE, self.rng.choice(learners))
        elif action == "replace":
            self._change(leader, "replace", CT.CONF_REMOVE, self.rng.choice(down_voters))
        else:
            target = self.rng.choice([v for v in voters if v != lid])
            self._transfer(leader, target)

    # -- requests --------------------------------------------------------------------------

    def _change(self, leader: SimNode, what: str, kind: int, node_id: str,
                address: str = "") -> None:
        change = raft_pb2.ConfChange(type=kind, node_id=node_id, peer_address=address)
        self.world.log(f"OPERATOR asks {leader.id}: {what} {node_id}")
        self.counts["requests"] += 1
        self._in_flight = True
        fut = leader.conf_change(change)

        def done(p: Promise[ApplyResult]) -> None:
            self._in_flight = False
            err = p.error()
            if err is not None:
                refused = isinstance(err, MembershipRefused)
                self.counts["refused" if refused else "failed"] += 1
                self.world.log(f"OPERATOR {what} {node_id}: {type(err).__name__}: {err}")
                return
            r = p.result()
            if r.error:
                self.counts["rejected"] += 1
                self.world.log(f"OPERATOR {what} {node_id}: rejected at apply: {r.error}")
                return
            self.counts[what] += 1
            self.world.log(f"OPERATOR {what} {node_id}: applied at {r.index}")
            if self.active and leader.rt is not None:
                self._reconcile(leader)

        fut.add_done_callback(done)

    def _transfer(self, leader: SimNode, target: str) -> None:
        self.world.log(f"OPERATOR asks {leader.id}: transfer leadership to {target}")
        self.counts["requests"] += 1
        self._in_flight = True
        fut = leader.transfer(target)

        def done(p: Promise[None]) -> None:
            self._in_flight = False
            err = p.error()
            if err is None:
                self.counts["transfer"] += 1
                self.world.log(f"OPERATOR transfer to {target}: done")
            else:
                self.counts["transfer_failed"] += 1
                self.world.log(f"OPERATOR transfer to {target}: {type(err).__name__}: {err}")

        fut.add_done_callback(done)

    # -- following the applied membership ----------------------------------------------

    def _reconcile(self, leader: SimNode) -> None:
        """Make the processes match the leader's applied membership: start spares it
        admitted (whether or not the operator saw its answer), let removed ones linger."""
        assert leader.rt is not None
        members = leader.rt.members
        ids = {m.id for m in members}
        for spare in [*self.spares]:
            if spare in ids:
                self._join(spare, members)
        # Removed means tombstoned in the leader's state, not merely absent from it: a new
        # leader may not have applied an add yet, and its process must keep running.
        tombstones = set(leader.rt.store.removed_members())
        for n, node in self.nodes.items():
            if n in ids or n in self.removed or not node.in_service or n not in tombstones:
                continue
            self.removed.add(n)
            self._lingering.add(n)
            self.counts["removed_nodes"] += 1
            linger = self.rng.randint(*self.linger_us)
            self.world.log(f"OPERATOR {n} is no longer a member; it runs for another "
                           f"{linger // US_PER_MS}ms")
            self.world.schedule(linger, self._stop, n)

    def _join(self, spare: str, members: list[Member]) -> None:
        """`serve --join`: the new node's store starts from the membership the cluster
        told it (which names it a learner)."""
        self.spares.remove(spare)
        self.joined.add(spare)
        node = self.nodes[spare]
        node.disk.join_marker = True  # as app.py: durable before the membership is recorded
        node.disk.store.seed_members(members)
        self._on_join(spare)
        node.in_service = True
        self.counts["joined"] += 1
        told = ", ".join(m.id + ("(learner)" if m.learner else "") for m in members)
        self.world.log(f"OPERATOR starts {spare} (joins knowing {told})")
        node.start()

    def _stop(self, node_id: str) -> None:
        if node_id not in self._lingering:
            return
        self._lingering.discard(node_id)
        node = self.nodes[node_id]
        node.in_service = False
        if node.up:
            node.crash()
        self.counts["stopped"] += 1
        self.world.log(f"OPERATOR stopped removed node {node_id}")

    # -- observation -------------------------------------------------------------------------

    def observe(self, msgs: Iterable[Message]) -> None:
        """Count a removed node's election messages: its disruption attempts."""
        for m in msgs:
            if m.src in self.removed and m.type in (MessageType.PRE_VOTE, MessageType.VOTE):
                self.counts["disruption_msgs"] += 1
