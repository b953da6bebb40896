"""The multi-version key space against a plain reference: a full copy of the key space at
every revision. Random writes, deletes, Txns and compactions; every read at every revision
must answer what the reference held then, over both the dict and the LMDB transaction."""

from __future__ import annotations

import random
from dataclasses import dataclass

import lmdb
import pytest

from kvstore.etcdpb import rpc_pb2
from kvstore.raft.types import Entry
from kvstore.state.commands import encode_compact, encode_txn
from kvstore.state.machine import DictTxn, ShardedStateMachine
from kvstore.state.mvcc import ERR_COMPACTED, ERR_FUTURE_REV, KHIST_DB, REVS_DB, MvccError
from kvstore.storage.lmdb_store import _LmdbTxn

RR = rpc_pb2.RangeRequest


@dataclass
class KV:
    value: bytes
    create: int
    mod: int
    version: int


class Reference:
    """The key space at every revision, copied whole: obviously right, hopelessly slow."""

    def __init__(self) -> None:
        self.at: dict[int, dict[bytes, KV]] = {1: {}}
        self.rev = 1
        self.compacted = 0

    def write(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        state = dict(self.at[self.rev])
        changed = False
        nxt = self.rev + 1
        for key in deletes:
            if key in state:
                del state[key]
                changed = True
        for key, value in puts.items():
            old = state.get(key)
            state[key] = KV(value, old.create if old else nxt, nxt, old.version + 1 if old else 1)
            changed = True
        if changed:
            self.rev = nxt
            self.at[nxt] = state

    def range(self, start: bytes, end: bytes, rev: int) -> list[tuple[bytes, KV]]:
        state = self.at[rev or self.rev]
        if not end:
            keys = [start] if start in state else []
        elif end == b"\x00":
            keys = sorted(k for k in state if k >= start)
        else:
            keys = sorted(k for k in state if start <= k < end)
        return [(k, state[k]) for k in keys]


KEYS = [b"a", b"ab", b"abc", b"b", b"ba", b"c", b"x" * 400 + b"1", b"x" * 400 + b"0",
        b"x" * 400, b"x" * 399 + b"y", b"x" * 600]


def _apply(sm: ShardedStateMachine, txn, index: int, data: bytes):
    return sm.apply(txn, Entry(term=1, index=index, data=data))


def _txn_of(puts: dict[bytes, bytes], deletes: list[bytes]) -> rpc_pb2.TxnRequest:
    req = rpc_pb2.TxnRequest()
    for key in deletes:
        req.success.add().request_delete_range.key = key
    for key, value in puts.items():
        req.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=key, value=value))
    return req


def _check_reads(sm, txn, ref: Reference, rng: random.Random) -> None:
    for _ in range(20):
        rev = rng.choice([0, rng.randint(max(ref.compacted, 1), ref.rev)])
        a, b = sorted(rng.sample(KEYS, 2))
        end = rng.choice([b"", b, b"\x00"])
        resp, current = sm.range(txn, RR(key=a, range_end=end, revision=rev))
        assert current == ref.rev
        want = ref.range(a, end, rev)
        got = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
               for kv in resp.kvs]
        assert got == [(k, v.value, v.create, v.mod, v.version) for k, v in want], (a, end, rev)
        assert resp.count == len(want)


class _LmdbTxns:
    """Write transactions over a real LMDB environment (cursor seek and floor)."""

    def __init__(self, path, names: list[str]) -> None:
        self.env = lmdb.open(str(path), max_dbs=len(names) + 1, map_size=1 << 28)
        self.dbs = {n: self.env.open_db(n.encode()) for n in names}
        self.txn = None

    def begin(self):
        self.txn = self.env.begin(write=True)
        return _LmdbTxn(self.txn, self.dbs)

    def commit(self) -> None:
        self.txn.commit()


class _DictTxns:
    def __init__(self) -> None:
        self.dbs: dict[str, dict[bytes, bytes]] = {}
        self.txn: DictTxn | None = None

    def begin(self) -> DictTxn:
        self.txn = DictTxn(self.dbs)
        return self.txn

    def commit(self) -> None:
        self.txn.commit()


