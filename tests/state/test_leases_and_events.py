"""Leases in the state machine (grant, attach, revoke in one revision) and the change feed
watchers read (store.events), over the dict and LMDB stores."""

from __future__ import annotations

import pytest

from kvstore.etcdpb import kv_pb2, rpc_pb2
from kvstore.raft.types import Entry, HardState
from kvstore.state.commands import (
    encode_compact,
    encode_lease_grant,
    encode_lease_revoke,
    encode_txn,
)
from kvstore.state.leases import ERR_LEASE_EXISTS
from kvstore.state.mvcc import ERR_COMPACTED, ERR_LEASE_NOT_FOUND, MvccError
from kvstore.storage.lmdb_store import LmdbNodeStore
from kvstore.storage.memory_store import MemoryNodeStore

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


def _put(key: bytes, value: bytes, lease: int = 0) -> bytes:
    txn = rpc_pb2.TxnRequest()
    txn.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=key, value=value, lease=lease))
    return encode_txn(b"", 0, 0, txn)


def _delete(key: bytes, end: bytes = b"") -> bytes:
    txn = rpc_pb2.TxnRequest()
    txn.success.add().request_delete_range.CopyFrom(rpc_pb2.DeleteRangeRequest(key=key,
                                                                                range_end=end))
    return encode_txn(b"", 0, 0, txn)


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryNodeStore(shards=4, vnodes=8)
    else:
        s = LmdbNodeStore.open(tmp_path / "db", shards=4, vnodes=8)
        yield s
        s.close()


class Log:
    def __init__(self, store) -> None:
        self.store = store
        self.index = 0

    def apply(self, *datas: bytes):
        entries = []
        for data in datas:
            self.index += 1
            entries.append(Entry(term=1, index=self.index, data=data))
        return self.store.persist_and_apply(HardState(term=1, commit=self.index), entries,
                                            entries)


def test_lease_grant_attach_revoke_in_one_revision(store) -> None:
    log = Log(store)
    [r] = log.apply(encode_lease_grant(7, 30))
    assert r.ok and r.lease is not None and (r.lease.kind, r.lease.id, r.lease.ttl) == \
        ("grant", 7, 30)
    [again] = log.apply(encode_lease_grant(7, 30))
    assert again.error == ERR_LEASE_EXISTS
    [bad] = log.apply(_put(b"x", b"1", lease=99))
    assert bad.error == ERR_LEASE_NOT_FOUND and store.revisions()[0] == 1
    log.apply(_put(b"a", b"1", lease=7), _put(b"b", b"2", lease=7), _put(b"c", b"3"))
    assert store.lease(7) == 30 and store.leases() == [(7, 30)]
    assert store.lease_keys(7) == [b"a", b"b"]
    log.apply(_put(b"b", b"2b"))  # moved off the lease
    assert store.lease_keys(7) == [b"a"]
    log.apply(_put(b"c", b"3c", lease=7))
    before = store.revisions()[0]
    [rv] = log.apply(encode_lease_revoke(7))
    assert rv.ok and rv.revision == before + 1  # both keys deleted in one revision
    resp, _, _ = store.range(rpc_pb2.RangeRequest(key=b"a", range_end=b"z"))
    assert [kv.key for kv in resp.kvs] == [b"b"]
    assert store.lease(7) is None and store.lease_keys(7) == []
    [gone] = log.apply(encode_lease_revoke(7))
    assert gone.error == ERR_LEASE_NOT_FOUND and gone.revision == before + 1


def test_events_replay_in_order_with_prev_kv_and_limits(store) -> None:
    log = Log(store)
    log.apply(_put(b"k1", b"a"), _put(b"k2", b"b"), _put(b"other", b"x"), _put(b"k1", b"c"),
              _delete(b"k", b"l"))
    events, nxt = store.events(1, b"k", b"l", prev_kv=True)
    got = [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision,
            e.prev_kv.value if e.HasField("prev_kv") else None) for e in events]
    assert got == [(PUT, b"k1", b"a", 2, None), (PUT, b"k2", b"b", 3, None),
                   (PUT, b"k1", b"c", 5, b"a"),
                   (DELETE, b"k1", b"", 6, b"c"), (DELETE, b"k2", b"", 6, b"b")]
    assert nxt == 7
    # A limit never splits a revision (both deletes are revision 6).
    events, nxt = store.events(5, b"k", b"l", limit=2)
    assert [e.kv.mod_revision for e in events] == [5, 6, 6] and nxt == 7
    events, nxt = store.events(2, b"k1", b"", limit=1)
    assert [e.kv.mod_revision for e in events] == [2] and nxt == 3
    assert store.events(7, b"k", b"l") == ([], 7)  # caught up: wait for revision 7
    log.apply(encode_compact(6))
    with pytest.raises(MvccError) as err:
        store.events(5, b"k", b"l")
    assert err.value.message == ERR_COMPACTED
    # From the compacted revision itself, as etcd allows: its deletes are still there.
    assert [(e.type, e.kv.mod_revision) for e in store.events(6, b"k", b"l")[0]] == \
        [(DELETE, 6), (DELETE, 6)]
    log.apply(_put(b"z", b"1"), encode_compact(7))  # the next compaction drops them
    assert store.events(7, b"k", b"l")[0] == []
    assert store.range(rpc_pb2.RangeRequest(key=b"k", range_end=b"l", revision=7))[0].count == 0
