"""Sharded state machine: operations, exactly-once sessions, eviction; run over both the
LMDB-transaction adapter (LmdbNodeStore) and the dict adapter (MemoryNodeStore)."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.raft.types import Entry, EntryType
from kvstore.state import machine as machine_module
from kvstore.state.commands import (
    ApplyResult,
    decode,
    encode_cas,
    encode_delete,
    encode_put,
    encode_register,
)
from kvstore.state.machine import SESSIONS_DB, DictTxn, Session, ShardedStateMachine, session_id
from kvstore.storage.lmdb_store import LmdbNodeStore
from kvstore.storage.memory_store import MemoryNodeStore

A = b"client-a"  # a client id no register entry ever created


class Node:
    """Appends each command as the next entry and commits it in the same call."""

    def __init__(self, store: LmdbNodeStore | MemoryNodeStore) -> None:
        self.store = store

    def apply(self, data: bytes, etype: EntryType = EntryType.NORMAL) -> ApplyResult:
        entry = Entry(term=1, index=self.store.last_index() + 1, type=etype, data=data)
        (result,) = self.store.persist_and_apply(None, [entry], [entry])
        assert result.index == entry.index
        return result

    def register(self) -> bytes:
        """Apply a register entry; returns the new session's id."""
        result = self.apply(encode_register())
        assert result.registered and result.ok and result.seq == 0
        return result.client_id

    def put(self, cid: bytes, seq: int, key: bytes, value: bytes, low: int = 0) -> ApplyResult:
        return self.apply(encode_put(cid, seq, low, key, value))

    def delete(self, cid: bytes, seq: int, key: bytes, low: int = 0) -> ApplyResult:
        return self.apply(encode_delete(cid, seq, low, key))

    def cas(
        self, cid: bytes, seq: int, key: bytes, expected: bytes | None, value: bytes, low: int = 0
    ) -> ApplyResult:
        return self.apply(encode_cas(cid, seq, low, key, expected, value))

    def value(self, key: bytes) -> bytes | None:
        found, value, _ = self.store.get(key)
        return value if found else None


def _open(kind: str, tmp_path: Path, max_sessions: int) -> LmdbNodeStore | MemoryNodeStore:
    if kind == "lmdb":
        return LmdbNodeStore.open(tmp_path / "data", shards=4, vnodes=16, max_sessions=max_sessions)
    return MemoryNodeStore(shards=4, vnodes=16, max_sessions=max_sessions)


