"""Fuzz: random and mutated peer messages thrown at one node of a running 3-node cluster.

Each example starts the same in-memory cluster (three NodeRuntimes over MemoryNodeStore, plans
carried out synchronously with execute_write, messages routed in rounds), lets it elect a
leader and commit a few writes, then interleaves honest progress (ticks, writes, message
rounds) with attacks on one target node: messages taken from what the cluster really sent
and then mutated (random fields, huge terms and indexes, unknown senders, wrong dst, other
types, broken entry sequences), wholly random messages, and snapshot streams claiming any
sender and term.

What must hold, whatever arrives:
  * nothing raises (deliver() refuses, deliver_snapshot() raises only ValueError);
  * a message from a non-member, to someone else, or with a term past MAX_TERM is refused;
  * no node's term, in memory or durable, passes MAX_TERM (the hard-state format's room);
  * the target leads a term only with grants from a majority of the configured voters;
  * a snapshot is accepted only from the leader the target follows, in its term;
  * no node ever changes an entry it has applied (the committed prefix is final), nor
    acknowledges an index its log does not reach;
  * while no forged message using a member's id was accepted, the whole cluster stays safe:
    one leader per term, and every node applies the same entry at each index. (A well-formed
    message that claims a member's id cannot be told from one that member sent: that is
    for the transport's peer authentication, not for input validation.)

Deterministic: derandomize=True and no example database, so every run tries the same examples.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.raft.types import Entry, EntryType, Message, MessageType, Role
from kvstore.server import peer_checks
from kvstore.server.runtime import NodeRuntime, execute_write
from kvstore.state import commands
from kvstore.storage.memory_store import MemoryNodeStore

IDS = ("n1", "n2", "n3")
MT = MessageType
INT_FIELDS = ("term", "index", "log_term", "commit", "reject_hint", "hint_term", "context")
HUGE = [2**64 - 1, 2**63, 2**62 + 1, 2**62, 2**40 + 1, 2**40, peer_checks.TERM_WINDOW + 7]


class _Waiter:
    """A waiter nobody awaits (the fuzz checks the cluster, not the answers)."""

    def __init__(self) -> None:
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        self._done = True

    def set_exception(self, exc: BaseException) -> None:
        self._done = True


class Cluster:
    """Three runtimes over MemoryNodeStore with synchronous plans and message rounds, and the
    bookkeeping the checks need."""

    def __init__(self, target: str, pre_vote: bool = True) -> None:
        self.target = target
        self.nodes = {
            i: NodeRuntime(i, IDS, MemoryNodeStore(shards=2, vnodes=8),
                           random.Random(f"fuzz-{i}"), election_ticks=3,
                           can_send_snapshots=False, raft_options={"pre_vote": pre_vote})
            for i in IDS
        }
        self.in_flight: list[Message] = []
        self.sent: set[Message] = set()  # every message an honest node sent (replays are honest)
        self.recent: list[Message] = []  # the latest honest messages to the target
        self.applied: dict[str, dict[int, Entry]] = {i: {} for i in IDS}
        self.leaders: dict[int, set[str]] = {}  # term -> nodes seen leading it
        # Grants the target's runtime accepted: term -> senders.
        self.grants: dict[int, set[str]] = {}
        self.forged_accepted = False
        self.writes = 0

    # -- honest running -------------------------------------------------------------------

    def turn(self, node_id: str) -> None:
        rt = self.nodes[node_id]
        rt.feed()
        while (plan := rt.next_plan()) is not None:
            self._sent(plan.send_now)
            results = execute_write(rt.store, plan) if plan.needs_write else []
            self._sent(plan.send_after)
            for e in plan.ready.committed:
                self._applied(node_id, e)
            rt.finish(plan, results)
            self.observe(node_id)
            for m in plan.send_now + plan.send_after:
                # What a leader counts toward commit must really be in our log.
                if m.type == MT.APP_RESP and not m.reject:
                    assert m.index <= rt.raw.last_index(), (
                        f"{node_id} acknowledged {m.index} holding {rt.raw.last_index()}")

    def _sent(self, msgs: tuple[Message, ...]) -> None:
        self.in_flight.extend(msgs)
        self.sent.update(msgs)

    def _applied(self, node_id: str, e: Entry) -> None:
        before = self.applied[node_id].get(e.index)
        assert before is None or before == e, f"{node_id} applied {e.index} twice differently"
        self.applied[node_id][e.index] = e

    def observe(self, node_id: str) -> None:
        raw = self.nodes[node_id].raw
        assert raw.term <= peer_checks.MAX_TERM
        assert self.nodes[node_id].store.initial_state().term <= peer_checks.MAX_TERM
        if raw.role == Role.LEADER:
            self.leaders.setdefault(raw.term, set()).add(node_id)
            if node_id == self.target:
                voters = self.grants.get(raw.term, set()) | {node_id}
                assert len(voters & set(IDS)) >= 2, (
                    f"{node_id} leads term {raw.term} with grants from {sorted(voters)} only")

    def deliver(self, m: Message, dst: str | None = None) -> bool:
        """Hand `m` to the runtime of `dst` (default: the one it is addressed to)."""
        dst = dst or m.dst
        accepted = self.nodes[dst].deliver(m)
        if accepted and dst == self.target and m.type == MT.VOTE_RESP and not m.reject:
            self.grants.setdefault(m.term, set()).add(m.src)
        return accepted

    def round(self) -> None:
        msgs, self.in_flight = self.in_flight, []
        for m in msgs:
            if m.dst in self.nodes:  # a node that followed a stranger answers it: lost
                self.deliver(m)
        self.recent = ([m for m in msgs if m.dst == self.target] or self.recent)[-20:]
        for i in IDS:
            self.turn(i)

    def isolate(self, rounds: int) -> None:
        """Cut the target off while only its clock runs: it campaigns (the state in which
        forged votes would elect it)."""
        rt = self.nodes[self.target]
        for _ in range(rounds):
            self.in_flight = [m for m in self.in_flight
                              if self.target not in (m.src, m.dst)]
            rt.tick()
            self.turn(self.target)
        self.in_flight = [m for m in self.in_flight if self.target not in (m.src, m.dst)]

    def tick(self, rounds: int) -> None:
        for _ in range(rounds):
            for rt in self.nodes.values():
                rt.tick()
            self.round()

    def write(self) -> None:
        for i in IDS:
            rt = self.nodes[i]
            if rt.role == Role.LEADER:
                self.writes += 1
                key = b"k%d" % (self.writes % 3)
                rt.propose(commands.encode_put(b"", 0, 0, key, b"v%d" % self.writes), _Waiter())
                self.turn(i)

    def warm_up(self) -> None:
        for _ in range(40):
            self.tick(1)
            if any(rt.role == Role.LEADER for rt in self.nodes.values()):
                break
        for _ in range(3):
            self.write()
            self.round()
            self.round()

    # -- attacks --------------------------------------------------------------------------

    def attack(self, m: Message) -> None:
        rt = self.nodes[self.target]
        term = rt.raw.term
        accepted = self.deliver(m, self.target)  # whatever m.dst says
        if m.src not in IDS or m.src == self.target or m.dst != self.target:
            assert not accepted, f"accepted {m} from a non-member or addressed elsewhere"
        if m.term > peer_checks.max_accepted_term(term):
            assert not accepted, f"accepted term {m.term} at term {term}"
        if accepted and m not in self.sent:
            self.forged_accepted = True
        self.turn(self.target)

    def snapshot(self, src: str, term_choice: int) -> None:
        rt = self.nodes[self.target]
        term, leader = rt.raw.term, rt.status().leader
        claimed = {0: term, 1: term + 1, 2: max(term - 1, 0)}.get(term_choice, term_choice)
        source = self.nodes.get(src) or self.nodes.get(leader) or self.nodes["n1"]
        _, data = source.store.export_snapshot()
        try:
            rt.deliver_snapshot(src, claimed, data)
        except ValueError:
            return
        assert src == leader and claimed == term, (
            f"snapshot from {src!r} at term {claimed} accepted by a follower of "
            f"{leader!r} at term {term}")
        self.turn(self.target)

    # -- final checks ---------------------------------------------------------------------

    def check(self) -> None:
        for i in IDS:
            self.observe(i)
            rt = self.nodes[i]
            applied = self.applied[i]
            for index, e in applied.items():  # still in the log: unchanged
                if rt.store.first_index() <= index <= rt.store.last_index():
                    assert rt.store.entries(index, index + 1) == [e], f"{i} changed {index}"
        if self.forged_accepted:
            return
        for term, leaders in self.leaders.items():
            assert len(leaders) == 1, f"two leaders in term {term}: {leaders}"
        merged: dict[int, Entry] = {}
        for i in IDS:
            for index, e in self.applied[i].items():
                assert merged.setdefault(index, e) == e, f"{i} applied another entry {index}"


# -- strategies ---------------------------------------------------------------------------


def _corpus() -> list[Message]:
    """What the warmed-up cluster really sent, in a stable order."""
    c = Cluster("n1")
    c.warm_up()
    c.tick(3)
    return sorted(c.sent, key=repr)


CORPUS = _corpus()
ints = st.one_of(st.integers(0, 12), st.sampled_from(HUGE), st.integers(0, 2**64 - 1),
                 st.integers(-3, -1))
senders = st.sampled_from([*IDS, "intruder", "", "n4"])


def _entries_op() -> st.SearchStrategy[Callable[[tuple[Entry, ...]], tuple[Entry, ...]]]:
    def drop(i: int) -> Callable[[tuple[Entry, ...]], tuple[Entry, ...]]:
        return lambda es: es[:i] + es[i + 1:]

    def shift(k: int) -> Callable[[tuple[Entry, ...]], tuple[Entry, ...]]:
        return lambda es: tuple(dataclasses.replace(e, index=e.index + k) for e in es)

    def set_term(i: int, t: int) -> Callable[[tuple[Entry, ...]], tuple[Entry, ...]]:
        return lambda es: tuple(dataclasses.replace(e, term=t) if n == i else e
                                for n, e in enumerate(es))

    def extend(terms: list[int]) -> Callable[[tuple[Entry, ...]], tuple[Entry, ...]]:
        def op(es: tuple[Entry, ...]) -> tuple[Entry, ...]:
            nxt = es[-1].index + 1 if es else 1
            return es + tuple(Entry(t, nxt + n, EntryType.NOOP) for n, t in enumerate(terms))
        return op

    return st.one_of(
        st.integers(0, 3).map(drop),
        st.sampled_from([-2, -1, 1, 2, 2**62]).map(shift),
        st.builds(set_term, st.integers(0, 3), ints),
        st.lists(st.integers(0, 6), min_size=1, max_size=3).map(extend),
        st.just(lambda es: tuple(reversed(es))),
        st.just(lambda es: es + es[-1:]),
    )


def mutation() -> st.SearchStrategy[Callable[[Message], Message]]:
    def set_field(name: str, value: int) -> Callable[[Message], Message]:
        return lambda m: dataclasses.replace(m, **{name: value})

    def nudge(name: str, k: int) -> Callable[[Message], Message]:
        return lambda m: dataclasses.replace(m, **{name: max(getattr(m, name) + k, 0)})

    def entries(op: Callable[[tuple[Entry, ...]], tuple[Entry, ...]]) \
            -> Callable[[Message], Message]:
        return lambda m: dataclasses.replace(m, entries=op(m.entries))

    return st.one_of(
        st.builds(set_field, st.sampled_from(INT_FIELDS), ints),
        st.builds(nudge, st.sampled_from(INT_FIELDS), st.integers(-2, 3)),
        st.sampled_from([peer_checks.TERM_WINDOW, peer_checks.TERM_WINDOW + 1]).map(
            lambda k: nudge("term", k)),
        senders.map(lambda s: lambda m: dataclasses.replace(m, src=s)),
        st.sampled_from([*IDS, "x"]).map(lambda d: lambda m: dataclasses.replace(m, dst=d)),
        st.sampled_from(list(MessageType)).map(
            lambda t: lambda m: dataclasses.replace(m, type=t)),
        st.just(lambda m: dataclasses.replace(m, reject=not m.reject)),
        st.just(lambda m: dataclasses.replace(m, rebuilding=not m.rebuilding)),
        _entries_op().map(entries),
    )


def mutated(data: st.DataObject, c: Cluster) -> Message:
    """A message the cluster really sent (lately to the target, or any earlier one), with
    one to three mutations."""
    pool = c.recent if c.recent and data.draw(st.booleans()) else CORPUS
    base = data.draw(st.sampled_from(pool))
    if data.draw(st.booleans()):
        base = dataclasses.replace(base, dst=c.target)
    for op in data.draw(st.lists(mutation(), min_size=1, max_size=3)):
        base = op(base)
    return base


FITTING = {Role.FOLLOWER: MT.APP, Role.PRE_CANDIDATE: MT.PRE_VOTE_RESP,
           Role.CANDIDATE: MT.VOTE_RESP, Role.LEADER: MT.APP_RESP}


def plausible(data: st.DataObject, c: Cluster) -> Message:
    """A message shaped to pass the cheap checks against the target's current state (a
    member's id, terms and indexes near its own), so the core's own rules are probed."""
    raw = c.nodes[c.target].raw
    # Half of them are what the target's role waits for: answers to its campaign or to its
    # appends, or appends and heartbeats.
    kind = data.draw(st.sampled_from(sorted(peer_checks.PEER_TYPES)
                                     + [FITTING[raw.role]] * 8))
    shift = 1 if kind == MT.PRE_VOTE_RESP and data.draw(st.booleans()) else 0
    term = max(raw.term + shift + data.draw(st.sampled_from([0, 0, 0, -1, 1, 2])), 0)
    last = raw.last_index()
    index = max(last + data.draw(st.sampled_from([1, 0, -1, 2, -3])), 0)
    log_term = max(term - data.draw(st.integers(0, 2)), 0)
    n = data.draw(st.integers(0, 3))
    terms = sorted(data.draw(st.lists(st.integers(log_term, term), min_size=n, max_size=n)))
    entries = tuple(Entry(t, index + 1 + k) for k, t in enumerate(terms))
    if data.draw(st.booleans()):  # and now break the sequence
        entries = data.draw(_entries_op())(entries)
    return Message(
        kind, data.draw(st.sampled_from(["intruder", *(p for p in IDS if p != c.target)])),
        c.target, term, log_term=log_term, index=index,
        entries=entries if kind == MT.APP else (),
        commit=max(last + data.draw(st.integers(-2, 3)), 0),
        reject=data.draw(st.sampled_from([False, False, True])),
        reject_hint=max(index + data.draw(st.integers(-3, 1)), 0),
        hint_term=data.draw(st.integers(0, term + 1)),
        context=data.draw(st.sampled_from([0, 1, 2, 5, 2**62])),
        rebuilding=data.draw(st.booleans()))


def random_message(target: str) -> st.SearchStrategy[Message]:
    entry = st.builds(Entry, ints, ints, st.sampled_from(list(EntryType)), st.binary(max_size=4))
    return st.builds(
        Message, st.sampled_from(list(MessageType)), senders,
        st.sampled_from([target, target, "x"]), ints, log_term=ints, index=ints,
        entries=st.lists(entry, max_size=3).map(tuple), commit=ints, reject=st.booleans(),
        reject_hint=ints, hint_term=ints, context=ints, rebuilding=st.booleans())


ACTIONS = ["mutated", "mutated", "plausible", "plausible", "random", "tick", "write",
           "isolate", "snap"]


def run_scenario(data: st.DataObject) -> Cluster:
    c = Cluster(data.draw(st.sampled_from(IDS)), pre_vote=data.draw(st.booleans()))
    c.warm_up()
    for _ in range(data.draw(st.integers(1, 14))):
        kind = data.draw(st.sampled_from(ACTIONS))
        if kind == "mutated":
            c.attack(mutated(data, c))
        elif kind == "plausible":
            c.attack(plausible(data, c))
        elif kind == "random":
            c.attack(data.draw(random_message(c.target)))
        elif kind == "tick":
            c.tick(data.draw(st.integers(1, 4)))
        elif kind == "write":
            c.write()
        elif kind == "isolate":
            c.isolate(data.draw(st.integers(1, 8)))
        else:
            c.snapshot(data.draw(senders), data.draw(st.sampled_from([0, 1, 2, 2**40 + 1])))
        c.round()
    c.tick(12)  # let the cluster settle, then check everything it did
    c.check()
    return c


@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_no_peer_input_crashes_a_node_or_breaks_safety(data: st.DataObject) -> None:
    run_scenario(data)


def test_the_corpus_has_every_kind_of_message() -> None:
    """The mutations start from real traffic of each kind, entries included."""
    kinds = {m.type for m in CORPUS}
    assert kinds >= {MT.APP, MT.APP_RESP, MT.HEARTBEAT, MT.HEARTBEAT_RESP, MT.VOTE_RESP}
    assert any(m.entries for m in CORPUS)
