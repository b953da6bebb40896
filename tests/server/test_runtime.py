"""The node runtime's rules, driven by hand over MemoryNodeStore (no asyncio, no disk).

The simulator exercises these rules under faults; these tests pin the individual rules and
the bugs found in the old driver (a forged SNAP message crashed it with a KeyError)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvstore.raft.errors import NotLeader
from kvstore.raft.types import Message, MessageType, Role
from kvstore.server.runtime import (
    AlarmRefused,
    LeadershipLost,
    NodeRuntime,
    Plan,
    SessionExpired,
    execute_write,
)
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


def test_damaged_snapshot_is_refused() -> None:
    rt = NodeRuntime("n2", ["n1", "n2", "n3"], MemoryNodeStore(shards=4, vnodes=16),
                     random.Random(1))
    leader = single_leader()
    _, data = leader.store.export_snapshot()
    bad = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(ValueError, match="rejected"):
        rt.deliver_snapshot("n1", 5, bad)
    assert not rt.has_inputs()


def test_snapshot_data_travels_with_the_plan_and_is_installed() -> None:
    leader = single_leader()
    box = Box()
    leader.propose(put(b"k", b"v"), box)
    run_turns(leader)
    meta, data = leader.store.export_snapshot()
    follower_store = MemoryNodeStore(shards=4, vnodes=16)
    rt = NodeRuntime("n2", ["n1", "n2", "n3"], follower_store, random.Random(2))
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
