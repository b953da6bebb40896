"""The nemesis: a seeded schedule of faults, and the thread that carries it out.

The schedule is a pure function of (seed, kinds, seconds, nodes), so a failing seed
names the same sequence of faults when run again. Which node a fault hits is only
known when it starts (the leader moves), so each fault carries a ``pick`` that seeds
its own choices, and the executed log records what was actually hit and when.

By default one fault at a time, each healed before the next: overlapping faults make
a failure hard to explain, and the quiet gaps let the cluster recover so that the
following fault meets a working leader (the interesting case for "kill the leader").
With ``overlap`` the schedule has two independent lanes, process faults (kill, pause)
and network faults (partitions), so that e.g. a node is killed while partitioned, or a
partition heals while a majority is paused. Partitions compose: the links cut at any
moment are the union of the active network faults' links, and both ends of a link are
told, so a restarted node (which forgets its settings) cannot heal a cut by itself.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults.nodes import DrillCluster

KILL, PAUSE, ISOLATE, SPLIT, ONE_WAY, BRIDGE = (
    "kill", "pause", "isolate", "split", "one-way", "bridge",
)  # fmt: skip
# A majority down at once: no quorum, so writes in flight can neither commit nor be
# refused; their clients time out ("unknown") and the writes may commit after recovery,
# which the checker must then be able to place. kill-majority also restarts most of the
# cluster from disk at once: the test of "nothing acknowledged is ever lost".
KILL_MAJORITY, PAUSE_MAJORITY = "kill-majority", "pause-majority"
KINDS: tuple[str, ...] = (
    KILL, PAUSE, ISOLATE, SPLIT, ONE_WAY, BRIDGE, KILL_MAJORITY, PAUSE_MAJORITY,
)  # fmt: skip

# How long each kind of fault lasts (seconds). Short pauses/kills (below an election
# timeout of 300-600 ms) bring an old leader back before anyone noticed; long ones force
# an election and a catch-up.
DURATIONS: dict[str, tuple[float, float]] = {
    KILL: (0.3, 3.0),
    PAUSE: (0.3, 4.0),
    ISOLATE: (1.5, 5.0),
    SPLIT: (1.5, 5.0),
    ONE_WAY: (1.5, 5.0),
    BRIDGE: (2.0, 5.0),
    KILL_MAJORITY: (0.3, 3.0),
    PAUSE_MAJORITY: (0.5, 4.0),
}
GAP = (0.5, 2.5)  # quiet time between faults
WARMUP = (1.0, 2.0)  # let the clients get going before the first fault
LEADER_BIAS = 0.6  # share of faults aimed at the current leader

PROCESS_KINDS = frozenset({KILL, PAUSE, KILL_MAJORITY, PAUSE_MAJORITY})

Link = tuple[str, str]  # (src, dst): Raft messages from src to dst are dropped


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault: what, when (seconds after the nemesis starts), how long."""

    at: float
    kind: str
    duration: float
    at_leader: bool  # aim at the leader as known when the fault starts
    pick: int  # seeds this fault's own choices (victims, sides, direction)
    lane: int = 0  # faults of one lane run one after the other; lanes run side by side

    def describe(self) -> str:
        target = "leader" if self.at_leader else "any"
        lane = f" lane={self.lane}" if self.lane else ""
        return f"t+{self.at:5.1f}s {self.kind:<14} {self.duration:4.1f}s target={target}{lane}"


