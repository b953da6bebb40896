"""Compaction and snapshot export/install of the LMDB store."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.raft.types import Entry, EntryType, HardState, SnapshotMeta
from kvstore.state.commands import encode_delete, encode_put, encode_register
from kvstore.storage.errors import StorageError
from kvstore.storage.lmdb_store import LmdbNodeStore


def _fill(store: LmdbNodeStore, n: int, term: int = 1) -> None:
    start = store.last_index() + 1
    entries = [Entry(term, start, EntryType.NOOP)] + [
        Entry(term, start + i, data=encode_put(b"", 0, 0, b"k%d" % i, b"v%d" % i))
        for i in range(1, n)
    ]
    store.persist_and_apply(HardState(term, "n1", entries[-1].index), entries, entries)


def test_compaction_drops_the_prefix_and_survives_reopen(tmp_path: Path) -> None:
    with LmdbNodeStore.open(tmp_path / "a") as store:
        _fill(store, 50)
        store.compact(40)
        assert store.first_index() == 41
        assert store.term(40) == 1
        assert [e.index for e in store.entries(41, 51)] == list(range(41, 51))
        with pytest.raises(StorageError):
            store.entries(30, 41)
        with pytest.raises(StorageError):
            store.compact(60)  # beyond what is applied
    with LmdbNodeStore.open(tmp_path / "a") as store:
        assert (store.first_index(), store.last_index(), store.term(40)) == (41, 50, 1)
        _fill(store, 5, term=2)  # the log keeps growing after the compacted prefix
        assert store.last_index() == 55


def test_snapshot_round_trip_reproduces_the_state_machine(tmp_path: Path) -> None:
    snap_file = tmp_path / "snap"
    with LmdbNodeStore.open(tmp_path / "leader") as leader:
        _fill(leader, 99)
        session = b"s" + (100).to_bytes(8, "big")
        register = Entry(1, 100, data=encode_register())
        delete = Entry(1, 101, data=encode_delete(session, 1, 1, b"k3"))
        leader.persist_and_apply(None, [register, delete], [register, delete])
        meta = leader.write_snapshot(str(snap_file))
        assert meta == SnapshotMeta(101, 1)
        digest = leader.digest()
        assert leader.get(b"k3")[0] is False
    with LmdbNodeStore.open(tmp_path / "follower") as follower:
        _fill(follower, 3, term=1)  # some stale state that the snapshot replaces
        installed = follower.install_snapshot(snap_file.read_bytes(), HardState(2, "n1", 101))
        assert installed == meta
        assert follower.digest() == digest
        assert (follower.first_index(), follower.last_index()) == (102, 101)
        assert follower.initial_state() == HardState(2, "n1", 101)
        assert follower.get(b"k5") == (True, b"v5", 101)
        # Sessions came along: a retry of an applied write is still deduplicated.
        assert follower.session(session) is not None
    with LmdbNodeStore.open(tmp_path / "follower") as follower:  # and it is durable
        assert follower.digest() == digest
        assert follower.term(101) == 1
        retry = Entry(1, 102, data=delete.data)
        (result,) = follower.persist_and_apply(None, [retry], [retry])
        assert result.duplicate and result.ok


def test_corrupt_snapshot_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    snap_file = tmp_path / "snap"
    with LmdbNodeStore.open(tmp_path / "leader") as leader:
        _fill(leader, 20)
        leader.write_snapshot(str(snap_file))
    data = bytearray(snap_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with LmdbNodeStore.open(tmp_path / "follower") as follower:
        _fill(follower, 3)
        before = follower.digest()
        with pytest.raises(StorageError, match="checksum"):
            follower.install_snapshot(bytes(data), None)
        with pytest.raises(StorageError, match="truncated|checksum"):
            follower.install_snapshot(bytes(data[:100]), None)
        assert follower.digest() == before
        assert follower.last_index() == 3