@pytest.mark.parametrize("backend", ["dict", "lmdb"])
@pytest.mark.parametrize("seed", range(8))
def test_random_history_matches_reference(seed: int, backend: str, tmp_path) -> None:
    rng = random.Random(seed)
    sm = ShardedStateMachine(shards=3, vnodes=4)
    txns = _DictTxns() if backend == "dict" else _LmdbTxns(tmp_path, sm.db_names)
    ref = Reference()
    for index in range(1, 120):
        txn = txns.begin()
        roll = rng.random()
        if roll < 0.08 and ref.rev > 1:
            upto = rng.randint(1, ref.rev)
            res = _apply(sm, txn, index, encode_compact(upto))
            if upto <= ref.compacted:
                assert res.error == ERR_COMPACTED
            else:
                assert res.ok and not res.error
                ref.compacted = upto
                for r in [r for r in ref.at if r < upto]:
                    del ref.at[r]
        else:
            keys = rng.sample(KEYS, rng.randint(1, 3))
            deletes = [k for k in keys if rng.random() < 0.3]
            puts = {k: bytes([rng.randint(97, 100)]) for k in keys if k not in deletes}
            res = _apply(sm, txn, index, encode_txn(b"", 0, 0, _txn_of(puts, deletes)))
            assert not res.error
            ref.write(puts, deletes)
            assert res.revision == ref.rev
        txns.commit()
        _check_reads(sm, txns.begin(), ref, rng)
        txns.commit()
    # Compacting at the current revision leaves one change per live key, plus the deletes
    # made at that very revision (kept for watches from it until the next compaction).
    txn = txns.begin()
    if ref.compacted < ref.rev:
        assert _apply(sm, txn, 1000, encode_compact(ref.rev)).ok
    live = len(ref.at[ref.rev])
    prev = ref.at.get(ref.rev - 1)
    tombs = 0 if prev is None or ref.rev == 1 else len(set(prev) - set(ref.at[ref.rev]))
    assert sum(1 for _ in txn.items(REVS_DB)) == live + tombs
    assert sum(1 for _ in txn.items(KHIST_DB)) == live + tombs
    assert sum(1 for db in sm.shard_dbs for _ in txn.items(db)) == live + tombs
    txns.commit()


def test_revision_rules_match_etcd() -> None:
    """Revision 1 when empty; +1 per changing request; a delete of nothing changes nothing;
    a Txn is one revision with sub-revisions; reads before the compaction are refused."""
    sm = ShardedStateMachine(shards=2, vnodes=4)
    txn = DictTxn({})
    assert sm.revisions(txn) == (1, 0)
    r = _apply(sm, txn, 1, encode_txn(b"", 0, 0, _txn_of({b"a": b"1", b"b": b"2"}, [])))
    assert r.revision == 2
    r = _apply(sm, txn, 2, encode_txn(b"", 0, 0, _txn_of({}, [b"zz"])))
    assert r.revision == 2 and r.response.responses[0].response_delete_range.deleted == 0
    r = _apply(sm, txn, 3, encode_txn(b"", 0, 0, _txn_of({b"a": b"3"}, [])))
    assert r.revision == 3
    resp, _ = sm.range(txn, RR(key=b"a"))
    assert (resp.kvs[0].create_revision, resp.kvs[0].mod_revision, resp.kvs[0].version) == \
        (2, 3, 2)
    with pytest.raises(MvccError) as err:
        sm.range(txn, RR(key=b"a", revision=4))
    assert err.value.message == ERR_FUTURE_REV
    assert _apply(sm, txn, 4, encode_compact(3)).ok
    with pytest.raises(MvccError) as err:
        sm.range(txn, RR(key=b"a", revision=2))
    assert err.value.message == ERR_COMPACTED
    assert sm.range(txn, RR(key=b"a", revision=3))[0].kvs[0].value == b"3"


def test_range_options() -> None:
    sm = ShardedStateMachine(shards=4, vnodes=4)
    txn = DictTxn({})
    for i, (k, v) in enumerate([(b"k1", b"z"), (b"k2", b"y"), (b"k3", b"x"), (b"k2", b"w")]):
        _apply(sm, txn, i + 1, encode_txn(b"", 0, 0, _txn_of({k: v}, [])))
    # k1: c2 m2 v1 "z"; k2: c3 m5 v2 "w"; k3: c4 m4 v1 "x"
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", limit=2))
    assert [kv.key for kv in resp.kvs] == [b"k1", b"k2"] and resp.more and resp.count == 3
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", sort_target=RR.MOD,
                               sort_order=RR.DESCEND))
    assert [kv.key for kv in resp.kvs] == [b"k2", b"k3", b"k1"]
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", sort_target=RR.VALUE))
    assert [kv.value for kv in resp.kvs] == [b"w", b"x", b"z"]  # ascending by default
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", sort_order=RR.DESCEND))
    assert [kv.key for kv in resp.kvs] == [b"k3", b"k2", b"k1"]
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", keys_only=True))
    assert all(kv.value == b"" for kv in resp.kvs) and len(resp.kvs) == 3
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", count_only=True))
    assert not resp.kvs and resp.count == 3
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", min_mod_revision=4))
    assert [kv.key for kv in resp.kvs] == [b"k2", b"k3"] and resp.count == 3
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", max_create_revision=3))
    assert [kv.key for kv in resp.kvs] == [b"k1", b"k2"]
    resp, _ = sm.range(txn, RR(key=b"k2", range_end=b"\x00"))
    assert [kv.key for kv in resp.kvs] == [b"k2", b"k3"]
    resp, _ = sm.range(txn, RR(key=b"k", range_end=b"l", revision=3))
    assert [(kv.key, kv.value) for kv in resp.kvs] == [(b"k1", b"z"), (b"k2", b"y")]