def plan(seed: int, kinds: tuple[str, ...], seconds: float, overlap: bool = False) -> list[Fault]:
    """The schedule for a run of ``seconds``: faults from ``kinds``, separated by gaps.

    With ``overlap``, process faults and network faults are planned on two lanes of
    their own (each with its own random stream), which then overlap in time.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown nemesis kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    if not overlap:
        return _lane(random.Random(f"nemesis-{seed}"), kinds, seconds, 0)
    process = tuple(k for k in kinds if k in PROCESS_KINDS)
    network = tuple(k for k in kinds if k not in PROCESS_KINDS)
    lanes = [lane for lane in (process, network) if lane]
    faults = [
        fault
        for i, lane in enumerate(lanes)
        for fault in _lane(random.Random(f"nemesis-{seed}-lane{i}"), lane, seconds, i)
    ]
    return sorted(faults, key=lambda f: (f.at, f.lane))


def _lane(rng: random.Random, kinds: tuple[str, ...], seconds: float, lane: int) -> list[Fault]:
    faults: list[Fault] = []
    t = rng.uniform(*WARMUP)
    while True:
        kind = rng.choice(kinds)
        duration = round(rng.uniform(*DURATIONS[kind]), 2)
        if t + duration > seconds:
            break
        at_leader, pick = rng.random() < LEADER_BIAS, rng.randrange(1 << 32)
        faults.append(Fault(round(t, 2), kind, duration, at_leader, pick, lane))
        t += duration + rng.uniform(*GAP)
    return faults


def majority(ids: list[str], leader: str | None, at_leader: bool, rng: random.Random) -> list[str]:
    """A majority of ``ids``: with the leader if aimed at it, else without it if possible
    (then the leader stays up but cannot commit, and must step down)."""
    size = len(ids) // 2 + 1
    if leader and at_leader:
        return [leader, *rng.sample([n for n in ids if n != leader], size - 1)]
    pool = [n for n in ids if n != leader]
    if len(pool) < size:
        pool = list(ids)
    return rng.sample(pool, size)


def partition_links(
    kind: str, ids: list[str], leader: str | None, at_leader: bool, rng: random.Random
) -> tuple[set[Link], str]:
    """The directed links a partition fault cuts, and a description of its shape.

    isolate: one node (the leader, if aimed at it) cut off both ways.
    split: a minority cut off from the majority both ways; the leader on the minority
      side if aimed at it (it must step down and a new one be elected), else on the
      majority side (the minority must not disturb it).
    one-way: one node's messages are dropped in one direction only (it cannot send, or
      it cannot hear), the classic source of disruptive elections and of leaders that
      keep their lease while nobody hears them.
    bridge: two halves that cannot talk, both connected to a middle node that sees
      everyone; each half plus the bridge is a majority (Jepsen's "bridge").
    """
    others = [n for n in ids if n != leader] if leader else list(ids)
    if kind in (ISOLATE, ONE_WAY):
        victim = leader if at_leader and leader else rng.choice(ids)
        rest = [n for n in ids if n != victim]
        if kind == ISOLATE:
            links = {(victim, n) for n in rest} | {(n, victim) for n in rest}
            return links, f"isolated {victim}"
        if rng.random() < 0.5:
            return {(victim, n) for n in rest}, f"{victim} cannot send to anyone (one-way out)"
        return {(n, victim) for n in rest}, f"{victim} hears nobody (one-way in)"
    if kind == SPLIT:
        size = (len(ids) - 1) // 2
        if at_leader and leader:
            minority = [leader, *rng.sample(others, size - 1)]
        else:
            minority = rng.sample(others, size)
        majority = [n for n in ids if n not in minority]
        links = {(a, b) for a in minority for b in majority}
        links |= {(b, a) for a, b in links}
        return links, f"split {sorted(minority)} | {sorted(majority)}"
    if kind == BRIDGE:
        order = list(ids)
        rng.shuffle(order)
        if leader and at_leader:
            # Put the leader on one side, not on the bridge, so it loses half its followers.
            order.remove(leader)
            order.insert(0, leader)
        half = (len(ids) - 1) // 2
        left, bridge, right = order[:half], order[half], order[half + 1 :]
        links = {(a, b) for a in left for b in right}
        links |= {(b, a) for a, b in links}
        return links, f"bridge {sorted(left)} - {bridge} - {sorted(right)}"
    raise ValueError(f"{kind} is not a partition")


@dataclass
class Nemesis:
    """Runs a schedule against a :class:`DrillCluster` in a background thread.

    Every fault is healed before the next one starts, and at once when :meth:`stop`
    is called; :meth:`heal_all` (called after the thread ends) undoes anything that a
    failed heal may have left behind.
    """

    cluster: DrillCluster
    faults: list[Fault]
    sink: Callable[[str], None] | None = None  # also gets every event (the drill's log)
    events: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _t0: float = 0.0
    _cuts: dict[int, set[Link]] = field(default_factory=dict)  # active partitions by id
    _cut_lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, text: str) -> None:
        self.events.append(f"t+{time.monotonic() - self._t0:6.2f}s {text}")
        if self.sink is not None:
            self.sink(text)

    def start(self) -> None:
        self._t0 = time.monotonic()
        for lane in sorted({f.lane for f in self.faults}):
            faults = [f for f in self.faults if f.lane == lane]
            thread = threading.Thread(
                target=self._run, args=(faults,), name=f"nemesis-{lane}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait for the schedule to finish; True if it did."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 60.0) -> bool:
        self._stop.set()
        return self.wait(timeout)

    def _run(self, faults: list[Fault]) -> None:
        for fault in faults:
            delay = self._t0 + fault.at - time.monotonic()
            if self._stop.wait(max(0.0, delay)):
                return
            heal: Callable[[], str] | None = None
            try:
                heal = self._inject(fault)
            except Exception as exc:  # a failed injection is logged, not fatal
                self._error(f"{fault.kind} failed to start: {exc!r}")
            self._stop.wait(fault.duration)
            if heal is not None:
                try:
                    self.log(heal())
                except Exception as exc:
                    self._error(f"{fault.kind} failed to heal: {exc!r}")
        self.log("schedule done" if len(self._threads) == 1 else "a lane's schedule done")

    def _error(self, text: str) -> None:
        self.errors.append(text)
        self.log(f"ERROR {text}")

    def _inject(self, fault: Fault) -> Callable[[], str]:
        rng = random.Random(fault.pick)
        ids = self.cluster.ids
        try:
            leader = self.cluster.leader()
        except Exception:
            leader = None
        aim = f"(leader {leader or 'unknown'})"
        if fault.kind in (KILL_MAJORITY, PAUSE_MAJORITY):
            victims = majority(ids, leader, fault.at_leader, rng)
            if fault.kind == KILL_MAJORITY:
                self.log("; ".join(self.cluster.kill(v) for v in victims) + f" {aim}")
                return lambda: "; ".join(self.cluster.start(v) for v in victims)
            self.log("; ".join(self.cluster.pause(v) for v in victims) + f" {aim}")
            return lambda: "; ".join(self.cluster.resume(v) for v in victims)
        if fault.kind in (KILL, PAUSE):
            victim = leader if fault.at_leader and leader else rng.choice(ids)
            if fault.kind == KILL:
                self.log(f"{self.cluster.kill(victim)} {aim}")
                return lambda: self.cluster.start(victim)
            self.log(f"{self.cluster.pause(victim)} {aim}")
            return lambda: self.cluster.resume(victim)
        links, shape = partition_links(fault.kind, ids, leader, fault.at_leader, rng)
        missed = self._set_cut(id(fault), links)
        self.log(
            f"{fault.kind}: {shape} {aim}"
            + (f"; could not tell {', '.join(missed)}" if missed else "")
        )

        def heal() -> str:
            missed = self._set_cut(id(fault), None)
            if missed:
                raise RuntimeError(f"could not heal {', '.join(missed)}")
            return f"healed {fault.kind}: {shape}"

        return heal

    def _set_cut(self, key: int, links: set[Link] | None) -> list[str]:
        """Start (links) or end (None) one partition; every node gets the union of the
        active partitions' links."""
        with self._cut_lock:
            if links is None:
                self._cuts.pop(key, None)
            else:
                self._cuts[key] = links
            return self.cluster.cut(set().union(*self._cuts.values()))


def heal_all(cluster: DrillCluster, deadline: float, log: Callable[[str], None]) -> list[str]:
    """Resume paused nodes, restart dead ones, clear every partition; returns what failed.

    Retries until ``deadline``: a node that was just restarted may not serve Admin yet.
    """
    for line in cluster.resume_all():
        log(line)
    problems: list[str] = []
    while True:
        problems = []
        for node_id in cluster.ids:
            if not cluster.running(node_id):
                try:
                    log(cluster.start(node_id))
                except Exception as exc:
                    problems.append(f"{node_id} does not restart: {exc}")
        missed = cluster.cut(set())
        problems += [f"cannot clear faults on {m}" for m in missed]
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.2)
