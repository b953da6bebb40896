"""Cluster alarms in the replicated state: raised and cleared only through the log; while
one is raised puts and compare-and-swaps are refused (not applied, not recorded), deletes
and reads work; snapshots carry alarms; shard digests do not see them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.state import alarms
from kvstore.state.commands import encode_alarm
from kvstore.storage.memory_store import MemoryNodeStore
from tests.state.test_machine import Node, _open

NOSPACE, CORRUPT = alarms.NOSPACE, alarms.CORRUPT


@pytest.fixture(params=["lmdb", "memory"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    store = _open(request.param, tmp_path, max_sessions=8)
    yield Node(store)
    store.close()


def raised(node: Node) -> list[tuple[str, str]]:
    return [(a.name, a.member) for a in node.store.alarms()]


def test_nospace_refuses_puts_and_cas_but_not_deletes(node: Node) -> None:
    a = node.register()
    assert node.put(a, 1, b"k", b"v1").ok
    assert node.apply(encode_alarm(True, NOSPACE, "n2")).ok
    assert raised(node) == [("NOSPACE", "n2")]
    put = node.put(a, 2, b"k", b"v2")
    assert (put.ok, put.alarm) == (False, NOSPACE)
    cas = node.cas(a, 3, b"k", b"v1", b"v3")
    assert (cas.ok, cas.alarm) == (False, NOSPACE)
    assert node.value(b"k") == b"v1"
    assert node.delete(a, 4, b"k").ok  # deletes free space: allowed
    assert node.value(b"k") is None
    anonymous = node.put(b"", 0, b"x", b"y")
    assert anonymous.alarm == NOSPACE and node.value(b"x") is None
    assert node.register()  # new clients can still connect (to delete)


def test_refused_write_is_not_recorded_so_its_retry_applies_once_after_disarm(node: Node) -> None:
    a = node.register()
    node.apply(encode_alarm(True, NOSPACE, "n1"))
    assert node.put(a, 1, b"k", b"v").alarm == NOSPACE
    assert not node.apply(encode_alarm(True, NOSPACE, "n1")).ok  # already raised
    assert node.apply(encode_alarm(False, NOSPACE, "")).ok  # disarm for every member
    assert raised(node) == []
    retry = node.put(a, 1, b"k", b"v")
    assert retry.ok and not retry.duplicate and node.value(b"k") == b"v"
    again = node.put(a, 1, b"k", b"v")
    assert again.duplicate  # exactly once


def test_corrupt_alarm_names_the_member_and_blocks_writes(node: Node) -> None:
    a = node.register()
    node.apply(encode_alarm(True, CORRUPT, "n3"))
    node.apply(encode_alarm(True, NOSPACE, "n1"))
    assert raised(node) == [("NOSPACE", "n1"), ("CORRUPT", "n3")]
    assert node.put(a, 1, b"k", b"v").alarm == NOSPACE
    node.apply(encode_alarm(False, NOSPACE, "n1"))
    assert node.put(a, 2, b"k", b"v").alarm == CORRUPT
    assert not node.apply(encode_alarm(False, CORRUPT, "n9")).ok  # not raised for n9
    node.apply(encode_alarm(False, CORRUPT, "n3"))
    assert node.put(a, 3, b"k", b"v").ok


def test_bad_alarm_ops_change_nothing(node: Node) -> None:
    assert not node.apply(encode_alarm(True, 0, "n1")).ok  # no type
    assert not node.apply(encode_alarm(True, NOSPACE, "")).ok  # no member
    assert not node.apply(encode_alarm(True, NOSPACE, "n" * 300)).ok  # member too long
    assert raised(node) == []


def test_alarms_travel_in_snapshots_and_stay_out_of_shard_digests(node: Node) -> None:
    a = node.register()
    node.put(a, 1, b"k", b"v")
    before = node.store.shard_digests()
    node.apply(encode_alarm(True, NOSPACE, "n2"))
    assert node.store.shard_digests() == before
    _, data = _export(node)
    fresh = MemoryNodeStore(shards=4, vnodes=16, max_sessions=8)
    fresh.install_snapshot(data, None)
    assert [(x.name, x.member) for x in fresh.alarms()] == [("NOSPACE", "n2")]


def _export(node: Node) -> tuple[object, bytes]:
    store = node.store
    if isinstance(store, MemoryNodeStore):
        return store.export_snapshot()
    path = Path(store.path) / "snap.tmp"
    meta = store.write_snapshot(str(path))
    return meta, path.read_bytes()


def test_hash_check_entries_hash_the_state_at_their_index(tmp_path: Path) -> None:
    from kvstore.state.commands import encode_hash_check
    from kvstore.state.machine import shard_db_name

    nodes = [Node(_open("lmdb", tmp_path / "a", 8)), Node(MemoryNodeStore(shards=4, vnodes=16))]
    digests = []
    for n in nodes:
        a = n.register()
        n.put(a, 1, b"k1", b"v1")
        n.put(a, 2, b"k2", b"v2")
        digests.append(n.apply(encode_hash_check()).digest)
    assert digests[0] and digests[0] == digests[1]  # same log, same state: same hash
    mem = nodes[1].store
    assert isinstance(mem, MemoryNodeStore)
    shard = next(name for name in (shard_db_name(s) for s in range(4)) if mem._dbs[name])
    key = next(iter(mem._dbs[shard]))
    mem._dbs[shard][key] = mem._dbs[shard][key] + b"!"  # bit rot behind the log's back
    assert nodes[1].apply(encode_hash_check()).digest != nodes[0].apply(encode_hash_check()).digest
    nodes[0].store.close()