@pytest.fixture(params=["lmdb", "memory"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    store = _open(request.param, tmp_path, max_sessions=3)
    yield Node(store)
    store.close()


def test_put_get_delete(node: Node) -> None:
    a = node.register()
    assert node.put(a, 1, b"k", b"v1").ok
    assert node.value(b"k") == b"v1"
    assert node.put(a, 2, b"k", b"v2").ok
    assert node.value(b"k") == b"v2"
    assert node.delete(a, 3, b"k").ok is True
    assert node.value(b"k") is None
    assert node.delete(a, 4, b"k").ok is False
    assert node.value(b"missing") is None
    assert node.store.get(b"k") == (False, b"", 5)


def test_empty_value_is_present(node: Node) -> None:
    node.put(b"", 0, b"k", b"")
    assert node.store.get(b"k")[:2] == (True, b"")


def test_cas(node: Node) -> None:
    a = node.register()
    assert node.cas(a, 1, b"k", b"x", b"v1").ok is False  # absent is not equal to b"x"
    assert node.cas(a, 2, b"k", b"", b"v1").ok is False  # nor to b""
    assert node.value(b"k") is None
    assert node.cas(a, 3, b"k", None, b"v1").ok is True  # expect_absent
    assert node.cas(a, 4, b"k", None, b"v2").ok is False  # present now
    assert node.value(b"k") == b"v1"
    assert node.cas(a, 5, b"k", b"wrong", b"v2").ok is False
    assert node.cas(a, 6, b"k", b"v1", b"v2").ok is True
    assert node.value(b"k") == b"v2"


def test_long_keys_beyond_lmdb_key_limit(node: Node) -> None:
    long_a, long_b = b"a" * 4096, b"a" * 4095 + b"b"
    a = node.register()
    node.put(a, 1, long_a, b"va")
    node.put(a, 2, long_b, b"vb")
    assert node.value(long_a) == b"va"
    assert node.value(long_b) == b"vb"
    assert node.cas(a, 3, long_a, b"va", b"va2").ok
    assert node.delete(a, 4, long_b).ok
    assert (node.value(long_a), node.value(long_b)) == (b"va2", None)


def test_duplicate_delete_reports_recorded_result_without_reapplying(node: Node) -> None:
    a, b = node.register(), node.register()
    node.put(a, 1, b"k", b"v1")
    first = node.delete(a, 2, b"k")
    assert first.ok is True and not first.duplicate
    node.put(b, 1, b"k", b"v2")  # someone else recreates the key
    retry = node.delete(a, 2, b"k")
    assert (retry.ok, retry.duplicate, retry.stale) == (True, True, False)
    assert node.value(b"k") == b"v2"  # the retry did not delete again


def test_duplicate_cas_does_not_swap_again(node: Node) -> None:
    a, b = node.register(), node.register()
    node.put(a, 1, b"k", b"old")
    assert node.cas(a, 2, b"k", b"old", b"new").ok
    node.put(b, 1, b"k", b"old")
    retry = node.cas(a, 2, b"k", b"old", b"new")
    assert retry.ok and retry.duplicate
    assert node.value(b"k") == b"old"
    failed = node.cas(a, 3, b"k", b"nope", b"x")
    node.put(b, 2, b"k", b"nope")
    assert node.cas(a, 3, b"k", b"nope", b"x").ok is False  # recorded failure stays a failure
    assert node.value(b"k") == b"nope"
    assert failed.ok is False


def test_duplicate_put_changes_nothing(node: Node) -> None:
    a, b = node.register(), node.register()
    node.put(a, 1, b"k", b"v1")
    node.put(b, 1, b"k", b"v2")
    assert node.put(a, 1, b"k", b"v1").duplicate
    assert node.value(b"k") == b"v2"


def test_async_client_keeps_many_results_out_of_order(node: Node) -> None:
    # Seqs 1..4 in flight at once; the log holds them in a different order.
    a = node.register()
    for seq in (3, 1, 4, 2):
        node.put(a, seq, b"k%d" % seq, b"v", low=1)
    session = node.store.session(a)
    assert session is not None
    assert sorted(session.results) == [1, 2, 3, 4]
    for seq in (1, 2, 3, 4):
        assert node.put(a, seq, b"k%d" % seq, b"other", low=1).duplicate
    assert node.value(b"k1") == b"v"


def test_lowest_pending_seq_prunes_and_makes_old_retries_stale(node: Node) -> None:
    a = node.register()
    node.put(a, 1, b"k", b"v1", low=1)
    node.put(a, 2, b"k", b"v2", low=1)
    node.put(a, 3, b"k", b"v3", low=1)
    node.put(a, 4, b"j", b"w4", low=3)  # seqs 1 and 2 were answered
    session = node.store.session(a)
    assert session is not None
    assert session.lowest_pending_seq == 3
    assert sorted(session.results) == [3, 4]
    stale = node.put(a, 2, b"k", b"v2", low=1)
    assert (stale.ok, stale.stale, stale.duplicate) == (False, True, False)
    assert node.value(b"k") == b"v3"  # not applied
    assert node.put(a, 3, b"k", b"v3", low=3).duplicate
    # A lower lowest_pending_seq never lowers the session's.
    node.put(a, 5, b"j", b"w5", low=1)
    assert node.store.session(a).lowest_pending_seq == 3  # type: ignore[union-attr]


def test_results_per_session_are_bounded_safely(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine_module, "MAX_RESULTS_PER_SESSION", 3)
    a = node.register()
    for seq in range(1, 6):  # a client that never advances lowest_pending_seq
        node.put(a, seq, b"k", b"v%d" % seq, low=1)
    session = node.store.session(a)
    assert session is not None
    assert sorted(session.results) == [3, 4, 5]
    assert session.lowest_pending_seq == 3
    # The forgotten seqs are refused as stale, never applied twice.
    assert node.put(a, 1, b"k", b"again", low=1).stale
    assert node.value(b"k") == b"v5"


def test_register_creates_a_session_named_by_its_entry_index(node: Node) -> None:
    node.apply(b"", EntryType.NOOP)
    result = node.apply(encode_register())
    assert result == ApplyResult(2, session_id(2), 0, ok=True, stale=False, registered=True)
    assert session_id(2) == b"s" + (2).to_bytes(8, "big")
    session = node.store.session(result.client_id)
    assert session is not None and session.results == {} and session.last_index == 2
    assert node.store.session_count() == 1
    assert node.register() == session_id(3)  # every registration is a new session


def test_write_without_a_session_is_expired_and_changes_nothing(node: Node) -> None:
    a = node.register()
    before = node.store.shard_digests()
    for cid in (A, session_id(99), session_id(1) + b"x"):
        for result in (node.put(cid, 1, b"k", b"v"), node.delete(cid, 2, b"k"),
                       node.cas(cid, 3, b"k", None, b"v")):
            assert (result.expired, result.ok, result.stale, result.duplicate) == (
                True, False, False, False)
            assert result.client_id == cid
    assert node.store.shard_digests() == before
    assert node.store.session(A) is None
    assert node.store.session_count() == 1
    assert node.store.session(a).last_index == 1  # type: ignore[union-attr]


def test_session_eviction_is_lru_by_log_index(node: Node) -> None:
    # max_sessions=3 in the fixture.
    a, b, c = node.register(), node.register(), node.register()
    node.put(a, 1, b"a", b"1")
    node.put(b, 1, b"b", b"1")
    node.put(c, 1, b"c", b"1")
    node.put(a, 2, b"a", b"2")  # a is now the most recently used
    assert node.store.session_count() == 3
    d = node.register()  # evicts b, the least recently used
    assert node.store.session_count() == 3
    assert node.store.session(b) is None
    assert all(node.store.session(x) is not None for x in (a, c, d))
    node.register()
    assert node.store.session(c) is None  # c was next in line
    assert node.store.session_count() == 3


def test_evicted_session_refuses_retries_and_new_writes_never_reapplying(node: Node) -> None:
    """The bug that made sessions server-assigned: a retry of an applied write arriving
    after its session was evicted used to re-create the session and be applied again."""
    a = node.register()
    node.put(a, 1, b"k", b"v1", low=1)
    node.cas(a, 2, b"n", None, b"first", low=1)
    for _ in range(3):  # max_sessions=3: three more sessions push a out
        node.register()
    assert node.store.session(a) is None
    b = node.register()
    node.put(b, 1, b"k", b"v2")
    node.delete(b, 2, b"n")
    before = node.store.shard_digests()
    count = node.store.session_count()
    for retry in (node.put(a, 1, b"k", b"v1", low=1), node.cas(a, 2, b"n", None, b"first")):
        assert retry.expired and not retry.ok and not retry.duplicate
    assert node.put(a, 3, b"k", b"v3", low=3).expired  # a new write in it too
    assert (node.value(b"k"), node.value(b"n")) == (b"v2", None)
    assert node.store.shard_digests() == before
    assert node.store.session(a) is None  # refusing never re-creates the session
    assert node.store.session_count() == count


def test_duplicate_does_not_touch_lru(node: Node) -> None:
    a, b, c = node.register(), node.register(), node.register()
    node.put(a, 1, b"a", b"1")
    node.put(b, 1, b"b", b"1")
    node.put(c, 1, b"c", b"1")
    assert node.put(a, 1, b"a", b"1").duplicate  # "changes nothing else"
    node.register()
    assert node.store.session(a) is None


def _legacy_sessions(machine: ShardedStateMachine, txn: DictTxn, *cids: bytes) -> None:
    """The session table as versions before RegisterSession left it: a session per
    client-chosen id, created by its first write at log index 1, 2, ... with seq 1."""
    for index, cid in enumerate(cids, start=1):
        sid = b"=" + cid  # an inline storage key
        txn.put(SESSIONS_DB, b"c" + sid, Session(1, index, {1: True}).encode())
        txn.put(SESSIONS_DB, b"u" + struct.pack(">Q", index), sid)
    txn.put(SESSIONS_DB, b"n", struct.pack(">Q", len(cids)))


def test_sessions_created_by_earlier_versions_keep_working() -> None:
    sm = ShardedStateMachine(shards=2, vnodes=8, max_sessions=3)
    txn = DictTxn({})
    old_a, old_b = b"\x01" * 16, b"\x02" * 16  # random ids, as clients chose them then
    _legacy_sessions(sm, txn, old_a, old_b)
    assert sm.session_count(txn) == 2 and sm.session(txn, old_a) is not None

    def apply(index: int, data: bytes) -> ApplyResult:
        return sm.apply(txn, Entry(term=1, index=index, data=data))

    assert apply(3, encode_put(old_a, 1, 1, b"k", b"v1")).duplicate
    res = apply(4, encode_put(old_a, 2, 1, b"k", b"v2"))
    assert (res.index, res.client_id, res.seq, res.ok, res.stale) == (4, old_a, 2, True, False)
    assert sm.read(txn, b"k") == b"v2"
    assert apply(5, encode_register()).registered  # fills the table
    assert apply(6, encode_register()).registered  # evicts old_b, the least recently used
    assert sm.session(txn, old_b) is None and sm.session(txn, old_a) is not None
    assert apply(7, encode_put(old_b, 2, 2, b"k", b"x")).expired
    assert sm.read(txn, b"k") == b"v2"
    assert sm.session_count(txn) == 3


def test_registration_replaces_an_old_session_that_chose_the_same_id() -> None:
    sm = ShardedStateMachine(shards=2, vnodes=8, max_sessions=3)
    txn = DictTxn({})
    _legacy_sessions(sm, txn, session_id(5), b"other")
    result = sm.apply(txn, Entry(term=1, index=5, data=encode_register()))
    assert result.registered and result.client_id == session_id(5)
    assert sm.session(txn, session_id(5)) == Session(0, 5, {})  # starts with nothing recorded
    assert sm.session_count(txn) == 2  # took the old one's place
    sm.apply(txn, Entry(term=1, index=6, data=encode_register()))
    sm.apply(txn, Entry(term=1, index=7, data=encode_register()))  # evicts b"other" (index 2)
    assert sm.session(txn, b"other") is None and sm.session(txn, session_id(5)) is not None


def test_empty_client_id_bypasses_sessions(node: Node) -> None:
    node.put(b"", 1, b"k", b"v")
    assert node.delete(b"", 1, b"k").ok
    assert node.delete(b"", 1, b"k").ok is False  # applied again, not deduplicated
    assert node.store.session_count() == 0


def test_noop_empty_and_malformed_entries_only_advance_applied(node: Node) -> None:
    before = node.store.shard_digests()
    assert node.apply(b"", EntryType.NOOP).ok
    assert node.apply(b"").ok
    bad = node.apply(b"\xff\xff\xff")
    assert bad.malformed and not bad.ok
    no_op = node.apply(encode_put(A, 1, 0, b"k", b"v")[:4])  # truncated protobuf
    assert no_op.malformed
    assert node.store.applied_index() == 4
    assert node.store.shard_digests() == before
    assert node.store.session_count() == 0


def test_commands_round_trip() -> None:
    register = decode(encode_register())
    assert register.WhichOneof("op") == "register"
    assert (register.client_id, register.seq, register.lowest_pending_seq) == (b"", 0, 0)
    cmd = decode(encode_cas(A, 7, 3, b"k", None, b"v"))
    assert (cmd.client_id, cmd.seq, cmd.lowest_pending_seq) == (A, 7, 3)
    assert cmd.cas.expect_absent and cmd.cas.value == b"v"
    cmd = decode(encode_cas(A, 7, 3, b"k", b"", b"v"))
    assert not cmd.cas.expect_absent and cmd.cas.expected == b""


def _random_log(seed: int, n: int) -> list[bytes]:
    """A log of several clients' writes: sessions registered (entry i creates session i),
    used, re-registered; retries of earlier seqs, also after their session was evicted;
    writes naming sessions never registered; writes without a session."""
    rng = random.Random(seed)
    clients = list(range(6))
    session: dict[int, bytes | None] = dict.fromkeys(clients)
    seqs = dict.fromkeys(clients, 0)
    out: list[bytes] = []
    while len(out) < n:
        c = rng.choice(clients)
        r = rng.random()
        if session[c] is None or r < 0.05:
            out.append(encode_register())
            session[c] = session_id(len(out))  # this entry's index
            continue
        cid: bytes = session[c]  # type: ignore[assignment]
        if r < 0.08:
            cid = b"s-never-registered"
        elif r < 0.1:
            cid = b""
        if seqs[c] and rng.random() < 0.2:  # a retry of an earlier seq
            seq = rng.randint(max(1, seqs[c] - 5), seqs[c])
        else:
            seqs[c] += 1
            seq = seqs[c]
        low = max(1, seqs[c] - rng.randint(0, 8))
        key = b"k%d" % rng.randint(0, 30)
        value = b"v%d" % rng.randint(0, 3)
        op = rng.random()
        if op < 0.4:
            out.append(encode_put(cid, seq, low, key, value))
        elif op < 0.6:
            out.append(encode_delete(cid, seq, low, key))
        else:
            expected = None if rng.random() < 0.3 else b"v%d" % rng.randint(0, 3)
            out.append(encode_cas(cid, seq, low, key, expected, value))
    return out


def test_lmdb_and_memory_stores_agree(tmp_path: Path) -> None:
    log = _random_log(seed=7, n=400)
    entries = [Entry(term=1, index=i + 1, data=d) for i, d in enumerate(log)]
    stores = [_open("lmdb", tmp_path, max_sessions=4), _open("memory", tmp_path, max_sessions=4)]
    try:
        outcomes = []
        for store in stores:
            results: list[ApplyResult] = []
            for lo in range(0, len(entries), 37):  # batches of several entries
                batch = entries[lo : lo + 37]
                results += store.persist_and_apply(None, batch, batch)
            outcomes.append(
                (results, store.shard_digests(), [store.get(b"k%d" % i) for i in range(31)])
            )
        assert outcomes[0] == outcomes[1]
        results = outcomes[0][0]
        assert any(r.duplicate for r in results) and any(r.stale for r in results)
        assert any(r.expired for r in results) and any(r.registered for r in results)
        assert len(set(outcomes[0][1])) > 1  # the shards hold different data
    finally:
        for store in stores:
            store.close()


def test_dict_txn_is_atomic_until_commit() -> None:
    dbs: dict[str, dict[bytes, bytes]] = {"x": {b"a": b"1"}}
    txn = DictTxn(dbs)
    txn.put("x", b"b", b"2")
    assert txn.delete("x", b"a")
    assert txn.get("x", b"a") is None and txn.get("x", b"b") == b"2"
    assert list(txn.items("x")) == [(b"b", b"2")]
    assert txn.first_key("x", b"a") is None and txn.first_key("x", b"") == b"b"
    assert dbs == {"x": {b"a": b"1"}}
    txn.commit()
    assert dbs == {"x": {b"b": b"2"}}


def test_machine_directly_over_dict_txn() -> None:
    sm = ShardedStateMachine(shards=2, vnodes=8)
    dbs: dict[str, dict[bytes, bytes]] = {}
    txn = DictTxn(dbs)
    assert sm.apply(txn, Entry(term=1, index=1, data=encode_register())).registered
    a = session_id(1)
    res = sm.apply(txn, Entry(term=1, index=2, data=encode_put(a, 1, 0, b"k", b"v")))
    assert (res.index, res.client_id, res.seq, res.ok, res.stale) == (2, a, 1, True, False)
    assert res.revision == 2 and res.response is not None  # the first write: revision 2
    assert sm.read(txn, b"k") == b"v"
    txn.commit()
    assert sm.read(DictTxn(dbs), b"k") == b"v"


@pytest.mark.parametrize("seed", range(5))
def test_batch_boundaries_never_change_outcomes(seed: int) -> None:
    """Replicas apply the same log in differently sized batches; results and state must
    match one-by-one application exactly, including duplicates, pruning and eviction."""
    rng = random.Random(seed)
    entries = [Entry(1, i, data=d) for i, d in enumerate(_random_log(seed, 400), start=1)]

    def run(batch_sizes: list[int]) -> tuple[list[ApplyResult], dict]:
        sm = ShardedStateMachine(shards=4, vnodes=16, max_sessions=4)
        dbs: dict[str, dict[bytes, bytes]] = {}
        txn = DictTxn(dbs)
        results, i = [], 0
        sizes = iter(batch_sizes)
        while i < len(entries):
            n = next(sizes, 1)
            results.extend(sm.apply_batch(txn, entries[i : i + n]))
            i += n
        txn.commit()
        return results, dbs

    one_by_one = run([1] * len(entries))
    batched = run([rng.randint(1, 60) for _ in range(len(entries))])
    assert batched[0] == one_by_one[0]
    assert batched[1] == one_by_one[1]
    results = one_by_one[0]
    for kind in ("registered", "expired", "duplicate", "stale"):
        assert any(getattr(r, kind) for r in results), kind
    # Sessions were evicted (max_sessions=4) and their retries refused, never re-applied.
    assert sum(r.registered for r in results) > 4
