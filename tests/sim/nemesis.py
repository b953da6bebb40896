"""The fault injector: partitions, crashes (including in the middle of a write) and slow nodes.

Faults are drawn from the nemesis's own random stream at random times, with per-seed rates
(a FaultProfile), so some seeds are calm and some are storms. Crashes prefer the leader
and, some of the time, are timed to land while the victim's write is in flight: that is
where a leader has already sent appends for entries its own disk has not got, and where a
follower that answered too early would lose an acknowledged entry.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tests.sim.network import Network
from tests.sim.node import SimNode
from tests.sim.world import US_PER_MS, World


@dataclass
class FaultProfile:
    interval_us: tuple[int, int] = (50 * US_PER_MS, 400 * US_PER_MS)
    partition_weight: int = 3
    crash_weight: int = 3
    slow_weight: int = 1
    partition_us: tuple[int, int] = (50 * US_PER_MS, 600 * US_PER_MS)
    down_us: tuple[int, int] = (5 * US_PER_MS, 300 * US_PER_MS)
    slow_us: tuple[int, int] = (100 * US_PER_MS, 800 * US_PER_MS)
    crash_mid_write: float = 0.5
    leader_bias: float = 0.5
    # weights of: one node, the next new leader, isolate the next new leader, at the next
    # commit, a correlated crash of many
    crash_kinds: tuple[int, int, int, int, int] = (6, 2, 2, 2, 1)
    churn_weight: int = 1
    churn_us: tuple[int, int] = (200 * US_PER_MS, 1500 * US_PER_MS)
    # `kvstore cluster resync`: a follower's data dir is replaced by an empty one.
    wipe_weight: int = 0


class Nemesis:
    """Draws faults from its own stream. Traps armed for "the next leader / commit" share
    one epoch: arming a new one disarms the previous, so at most one is pending."""

    def __init__(
        self,
        world: World,
        rng: random.Random,
        nodes: dict[str, SimNode],
        network: Network,
        profile: FaultProfile,
        leader: Callable[[], str | None],
        observe: Callable[[], None],
        on_wipe: Callable[[str], None] = lambda _node: None,
    ) -> None:
        self.world = world
        self.rng = rng
        self.nodes = nodes
        self.ids = sorted(nodes)
        self.network = network
        self.profile = profile
        self._leader = leader
        self.observe = observe  # check invariants now (before a crash inside a step)
        self._on_wipe = on_wipe  # tell the invariants the node forgets, on purpose
        self.active = False
        self._partition_epoch = 0
        self._arm_epoch = 0
        self._churn_until = 0
        self._churn_step = 0
        self.counts = {"partition": 0, "crash": 0, "slow": 0, "churn": 0, "wipe": 0}

    def start(self) -> None:
        self.active = True
        self._schedule_next()

    def stop(self) -> None:
        self.active = False

    def _schedule_next(self) -> None:
        self.world.schedule(self.rng.randint(*self.profile.interval_us), self._act)

    def _act(self) -> None:
        if not self.active:
            return
        p = self.profile
        weights = (p.partition_weight, p.crash_weight, p.slow_weight, p.churn_weight,
                   p.wipe_weight)
        if not any(weights):
            return  # a calm run
        kind = self.rng.choices(("partition", "crash", "slow", "churn", "wipe"), weights)[0]
        if kind == "partition":
            self._partition()
        elif kind == "wipe":
            self._wipe()
        elif kind == "crash":
            self._crash()
        elif kind == "churn":
            self._churn()
        else:
            self._slow()
        self._schedule_next()

    # -- victims -----------------------------------------------------------------------

    def _pick(self, up_only: bool = True) -> str | None:
        leader = self._leader()
        if leader is not None and self.rng.random() < self.profile.leader_bias:
            return leader
        choices = [n for n in self.ids if self.nodes[n].up or not up_only]
        return self.rng.choice(choices) if choices else None

    # -- partitions --------------------------------------------------------------------

    def _partition(self) -> None:
        ids = list(self.ids)
        kind = self.rng.choice(("symmetric", "one-way", "leader", "bridge", "links"))
        blocked: list[tuple[str, str]] = []
        if kind == "symmetric":
            self.rng.shuffle(ids)
            k = self.rng.randint(1, len(ids) - 1)
            a, b = sorted(ids[:k]), sorted(ids[k:])
            blocked = _cut(a, b)
            label = f"symmetric {a}|{b}"
        elif kind == "one-way":
            x = self.rng.choice(ids)
            others = [n for n in ids if n != x]
            if self.rng.random() < 0.5:
                blocked = [(x, y) for y in others]
                label = f"one-way: {x} cannot send"
            else:
                blocked = [(y, x) for y in others]
                label = f"one-way: {x} cannot receive"
        elif kind == "leader":
            x = self._leader() or self.rng.choice(ids)
            blocked = _cut([x], [n for n in ids if n != x])
            label = f"leader {x} isolated"
        elif kind == "bridge":
            bridge = self.rng.choice(ids)
            rest = [n for n in ids if n != bridge]
            self.rng.shuffle(rest)
            k = self.rng.randint(1, len(rest) - 1)
            a, b = sorted(rest[:k]), sorted(rest[k:])
            blocked = _cut(a, b)
            label = f"bridge {bridge} between {a}|{b}"
        else:
            pairs = [(x, y) for x in ids for y in ids if x != y]
            blocked = sorted(self.rng.sample(pairs, self.rng.randint(1, len(pairs) // 2)))
            label = "links " + " ".join(f"{x}->{y}" for x, y in blocked)
        self.counts["partition"] += 1
        self._partition_epoch += 1
        self.network.partition(label, blocked)
        self.world.schedule(self.rng.randint(*self.profile.partition_us), self._heal_partition,
                            self._partition_epoch)

    def _heal_partition(self, epoch: int) -> None:
        if epoch == self._partition_epoch:
            self.network.heal()

    # -- crashes -----------------------------------------------------------------------

    def _crash(self) -> None:
        kinds = ("one", "new-leader", "isolate-new-leader", "at-commit", "many")
        kind = self.rng.choices(kinds, self.profile.crash_kinds)[0]
        if kind == "many":
            self._crash_many()
        elif kind == "new-leader":
            self._crash_next_leader()
        elif kind == "isolate-new-leader":
            self._isolate_next_leader()
        elif kind == "at-commit":
            self._crash_at_next_commit()
        else:
            self._crash_one()

    def _crash_many(self) -> None:
        """A correlated failure (power loss of a rack): a majority or everyone at once,
        each losing whatever its disk had not finished writing."""
        up = [n for n in self.ids if self.nodes[n].up]
        if not up:
            return
        k = self.rng.choice((len(self.ids) // 2 + 1, len(self.ids)))
        victims = sorted(self.rng.sample(up, min(k, len(up))))
        self.counts["crash"] += len(victims)
        self.world.log(f"NEMESIS correlated crash of {victims}")
        for v in victims:
            self._crash_now(v, self.nodes[v].incarnation, self.rng.randint(*self.profile.down_us))

    def _crash_next_leader(self) -> None:
        """Crash whichever node next becomes leader, soon after: a fresh leader has not
        committed its no-op, and its log tail may exist nowhere else."""
        self._arm_epoch += 1
        epoch = self._arm_epoch

        def fire(node: SimNode) -> None:
            if epoch != self._arm_epoch:
                return  # another node fired first
            self._arm_epoch += 1
            self.counts["crash"] += 1
            delay = self.rng.randint(0, 3 * node.timing.tick_us)
            self.world.schedule(delay, self._crash_now, node.id, node.incarnation,
                                self.rng.randint(*self.profile.down_us))

        for n in self.ids:
            self.nodes[n].on_leader.append(fire)
        self.world.log("NEMESIS arms a crash of the next new leader")

    def _isolate_next_leader(self) -> None:
        """Cut the next new leader off before its first messages leave: its no-op (and
        whatever clients still send it) stays in its log alone, at a term nobody else has."""
        self._arm_epoch += 1
        epoch = self._arm_epoch

        def fire(node: SimNode) -> None:
            if epoch != self._arm_epoch or not self.active:
                return
            self._arm_epoch += 1
            self.counts["partition"] += 1
            self._partition_epoch += 1
            others = [n for n in self.ids if n != node.id]
            self.network.partition(f"new leader {node.id} isolated at birth",
                                   _cut([node.id], others))
            self.world.schedule(self.rng.randint(*self.profile.partition_us),
                                self._heal_partition, self._partition_epoch)

        for n in self.ids:
            self.nodes[n].on_leader.append(fire)
        self.world.log("NEMESIS arms isolating the next new leader")

    def _crash_at_next_commit(self) -> None:
        """When a leader next advances its commit index: crash it before it tells anyone,
        or cut the power to every node (each loses its unfinished write). The commit is
        observed first, so the invariants know it happened."""
        everyone = self.rng.random() < 0.5
        self._arm_epoch += 1
        epoch = self._arm_epoch

        def fire(node: SimNode) -> None:
            if epoch != self._arm_epoch or not self.active:
                return
            self._arm_epoch += 1
            self.observe()
            victims = [n for n in self.ids if self.nodes[n].up] if everyone else [node.id]
            self.world.log(f"NEMESIS crash of {victims} right after {node.id} committed "
                           f"{node.raw.raft.log.committed if node.raw else '?'}")
            self.counts["crash"] += len(victims)
            for v in victims:
                self._crash_now(v, self.nodes[v].incarnation,
                                self.rng.randint(*self.profile.down_us))

        for n in self.ids:
            self.nodes[n].on_commit.append(fire)
        self.world.log(f"NEMESIS arms a crash of {'everyone' if everyone else 'the leader'} "
                       "at the next commit")

    def _churn(self) -> None:
        """Leadership churn for a while. New leaders mostly meet fates in the pattern
        isolate, isolate, crash-right-after-first-commit: two leaders in a row whose no-ops
        never leave them (log tails of different terms on single nodes), then a leader that
        dies the moment it commits, before telling anyone. That is the ground of the
        thesis's figure 3.7, where committing an old-term entry by counting replicas loses
        it. Some leaders get a random fate instead."""
        length = self.rng.randint(*self.profile.churn_us)
        self.counts["churn"] += 1
        self._churn_until = self.world.now + length
        self._churn_step = 0
        self.world.log(f"NEMESIS leadership churn for {length // US_PER_MS}ms")
        for n in self.ids:
            node = self.nodes[n]
            if self._churn_hook not in node.on_leader:
                node.on_leader.append(self._churn_hook)
            if self._vote_hook not in node.on_vote:
                node.on_vote.append(self._vote_hook)

    def _churn_hook(self, node: SimNode) -> None:
        if not self.active or self.world.now >= self._churn_until:
            return
        node.on_leader.append(self._churn_hook)  # stay armed for this node's next term
        fates = ("isolate", "isolate", "crash-at-commit")
        if self.rng.random() < 0.8:
            fate = fates[self._churn_step % len(fates)]
            self._churn_step += 1
        else:
            fate = self.rng.choice((*fates, "spare"))
        if fate == "isolate":
            self.counts["partition"] += 1
            self._partition_epoch += 1
            others = [n for n in self.ids if n != node.id]
            self.network.partition(f"churn: new leader {node.id} isolated at birth",
                                   _cut([node.id], others))
            self.world.schedule(self.rng.randint(*self.profile.partition_us),
                                self._heal_partition, self._partition_epoch)
        elif fate == "crash-at-commit":
            incarnation = node.incarnation
            down = self.rng.randint(*self.profile.partition_us) + self.rng.randint(
                *self.profile.down_us)

            def at_commit(n: SimNode) -> None:
                if n.incarnation != incarnation or not self.active:
                    return
                self.observe()
                self.world.log(f"NEMESIS churn: crash {n.id} right after it committed "
                               f"{n.raw.raft.log.committed if n.raw else '?'}")
                self.counts["crash"] += 1
                self._crash_now(n.id, incarnation, down)

            node.on_commit.append(at_commit)

    def _vote_hook(self, node: SimNode) -> None:
        """During churn, a node that grants a vote often crashes right after and restarts
        at once, while the election it voted in is still going on: its vote must have
        survived, or a second candidate of the same term can get it too."""
        if not self.active or self.world.now >= self._churn_until:
            return
        node.on_vote.append(self._vote_hook)
        if self.rng.random() < 0.5:
            return
        self.counts["crash"] += 1
        self.world.schedule(self.rng.randint(0, 300), self._crash_now, node.id,
                            node.incarnation, self.rng.randint(50, 2 * US_PER_MS))

    def _crash_one(self) -> None:
        victim = self._pick()
        if victim is None:
            return
        node = self.nodes[victim]
        if not node.up:
            return
        self.counts["crash"] += 1
        down = self.rng.randint(*self.profile.down_us)
        if self.rng.random() < self.profile.crash_mid_write:
            incarnation = node.incarnation

            def during_write(latency: int) -> None:
                at = self.rng.randint(0, max(0, latency - 1))
                self.world.schedule(at, self._crash_now, victim, incarnation, down)

            node.disk.on_next_write.append(during_write)
            self.world.log(f"NEMESIS arms a crash of {victim} during its next write")
        else:
            self._crash_now(victim, node.incarnation, down)

    def _crash_now(self, victim: str, incarnation: int, down_us: int) -> None:
        node = self.nodes[victim]
        if not self.active or not node.up or node.incarnation != incarnation:
            return
        node.crash()
        self.world.schedule(down_us, self._restart, victim)

    def _restart(self, victim: str) -> None:
        node = self.nodes[victim]
        if not node.up and node.in_service:
            node.start()

    # -- resync ----------------------------------------------------------------------------

    def _wipe(self) -> None:
        """An operator rebuilds a follower (`kvstore cluster resync`): kill it, replace its
        data dir by an empty one marked RESYNC, start it. As the README tells operators,
        only while the cluster has a leader and the node is its follower in the leader's
        term: a node that forgot its vote must not have voted in a later term (it never
        votes again before a leader reaches it)."""
        leader = self._leader()
        if leader is None or any(n.disk.resync_marker for n in self.nodes.values()):
            return  # one rebuild at a time, as an operator would
        term = self.nodes[leader].disk.store.initial_state().term
        followers = [n for n in self.ids if n != leader and self.nodes[n].up
                     and self.nodes[n].disk.store.initial_state().term == term]
        if not followers:
            return
        victim = self.rng.choice(followers)
        node = self.nodes[victim]
        self.counts["wipe"] += 1
        self.world.log(f"NEMESIS wipes {victim} (resync)")
        node.crash()
        node.disk.wipe()
        self._on_wipe(victim)
        self.world.schedule(self.rng.randint(*self.profile.down_us), self._restart, victim)

    # -- slow nodes --------------------------------------------------------------------

    def _slow(self) -> None:
        victim = self._pick(up_only=False)
        if victim is None:
            return
        node = self.nodes[victim]
        length = self.rng.randint(*self.profile.slow_us)
        mode = self.rng.choice(("disk", "stall", "ticks"))
        self.counts["slow"] += 1
        if mode == "disk":
            node.disk.slow_factor = self.rng.randint(5, 30)
            self.world.log(f"SLOW disk of {victim} x{node.disk.slow_factor}")
        elif mode == "stall":
            node.timing.stalled_until = max(node.timing.stalled_until, self.world.now + length)
            self.world.log(f"STALL {victim} for {length / US_PER_MS:.0f}ms")
            return
        else:
            node.timing.tick_factor = self.rng.randint(2, 4)
            self.world.log(f"SLOW ticks of {victim} x{node.timing.tick_factor}")
        self.world.schedule(length, self._unslow, victim)

    def _unslow(self, victim: str) -> None:
        node = self.nodes[victim]
        node.disk.slow_factor = 1
        node.timing.tick_factor = 1

    # -- the end -----------------------------------------------------------------------

    def heal_all(self) -> None:
        """Stop injecting, heal the network, restart every node, make every node fast."""
        self.active = False
        self._partition_epoch += 1
        self.network.heal()
        for n in self.ids:
            node = self.nodes[n]
            node.disk.slow_factor = 1
            node.disk.on_next_write = []
            node.on_leader = []
            node.on_commit = []
            node.on_vote = []
            node.timing.tick_factor = 1
            node.timing.stalled_until = 0
            if not node.up and node.in_service:
                node.start()


def _cut(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    return [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]
