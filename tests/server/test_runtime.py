"""The node runtime's rules, driven by hand over MemoryNodeStore (no asyncio, no disk).

The simulator exercises these rules under faults; these tests pin the individual rules and
the bugs found in the old driver (a forged SNAP message crashed it with a KeyError)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvstore.raft.errors import NotLeader
from kvstore.raft.types import Entry, Message, MessageType, Role
from kvstore.server import peer_checks
from kvstore.server.outcomes import AlarmRefused, LeadershipLost, SessionExpired
from kvstore.server.runtime import NodeRuntime, Plan, execute_write
from kvstore.state import commands
from kvstore.storage.memory_store import MemoryNodeStore


class Box:
    """A waiter that records its outcome."""

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        assert not self._done
        self._done, self.result = True, result

    def set_exception(self, exc: BaseException) -> None:
        assert not self._done
        self._done, self.error = True, exc


def run_turns(rt: NodeRuntime, sent: list[Message] | None = None, turns: int = 50) -> None:
    """Carry out plans the way a shell does, writing synchronously."""
    for _ in range(turns):
        rt.feed()
        while (plan := rt.next_plan()) is not None:
            if sent is not None:
                sent.extend(plan.send_now)
            results = execute_write(rt.store, plan) if plan.needs_write else []
            if sent is not None:
                sent.extend(plan.send_after)
            rt.finish(plan, results)
        if not rt.wants_turn():
            break


def single_leader(**kwargs: Any) -> NodeRuntime:
    rt = NodeRuntime("n1", ["n1"], MemoryNodeStore(shards=4, vnodes=16),
                     random.Random(1), election_ticks=2, **kwargs)
    for _ in range(10):
        rt.tick()
        run_turns(rt)
        if rt.role == Role.LEADER and rt.status().commit >= 1:
            return rt
    raise AssertionError("no leader")


def put(key: bytes, value: bytes, seq: int = 1, client_id: bytes = b"") -> bytes:
    """A put; by default without a session (these tests are not about exactly-once)."""
    return commands.encode_put(client_id, seq, seq, key, value)


def test_proposals_of_a_turn_become_one_batch_and_are_answered_by_index() -> None:
    rt = single_leader()
    boxes = [Box() for _ in range(3)]
    for i, box in enumerate(boxes):
        rt.propose(put(b"k", b"v%d" % i, seq=i + 1), box)
    rt.feed()
    plan = rt.next_plan()
    assert plan is not None and [e.index for e in plan.ready.entries] == [2, 3, 4]
    rt.finish(plan, execute_write(rt.store, plan))
    run_turns(rt)
    assert [b.result.index for b in boxes] == [2, 3, 4]
    assert rt.store.get(b"k")[:2] == (True, b"v2")


def test_registrations_and_writes_in_missing_sessions_are_answered() -> None:
    rt = single_leader()
    register, write, stray = Box(), Box(), Box()
    rt.propose(commands.encode_register(), register)
    run_turns(rt)
    client_id = register.result.client_id
    assert register.result.registered and client_id == b"s" + (2).to_bytes(8, "big")
    rt.propose(put(b"k", b"v", client_id=client_id), write)
    rt.propose(put(b"k", b"w", client_id=b"s" + (99).to_bytes(8, "big")), stray)
    run_turns(rt)
    assert write.result.ok and not write.result.expired
    assert isinstance(stray.error, SessionExpired)  # NOT_FOUND for the client
    assert rt.store.get(b"k")[:2] == (True, b"v")


def test_a_follower_refuses_proposals_and_reads_at_once() -> None:
    rt = NodeRuntime("n1", ["n1", "n2", "n3"], MemoryNodeStore(), random.Random(1))
    write, read = Box(), Box()
    rt.propose(put(b"k", b"v"), write)
    rt.read_index(read)
    assert isinstance(write.error, NotLeader) and isinstance(read.error, NotLeader)


def test_linearizable_read_waits_for_apply() -> None:
    rt = single_leader()
    box = Box()
    rt.read_index(box)
    run_turns(rt)
    assert box.result == rt.applied_index


def test_forged_snap_message_is_refused_and_the_node_keeps_serving() -> None:
    """The old driver raised KeyError on a Ready naming a snapshot that was never staged."""
    rt = single_leader()
    forged = Message(MessageType.SNAP, "n2", "n1", 99, log_term=99, index=1000)
    assert rt.deliver(forged) is False
    assert rt.deliver(Message(MessageType.HEARTBEAT, "n2", "n9", 1)) is False  # not for us
    box = Box()
    rt.propose(put(b"k", b"v"), box)
    run_turns(rt)
    assert box.result is not None and rt.status().term < 99


def following(leader: str = "n1", term: int = 1, node_id: str = "n2",
              store: MemoryNodeStore | None = None, resyncing: bool = False) -> NodeRuntime:
    """A follower in a 3-node cluster that has heard `leader`'s heartbeat at `term`: the
    only state in which it accepts a snapshot (a leader probes before it sends one)."""
    rt = NodeRuntime(node_id, ["n1", "n2", "n3"], store or MemoryNodeStore(shards=4, vnodes=16),
                     random.Random(1), resyncing=resyncing)
    assert rt.deliver(Message(MessageType.HEARTBEAT, leader, node_id, term))
    run_turns(rt)
    assert rt.status().leader == leader and rt.term == term
    return rt


def test_damaged_snapshot_is_refused() -> None:
    rt = following("n1", 5)
    leader = single_leader()
    _, data = leader.store.export_snapshot()
    bad = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(ValueError, match="rejected: .*checksum"):
        rt.deliver_snapshot("n1", 5, bad)
    assert not rt.has_inputs()


def test_snapshot_data_travels_with_the_plan_and_is_installed() -> None:
    leader = single_leader()
    box = Box()
    leader.propose(put(b"k", b"v"), box)
    run_turns(leader)
    meta, data = leader.store.export_snapshot()
    follower_store = MemoryNodeStore(shards=4, vnodes=16)
    rt = following("n1", 1, store=follower_store)
    rt.deliver_snapshot("n1", 1, data)
    sent: list[Message] = []
    run_turns(rt, sent)
    assert rt.applied_index == meta.index
    assert follower_store.get(b"k")[:2] == (True, b"v")
    acks = [m for m in sent if m.type == MessageType.APP_RESP]
    assert acks and acks[-1].index == meta.index


def test_step_down_fails_everything_waiting() -> None:
    rt = NodeRuntime("n1", ["n1", "n2", "n3"], MemoryNodeStore(), random.Random(3),
                     election_ticks=2, raft_options={"pre_vote": False})
    sent: list[Message] = []
    for _ in range(10):
        rt.tick()
        run_turns(rt, sent)
    votes = [m for m in sent if m.type == MessageType.VOTE]
    assert votes
    term = votes[-1].term
    for peer in ("n2", "n3"):
        rt.deliver(Message(MessageType.VOTE_RESP, peer, "n1", term))
    run_turns(rt, sent)
    assert rt.role == Role.LEADER
    write, read = Box(), Box()
    rt.propose(put(b"k", b"v"), write)
    rt.read_index(read)
    run_turns(rt, sent)
    # A higher term appears: the leader steps down and every waiter fails.
    rt.deliver(Message(MessageType.HEARTBEAT, "n2", "n1", term + 1))
    run_turns(rt, sent)
    assert rt.role == Role.FOLLOWER
    assert isinstance(write.error, LeadershipLost)
    assert isinstance(read.error, LeadershipLost)


def _leader_of_three(rt: NodeRuntime) -> list[Message]:
    sent: list[Message] = []
    for _ in range(10):
        rt.tick()
        run_turns(rt, sent)
        votes = [m for m in sent if m.type == MessageType.VOTE]
        if votes:
            for peer in ("n2", "n3"):
                rt.deliver(Message(MessageType.VOTE_RESP, peer, "n1", votes[-1].term))
            run_turns(rt, sent)
            break
    assert rt.role == Role.LEADER
    return sent


def test_one_snapshot_stream_per_peer_and_failure_without_a_sender() -> None:
    for can_send in (True, False):
        store = MemoryNodeStore(shards=4, vnodes=16)
        rt = NodeRuntime("n1", ["n1", "n2", "n3"], store, random.Random(3),
                         election_ticks=2, can_send_snapshots=can_send,
                         raft_options={"pre_vote": False})
        sent = _leader_of_three(rt)
        term = rt.status().term
        for i in range(5):
            rt.propose(put(b"k", b"v%d" % i, seq=i + 1), Box())
            run_turns(rt, sent)
            rt.deliver(Message(MessageType.APP_RESP, "n2", "n1", term,
                               index=rt.status().last_index))
            run_turns(rt, sent)
        store.compact(rt.applied_index - 1)
        probe = [m for m in sent if m.type == MessageType.APP and m.dst == "n3"][-1]
        plans: list[Plan] = []
        for _ in range(4):  # n3 lacks everything; repeated answers must not start streams
            rt.deliver(Message(MessageType.APP_RESP, "n3", "n1", term, index=probe.index,
                               reject=True, reject_hint=0))
            rt.feed()
            while (plan := rt.next_plan()) is not None:
                plans.append(plan)
                rt.finish(plan, execute_write(store, plan) if plan.needs_write else [])
        streams = [p for plan in plans for p in plan.snapshot_to]
        if can_send:
            assert streams == [("n3", term)]  # one stream, however often it is asked for
            rt.snapshot_sent("n3", rt.applied_index)
            assert rt.has_inputs()
        else:
            assert streams == []
            # reported failed at once: the core went back to probing (and asks again later)
            assert rt.status().progress["n3"].state == "probe"


def test_compaction_is_due_after_snapshot_entries_applied_entries() -> None:
    rt = single_leader(snapshot_entries=10)
    assert rt.compaction_due() is None
    for i in range(12):
        rt.propose(put(b"k", b"v", seq=i + 1), Box())
        run_turns(rt)
    upto = rt.compaction_due()
    assert upto == rt.applied_index - 2
    rt.store.compact(upto)
    assert rt.compaction_due() is None


def test_a_leader_past_its_quota_raises_nospace_through_the_log() -> None:
    rt = single_leader(quota_bytes=1)  # any data is past a quota of one byte
    first = Box()
    rt.propose(commands.encode_register(), first)
    run_turns(rt)
    run_turns(rt)  # the alarm proposal queued by the apply goes out and applies
    assert [(a.name, a.member) for a in rt.store.alarms()] == [("NOSPACE", "n1")]
    refused = Box()
    rt.propose(commands.encode_put(first.result.client_id, 1, 1, b"k", b"v"), refused)
    run_turns(rt)
    assert isinstance(refused.error, AlarmRefused) and rt.store.get(b"k")[0] is False
    # raised once: more applies do not propose it again
    rt.propose(commands.encode_delete(first.result.client_id, 2, 2, b"k"), Box())
    run_turns(rt)
    run_turns(rt)
    assert len(rt.store.alarms()) == 1


# -- nothing on the wire is trusted --------------------------------------------------------


def _logged_runtime(node_id: str = "n1", **kwargs: Any) -> tuple[NodeRuntime, list[str]]:
    lines: list[str] = []
    rt = NodeRuntime(node_id, ["n1", "n2", "n3"], MemoryNodeStore(shards=4, vnodes=16),
                     random.Random(3), election_ticks=2, log=lines.append, **kwargs)
    return rt, lines


def test_a_vote_from_a_non_member_is_refused_and_logged() -> None:
    """A 3-node candidate used to become leader after one VOTE_RESP from "intruder"."""
    rt, lines = _logged_runtime(raft_options={"pre_vote": False})
    sent: list[Message] = []
    for _ in range(10):
        rt.tick()
        run_turns(rt, sent)
        if rt.role == Role.CANDIDATE:
            break
    term = rt.term
    for stranger in ("intruder", "n1", ""):  # nor may anyone speak for us
        assert rt.deliver(Message(MessageType.VOTE_RESP, stranger, "n1", term)) is False
    run_turns(rt, sent)
    assert rt.role == Role.CANDIDATE
    assert any("refused VOTE_RESP from 'intruder'" in line and "not a member" in line
               for line in lines)
    assert rt.deliver(Message(MessageType.VOTE_RESP, "n2", "n1", term))
    run_turns(rt, sent)
    assert rt.role == Role.LEADER


def test_a_heartbeat_with_an_absurd_term_is_refused_and_elections_still_work() -> None:
    """Term 2**64-1 used to be adopted; the next campaign's term no longer fit the u64 of
    the hard-state format and the node failed on every election."""
    rt, lines = _logged_runtime("n2")
    assert rt.deliver(Message(MessageType.HEARTBEAT, "n1", "n2", 3))
    run_turns(rt)
    for term in (2**64 - 1, 2**62, peer_checks.MAX_TERM + 1, 3 + peer_checks.TERM_WINDOW + 1):
        assert rt.deliver(Message(MessageType.HEARTBEAT, "n1", "n2", term)) is False
    assert rt.deliver(Message(MessageType.VOTE, "n3", "n2", 2**64 - 1, log_term=1)) is False
    run_turns(rt)
    assert rt.term == 3 and rt.store.initial_state().term == 3
    # logged sparingly: the first refused HEARTBEAT from n1 and the first VOTE from n3
    assert sum("beyond the accepted bound" in line for line in lines) == 2
    # Within the window is accepted (and the node keeps campaigning normally after it).
    assert rt.deliver(Message(MessageType.HEARTBEAT, "n1", "n2", 3 + peer_checks.TERM_WINDOW))
    run_turns(rt)
    assert rt.term == 3 + peer_checks.TERM_WINDOW
    sent: list[Message] = []
    for _ in range(10):
        rt.tick()
        run_turns(rt, sent)
    assert [m for m in sent if m.type == MessageType.PRE_VOTE]


def test_a_node_with_no_term_yet_accepts_any_term_up_to_the_bound() -> None:
    """A new or wiped data dir has no term to measure a window from."""
    rt, _ = _logged_runtime("n2", resyncing=True)
    assert rt.deliver(Message(MessageType.HEARTBEAT, "n1", "n2", peer_checks.MAX_TERM + 1)) \
        is False
    assert rt.deliver(Message(MessageType.HEARTBEAT, "n1", "n2", 5_000_000))
    run_turns(rt)
    assert rt.term == 5_000_000 and rt.status().leader == "n1"


def test_an_ack_beyond_the_leaders_log_is_refused() -> None:
    """The core asserted on it (`no term for ... below the last index`)."""
    rt, lines = _logged_runtime(raft_options={"pre_vote": False})
    _leader_of_three(rt)
    term, last = rt.term, rt.status().last_index
    for index in (last + 1, 2**62, 2**64 - 1):
        assert rt.deliver(Message(MessageType.APP_RESP, "n2", "n1", term, index=index)) is False
    assert any("beyond our last index" in line for line in lines)
    assert rt.deliver(Message(MessageType.APP_RESP, "n2", "n1", term, index=last))
    box = Box()
    rt.propose(put(b"k", b"v"), box)
    run_turns(rt)
    rt.deliver(Message(MessageType.APP_RESP, "n2", "n1", term, index=rt.status().last_index))
    run_turns(rt)
    assert box.result is not None


def _app(index: int, log_term: int, entries: list[tuple[int, int]], term: int = 3) -> Message:
    return Message(MessageType.APP, "n1", "n2", term, log_term=log_term, index=index,
                   entries=tuple(Entry(t, i) for i, t in entries))


@pytest.mark.parametrize("msg, reason", [
    (_app(0, 0, [(2, 1), (3, 1)]), "entry 1 has index 2, expected 1"),
    (_app(0, 0, [(1, 1), (3, 1)]), "entry 2 has index 3, expected 2"),
    (_app(0, 0, [(1, 2), (2, 1)]), "entry 2 has term 1, outside [2, 3]"),
    (_app(0, 0, [(1, 4)]), "entry 1 has term 4, outside [0, 3]"),
    (_app(1, 2, [(2, 1)]), "entry 2 has term 1, outside [2, 3]"),
    (_app(0, 4, []), "log term 4 is ahead of the message term 3"),
    (_app(2**62 + 1, 1, []), "index 4611686018427387905 is out of range"),
    (Message(MessageType.HEARTBEAT, "n1", "n2", 3, commit=2**64 - 1), "commit"),
    (Message(MessageType.HEARTBEAT, "n1", "n2", 3, context=2**63), "context"),
    (Message(MessageType.APP_RESP, "n1", "n2", 3, reject=True, reject_hint=2**62 + 1),
     "reject_hint"),
    (Message(MessageType.APP_RESP, "n1", "n2", 3, hint_term=-1), "hint_term"),
    (Message(MessageType.HEARTBEAT_RESP, "n1", "n2", 3, entries=(Entry(3, 1),)),
     "HEARTBEAT_RESP carries entries"),
    (Message(MessageType.HEARTBEAT, "n1", "n3", 3), "addressed to 'n3'"),
    (Message(MessageType.SNAP, "n1", "n2", 3, log_term=3, index=1000),
     "SNAP is not one a peer may send"),
])
def test_malformed_peer_messages_are_refused_with_a_reason(msg: Message, reason: str) -> None:
    rt, lines = _logged_runtime("n2")
    assert rt.deliver(msg) is False
    assert not rt.has_inputs()
    assert reason in lines[-1], lines[-1]


def test_a_well_formed_append_is_accepted() -> None:
    rt, _ = _logged_runtime("n2")
    sent: list[Message] = []
    assert rt.deliver(_app(0, 0, [(1, 1), (2, 3), (3, 3)]))
    run_turns(rt, sent)
    assert rt.status().last_index == 3
    assert [m.index for m in sent if m.type == MessageType.APP_RESP] == [3]


# -- snapshots only from the leader we follow ----------------------------------------------


def _snapshot_data() -> bytes:
    leader = single_leader()
    leader.propose(put(b"k", b"v"), Box())
    run_turns(leader)
    return leader.store.export_snapshot()[1]


@pytest.mark.parametrize("src, term, reason", [
    ("n3", 4, "'n3' is not the leader we follow in term 4 (ours: 'n1')"),
    ("n1", 5, "its term 5 is not our term 4"),
    ("n1", 3, "its term 3 is not our term 4"),
    ("intruder", 4, "not a member"),
    ("n2", 4, "not a member other than us"),
])
def test_a_snapshot_not_from_the_current_leader_is_refused(src: str, term: int,
                                                           reason: str) -> None:
    rt = following("n1", 4)
    with pytest.raises(ValueError, match=f"snapshot from {src} rejected: ") as info:
        rt.deliver_snapshot(src, term, _snapshot_data())
    assert reason in str(info.value)
    assert not rt.has_inputs()
    assert rt.store.get(b"k")[0] is False


def test_a_snapshot_before_any_leader_reached_us_is_refused() -> None:
    for resyncing in (False, True):
        rt = NodeRuntime("n2", ["n1", "n2", "n3"], MemoryNodeStore(shards=4, vnodes=16),
                         random.Random(1), resyncing=resyncing)
        with pytest.raises(ValueError, match="not our term 0"):
            rt.deliver_snapshot("n1", 1, _snapshot_data())
        with pytest.raises(ValueError, match="not the leader we follow in term 0"):
            rt.deliver_snapshot("n1", 0, _snapshot_data())
        assert not rt.has_inputs()


def test_a_snapshot_whose_last_term_is_ahead_of_its_leaders_term_is_refused() -> None:
    leader = single_leader()
    # Restarted on its store, it is elected again: its applied entries are of term 2.
    again = NodeRuntime("n1", ["n1"], leader.store, random.Random(2), election_ticks=2)
    for _ in range(10):
        again.tick()
        run_turns(again)
    assert again.role == Role.LEADER and again.term == 2
    data = again.store.export_snapshot()[1]
    following("n1", 2).deliver_snapshot("n1", 2, data)  # fine
    # A leader of term 1 cannot have written it.
    with pytest.raises(ValueError, match="last term 2 is ahead of the leader's term 1"):
        following("n1", 1).deliver_snapshot("n1", 1, data)


def test_a_resyncing_node_takes_a_snapshot_from_the_leader_that_reached_it() -> None:
    store = MemoryNodeStore(shards=4, vnodes=16)
    rt = following("n1", 7, store=store, resyncing=True)
    assert rt.status().passive is False and rt.status().rebuilding
    data = _snapshot_data()
    with pytest.raises(ValueError, match="not the leader"):
        rt.deliver_snapshot("n3", 7, data)
    rt.deliver_snapshot("n1", 7, data)
    sent: list[Message] = []
    run_turns(rt, sent)
    assert store.get(b"k")[:2] == (True, b"v")
    assert rt.resync_finished()


def test_a_full_disk_stalls_writes_instead_of_killing_the_node(monkeypatch) -> None:
    """The driver retries a write that failed for lack of space (it changed nothing) and
    carries on once space is back; the node never dies or crash-loops over it."""
    import asyncio

    from kvstore.server import node as node_module
    from kvstore.server.node import NodeDriver
    from kvstore.storage.errors import OutOfSpaceError

    monkeypatch.setattr(node_module, "OUT_OF_SPACE_RETRY_SECONDS", 0.01)
    store = MemoryNodeStore(shards=4, vnodes=16)
    real = store.persist_and_apply
    failures = [3]

    def flaky(*args: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise OutOfSpaceError("out of space: No space left on device")
        return real(*args)

    monkeypatch.setattr(store, "persist_and_apply", flaky)

    async def scenario() -> bytes:
        driver = NodeDriver("n1", ["n1"], store, lambda msgs: None, random.Random(1),
                            tick_seconds=0.001, election_ticks=2)
        task = asyncio.create_task(driver.run())
        try:
            for _ in range(2000):
                if driver.role == Role.LEADER:
                    break
                await asyncio.sleep(0.001)
            result = await asyncio.wait_for(driver.propose(put(b"k", b"v")), 5)
            assert result.ok and not task.done()
            return store.get(b"k")[1]
        finally:
            driver.stop()
            await task

    assert asyncio.run(scenario()) == b"v"
    assert failures == [0]


def test_refused_peer_messages_are_logged_sparingly() -> None:
    lines: list[str] = []
    rt = NodeRuntime("n1", ["n1", "n2", "n3"], MemoryNodeStore(), random.Random(1),
                     log=lines.append)
    for _ in range(1000):
        assert not rt.deliver(Message(MessageType.VOTE_RESP, "intruder", "n1", 1))
    refusals = [line for line in lines if line.startswith("refused")]
    assert len(refusals) == 4  # the 1st, 10th, 100th and 1000th
    assert refusals[-1].endswith("(1000 so far)")


def test_a_snapshot_not_from_our_leader_is_refused_as_not_ours_to_take() -> None:
    from kvstore.server.outcomes import SnapshotRefused

    leader = single_leader()
    _, data = leader.store.export_snapshot()
    rt = NodeRuntime("n2", ["n1", "n2", "n3"], MemoryNodeStore(shards=4, vnodes=16),
                     random.Random(1))
    with pytest.raises(SnapshotRefused):
        rt.deliver_snapshot("n3", 1, data)
