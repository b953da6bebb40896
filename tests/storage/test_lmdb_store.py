"""LMDB node store: durability across reopen, truncation, atomicity, corruption detection."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from kvstore.raft.types import Entry, EntryType, HardState
from kvstore.state.commands import encode_cas, encode_delete, encode_put, encode_register
from kvstore.storage.errors import ConfigMismatchError, CorruptLogError, StorageError
from kvstore.storage.lmdb_store import LmdbNodeStore, _decode_record, _encode_record
from kvstore.storage.memory_store import MemoryNodeStore

CID = b""  # no session: these tests are about the log and the store, not exactly-once


def _entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    """Entries lo..hi-1, each a put of key k<i> (NOOP every fifth, to cover both types)."""
    return [
        Entry(term=term, index=i, type=EntryType.NOOP, data=b"")
        if i % 5 == 0
        else Entry(term=term, index=i, data=encode_put(CID, i, 0, b"k%d" % i, b"v%d" % i))
        for i in range(lo, hi)
    ]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node1"


def test_fresh_store_is_empty(data_dir: Path) -> None:
    with LmdbNodeStore.open(data_dir) as store:
        assert store.initial_state() == HardState()
        assert (store.first_index(), store.last_index(), store.applied_index()) == (1, 0, 0)
        assert store.term(0) == 0
        assert store.entries(1, 1) == []
        assert store.get(b"x") == (False, b"", 0)
        assert store.shards == 16 and len(store.shard_digests()) == 16


def test_save_close_reopen(data_dir: Path) -> None:
    hs = HardState(term=3, vote="n2", commit=0)
    log = _entries(1, 8, term=2)
    with LmdbNodeStore.open(data_dir) as store:
        assert store.persist_and_apply(hs, log, []) == []
        assert store.entries(1, 8) == log
    with LmdbNodeStore.open(data_dir) as store:
        assert store.initial_state() == hs
        assert (store.first_index(), store.last_index()) == (1, 7)
        assert store.entries(1, 8) == log
        assert store.entries(3, 5) == log[2:4]
        assert [store.term(i) for i in range(8)] == [0] + [2] * 7
        with pytest.raises(StorageError):
            store.entries(5, 9)
        with pytest.raises(StorageError):
            store.term(8)


def test_truncates_conflicting_suffix(data_dir: Path) -> None:
    with LmdbNodeStore.open(data_dir) as store:
        store.persist_and_apply(None, _entries(1, 6, term=1), [])
        new = _entries(3, 5, term=2)  # a new leader overwrites 3..5 with a shorter 3..4
        store.persist_and_apply(HardState(term=2), new, [])
        assert store.last_index() == 4
        assert [store.term(i) for i in range(1, 5)] == [1, 1, 2, 2]
    with LmdbNodeStore.open(data_dir) as store:
        assert store.last_index() == 4
        assert store.entries(1, 5) == _entries(1, 3, term=1) + new
        store.persist_and_apply(None, _entries(5, 7, term=2), [])  # append after truncation
        assert store.last_index() == 6


def test_hard_state_entries_and_apply_in_one_call(data_dir: Path) -> None:
    hs = HardState(term=1, vote="n1", commit=3)
    log = _entries(1, 4)
    with LmdbNodeStore.open(data_dir) as store:
        results = store.persist_and_apply(hs, log, log)  # committed among this call's entries
        assert [r.index for r in results] == [1, 2, 3]
    with LmdbNodeStore.open(data_dir) as store:
        assert store.initial_state() == hs
        assert store.last_index() == 3
        assert store.applied_index() == 3
        assert store.get(b"k2") == (True, b"v2", 3)


def test_failed_call_writes_nothing(data_dir: Path) -> None:
    with LmdbNodeStore.open(data_dir) as store:
        store.persist_and_apply(HardState(term=1), _entries(1, 4), _entries(1, 3))
        bad_batches = [
            # a gap in the log
            (HardState(term=9), _entries(6, 8), []),
            # committed entry out of order (3 is next, not 4), after valid new entries
            (HardState(term=9), _entries(4, 6), _entries(4, 5)),
            # committed entry beyond the log's end
            (HardState(term=9), [], _entries(3, 5)),
            # committed entry whose term differs from the log's
            (HardState(term=9), [], _entries(3, 4, term=7)),
            # rewriting an applied entry with another term
            (HardState(term=9), _entries(2, 4, term=5), []),
        ]
        for hs, entries, committed in bad_batches:
            with pytest.raises(StorageError):
                store.persist_and_apply(hs, entries, committed)
        assert store.initial_state() == HardState(term=1)
        assert (store.last_index(), store.applied_index()) == (3, 2)
    with LmdbNodeStore.open(data_dir) as store:
        assert store.initial_state() == HardState(term=1)
        assert (store.last_index(), store.applied_index()) == (3, 2)
        assert store.get(b"k3")[0] is False


def test_committed_entry_passed_twice_is_applied_once(data_dir: Path) -> None:
    put = Entry(term=1, index=1, data=encode_put(CID, 1, 0, b"k", b"v"))
    delete = Entry(term=1, index=2, data=encode_delete(CID, 2, 0, b"k"))
    recreate = Entry(term=1, index=3, data=encode_put(CID, 3, 0, b"k", b"again"))
    with LmdbNodeStore.open(data_dir) as store:
        store.persist_and_apply(None, [put, delete, recreate], [put, delete])
        assert store.get(b"k") == (False, b"", 2)
        results = store.persist_and_apply(None, [], [put, delete, recreate])
        assert [r.index for r in results] == [3]
        assert store.get(b"k") == (True, b"again", 3)
        assert store.persist_and_apply(None, [], [delete]) == []
    with LmdbNodeStore.open(data_dir) as store:  # and after a restart too
        assert store.persist_and_apply(None, [], [put, delete, recreate]) == []
        assert store.get(b"k") == (True, b"again", 3)


def test_applied_state_and_sessions_survive_reopen(data_dir: Path) -> None:
    one, other = b"s" + (1).to_bytes(8, "big"), b"s" + (4).to_bytes(8, "big")
    cmds = [
        encode_register(),  # session `one`
        encode_put(one, 1, 1, b"k", b"v1"),
        encode_cas(one, 2, 1, b"k", b"v1", b"v2"),
        encode_register(),  # session `other`
        encode_put(other, 1, 1, b"k", b"v1"),
    ]
    log = [Entry(term=1, index=i + 1, data=d) for i, d in enumerate(cmds)]
    with LmdbNodeStore.open(data_dir) as store:
        store.persist_and_apply(HardState(term=1, commit=5), log, log)
        digests = store.shard_digests()
    with LmdbNodeStore.open(data_dir) as store:
        assert store.applied_index() == 5
        assert store.get(b"k") == (True, b"v1", 5)
        assert store.shard_digests() == digests
        assert store.session_count() == 2
        session = store.session(one)
        assert session is not None and session.results == {1: True, 2: True}
        # The client retries its cas after the restart: recorded result, no second swap.
        retry = Entry(term=1, index=6, data=cmds[2])
        (result,) = store.persist_and_apply(None, [retry], [retry])
        assert result.duplicate and result.ok
        assert store.get(b"k") == (True, b"v1", 6)


def _corrupt(data_dir: Path, index: int, mutate: Callable[[bytes], bytes | None]) -> None:
    env = lmdb.open(str(data_dir), max_dbs=300, subdir=True)
    try:
        log = env.open_db(b"log")
        with env.begin(write=True) as txn:
            key = struct.pack(">Q", index)
            raw = txn.get(key, db=log)
            new = mutate(raw)
            if new is None:
                txn.delete(key, db=log)
            else:
                txn.put(key, new, db=log)
    finally:
        env.close()


def test_checksum_mismatch_on_open_names_the_index(data_dir: Path) -> None:
    with LmdbNodeStore.open(data_dir) as store:
        store.persist_and_apply(None, _entries(1, 60), [])
    _corrupt(data_dir, 42, lambda raw: raw[:-1] + bytes([raw[-1] ^ 0x01]))  # flip one bit
    with pytest.raises(CorruptLogError) as info:
        LmdbNodeStore.open(data_dir)
    assert info.value.index == 42
    message = str(info.value)
    assert message.startswith("log entry 42 is corrupt (checksum mismatch) in ")
    assert str(data_dir) in message and message.endswith("refusing to start")
    with pytest.raises(CorruptLogError):  # the failed open released its lock
        LmdbNodeStore.open(data_dir)


def test_corrupt_term_and_truncated_record_are_detected(data_dir: Path) -> None:
    with LmdbNodeStore.open(data_dir) as store:
        store.persist_and_apply(None, _entries(1, 20), [])
    _corrupt(data_dir, 7, lambda raw: raw[:4] + struct.pack(">Q", 99) + raw[12:])
    with pytest.raises(CorruptLogError, match="log entry 7 is corrupt"):
        LmdbNodeStore.open(data_dir)
    _corrupt(data_dir, 7, lambda raw: raw[:5])
    with pytest.raises(CorruptLogError, match=r"log entry 7 is corrupt \(truncated record\)"):
        LmdbNodeStore.open(data_dir)


def test_hole_in_log_is_detected(data_dir: Path) -> None:
    with LmdbNodeStore.open(data_dir) as store:
        store.persist_and_apply(None, _entries(1, 20), [])
    _corrupt(data_dir, 11, lambda raw: None)
    with pytest.raises(CorruptLogError, match="log entry 11 is corrupt \\(missing"):
        LmdbNodeStore.open(data_dir)


def test_checksum_verified_on_read() -> None:
    entry = Entry(term=4, index=9, data=b"payload")
    raw = _encode_record(entry)
    assert _decode_record(9, raw, "/p", "x") == entry
    with pytest.raises(CorruptLogError, match="log entry 9 is corrupt"):
        _decode_record(9, raw[:-1] + b"P", "/p", "refusing to serve it")
    with pytest.raises(CorruptLogError):  # a record moved to another index fails too
        _decode_record(10, raw, "/p", "x")


def test_layout_mismatch_on_reopen(data_dir: Path) -> None:
    LmdbNodeStore.open(data_dir, shards=8, vnodes=32).close()
    with pytest.raises(ConfigMismatchError, match="created with shards=8 vnodes=32"):
        LmdbNodeStore.open(data_dir)  # defaults: 16 shards
    with pytest.raises(ConfigMismatchError):
        LmdbNodeStore.open(data_dir, shards=8, vnodes=64)
    with LmdbNodeStore.open(data_dir, shards=8, vnodes=32) as store:
        assert store.shards == 8 and len(store.shard_digests()) == 8


def test_shard_count_limits(data_dir: Path) -> None:
    with pytest.raises(ValueError):
        LmdbNodeStore.open(data_dir, shards=257)
    with LmdbNodeStore.open(data_dir, shards=256, vnodes=1) as store:
        assert len(store.shard_digests()) == 256


def test_data_dir_is_locked_while_open(data_dir: Path) -> None:
    with LmdbNodeStore.open(data_dir):
        with pytest.raises(StorageError, match="in use"):
            LmdbNodeStore.open(data_dir)
    LmdbNodeStore.open(data_dir).close()


def test_same_log_same_digests_as_memory_store(data_dir: Path) -> None:
    log = _entries(1, 50)
    memory = MemoryNodeStore()
    with LmdbNodeStore.open(data_dir) as store:
        assert store.persist_and_apply(None, log, log) == memory.persist_and_apply(None, log, log)
        assert store.shard_digests() == memory.shard_digests()
        store.persist_and_apply(None, _entries(50, 52), _entries(50, 52))  # 50 is a NOOP
        assert store.shard_digests() != memory.shard_digests()


def test_reads_during_concurrent_writes_are_consistent(data_dir: Path) -> None:
    """The runtime persists in a worker thread while the loop thread reads: every read must
    see one committed state (value written by entry i <=> applied index i)."""
    n = 60
    with LmdbNodeStore.open(data_dir) as store:
        done = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for i in range(1, n + 1):
                    e = Entry(term=1, index=i, data=encode_put(CID, i, i, b"k", b"%d" % i))
                    store.persist_and_apply(HardState(term=1, commit=i), [e], [e])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        last_applied = 0
        while not done.is_set():
            found, value, applied = store.get(b"k")
            assert applied >= last_applied
            assert found == (applied > 0) and value == (b"%d" % applied if found else b"")
            last_applied = applied
            view_last = store.last_index()
            if view_last:
                assert len(store.entries(1, view_last + 1)) == view_last
                assert store.term(view_last) == 1
        thread.join()
        assert not errors
        assert store.get(b"k") == (True, b"%d" % n, n)


def test_quota_sizes_the_map_above_it_and_above_the_data(tmp_path: Path) -> None:
    from kvstore.storage.lmdb_store import MIN_HEADROOM_BYTES, map_size_for

    assert map_size_for(2 << 30) == (2 << 30) + (512 << 20)
    assert map_size_for(1 << 20) == (1 << 20) + MIN_HEADROOM_BYTES
    # A data dir that outgrew its quota (set lower later) still opens with room to write.
    assert map_size_for(1 << 20, 10 << 30) == (10 << 30) + MIN_HEADROOM_BYTES
    with LmdbNodeStore.open(tmp_path / "d", quota_bytes=1 << 20) as store:
        before = store.size_bytes()
        entries = [Entry(1, i, EntryType.NORMAL, b"x" * 4000) for i in range(1, 301)]
        store.persist_and_apply(None, entries, entries)
        full = store.size_bytes()
        assert full > max(before, 1 << 20)  # past the quota: writing still works
        store.compact(300)
        assert store.size_bytes() < full // 10  # freed pages do not count: alarms can clear
    with pytest.raises(ValueError):
        LmdbNodeStore.open(tmp_path / "e", quota_bytes=0)


def test_out_of_space_errors_are_told_apart_from_other_failures() -> None:
    import errno

    from kvstore.storage.errors import is_out_of_space

    assert is_out_of_space(lmdb.MapFullError("mdb_put: MDB_MAP_FULL: Environment mapsize limit"))
    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_out_of_space(lmdb.CorruptedError("MDB_CORRUPTED"))
    assert not is_out_of_space(OSError(errno.EIO, "Input/output error"))


class _CountingEnv:
    """The store's LMDB environment, counting explicit syncs."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self.syncs = 0

    def sync(self, force: bool = False) -> None:
        self.syncs += 1
        self._env.sync(force)

    def __getattr__(self, name: str) -> object:
        return getattr(self._env, name)