def test_txn_compares_branches_and_nested() -> None:
    sm = ShardedStateMachine(shards=2, vnodes=4)
    txn = DictTxn({})
    _apply(sm, txn, 1, encode_txn(b"", 0, 0, _txn_of({b"a": b"1"}, [])))
    C = rpc_pb2.Compare
    req = rpc_pb2.TxnRequest()
    req.compare.add(key=b"a", target=C.MOD, result=C.EQUAL, mod_revision=2)
    req.compare.add(key=b"b", target=C.VERSION, result=C.EQUAL, version=0)
    req.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=b"b", value=b"2",
                                                              prev_kv=True))
    req.success.add().request_range.key = b"b"
    nested = req.success.add().request_txn
    nested.compare.add(key=b"b", target=C.VALUE, result=C.EQUAL, value=b"2")  # before: absent
    nested.failure.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=b"c", value=b"3"))
    res = _apply(sm, txn, 2, encode_txn(b"", 0, 0, req))
    assert res.ok and res.revision == 3
    rs = res.response.responses
    assert rs[1].response_range.kvs[0].value == b"2"  # sees the put before it
    assert not rs[2].response_txn.succeeded  # compares run against the state before
    assert sm.read(txn, b"c") == b"3"
    c = sm.range(txn, RR(key=b"c"))[0].kvs[0]
    b = sm.range(txn, RR(key=b"b"))[0].kvs[0]
    assert b.mod_revision == c.mod_revision == 3  # one revision for the whole Txn
    req = rpc_pb2.TxnRequest()
    req.compare.add(key=b"a", target=C.VALUE, result=C.GREATER, value=b"1")
    req.failure.add().request_delete_range.CopyFrom(
        rpc_pb2.DeleteRangeRequest(key=b"a", range_end=b"z", prev_kv=True))
    res = _apply(sm, txn, 3, encode_txn(b"", 0, 0, req))
    assert not res.ok and res.revision == 4
    assert res.response.responses[0].response_delete_range.deleted == 3
    # ignore_value on a missing key refuses the whole Txn; nothing changes
    req = _txn_of({b"q": b"1"}, [])
    req.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=b"gone", ignore_value=True))
    res = _apply(sm, txn, 4, encode_txn(b"", 0, 0, req))
    assert res.error == "etcdserver: key not found" and res.revision == 4
    assert sm.read(txn, b"q") is None


def test_lmdb_defragment_shrinks_the_file_and_keeps_the_data(tmp_path) -> None:
    """Maintenance.Defragment on LMDB: a compacting copy swapped in; reads keep working."""
    from kvstore.raft.types import HardState
    from kvstore.storage.lmdb_store import LmdbNodeStore

    with LmdbNodeStore.open(tmp_path / "db", shards=4, vnodes=4) as store:
        entries = [Entry(term=1, index=i, data=encode_txn(
            b"", 0, 0, _txn_of({b"k%05d" % i: b"v" * 2000}, []))) for i in range(1, 801)]
        store.persist_and_apply(HardState(term=1, commit=800), entries, entries)
        wipe = _txn_of({}, [])
        wipe.success.add().request_delete_range.CopyFrom(
            rpc_pb2.DeleteRangeRequest(key=b"k00", range_end=b"k007"))
        last = [Entry(term=1, index=801, data=encode_txn(b"", 0, 0, wipe)),
                Entry(term=1, index=802, data=encode_compact(802))]
        store.persist_and_apply(HardState(term=1, commit=802), last, last)
        before = store.file_bytes()
        survivors = store.range(RR(key=b"k", range_end=b"l"))[0]
        store.defragment()
        assert store.file_bytes() < before
        assert store.range(RR(key=b"k", range_end=b"l"))[0] == survivors
        assert len(survivors.kvs) == 101 and store.revisions() == (802, 802)
        more = [Entry(term=1, index=803, data=encode_txn(b"", 0, 0, _txn_of({b"z": b"1"}, [])))]
        store.persist_and_apply(HardState(term=1, commit=803), more, more)
        assert store.range(RR(key=b"z"))[0].kvs[0].mod_revision == 803


def test_hash_check_digest_does_not_depend_on_batching() -> None:
    """Members batch entries differently; a hash check in the middle of a batch must see
    the revision the entries before it made (it is cached for the batch)."""
    from kvstore.state.commands import encode_hash_check

    datas = [encode_txn(b"", 0, 0, _txn_of({b"a": b"1"}, [])), encode_hash_check(),
             encode_txn(b"", 0, 0, _txn_of({b"b": b"2"}, [])), encode_hash_check()]
    entries = [Entry(term=1, index=i + 1, data=d) for i, d in enumerate(datas)]
    sm = ShardedStateMachine(shards=2, vnodes=4)
    one_batch = sm.apply_batch(DictTxn({}), entries)
    txn = DictTxn({})
    one_by_one = [sm.apply_batch(txn, [e])[0] for e in entries]
    assert [r.digest for r in one_batch] == [r.digest for r in one_by_one]