def test_only_a_transaction_that_just_applies_skips_the_meta_sync(data_dir: Path) -> None:
    """metasync=False: log entries, a new term or vote are synced in full (env.sync after
    the commit); applying committed entries and recording the commit index is not, since
    a crash that undoes it only makes the node apply them again from the durable log."""
    put = _entries(1, 2)[0]
    with LmdbNodeStore.open(data_dir) as store:
        env = _CountingEnv(store._env)
        store._env = env  # type: ignore[assignment]
        store.persist_and_apply(HardState(1, "n1", 0), [put], [])
        assert env.syncs == 1  # entries (and a vote)
        store.persist_and_apply(HardState(1, "n1", 1), [], [put])
        assert env.syncs == 1  # apply + commit index only
        store.persist_and_apply(HardState(2, "", 1), [], [])
        assert env.syncs == 2  # a new term
        store._env = env._env
    with LmdbNodeStore.open(data_dir) as store:  # what was written is all there
        assert store.applied_index() == 1
        assert store.initial_state() == HardState(2, "", 1)


def test_recent_terms_come_from_memory_and_agree_with_the_log(data_dir: Path) -> None:
    """term() of entries written since opening is answered from the view's runs of terms;
    a replaced suffix replaces its runs; a reopened store (terms from LMDB) agrees."""
    with LmdbNodeStore.open(data_dir) as store:
        store.persist_and_apply(HardState(3, "n1", 0), _entries(1, 5, term=1), [])
        store.persist_and_apply(None, _entries(5, 8, term=2), [])
        store.persist_and_apply(None, _entries(6, 9, term=3), [])  # replaces 6..7
        before = [store.term(i) for i in range(1, 9)]
        assert store._view.term_runs == ((1, 1), (5, 2), (6, 3))
    assert before == [1, 1, 1, 1, 2, 3, 3, 3]
    with LmdbNodeStore.open(data_dir) as store:
        assert store._view.term_runs == ()
        assert [store.term(i) for i in range(1, 9)] == before
