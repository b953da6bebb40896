"""The replicated key-value state machine: sharded keys plus client sessions.

The logic is written against `KVTxn`, a tiny get/put/delete interface over (db name, key), so
the very same code runs inside one LMDB write transaction on a real node and over plain dicts
in the deterministic simulator (`DictTxn`). Applying is deterministic: it depends only on the
entries applied so far, never on time, randomness, or node identity, so replicas that apply
the same log hold byte-identical databases (compare them with `shard_digest`).

Databases used (names are the LMDB named-db names):
    shard-000 ... shard-NNN  the key index, routed by the consistent-hash ring
    mvcc, revs, khist        revisions and history (kvstore.state.mvcc)
    sessions                 exactly-once bookkeeping, one record per client

Client writes are etcd's data model (kvstore.state.mvcc, kvstore.state.kv_ops): kvstore's
put, delete and compare-and-swap are applied as the Txn they are equivalent to, so both APIs
share one write path.

Exactly-once (Raft thesis section 6.3). A client first registers a session: applying a
register entry creates a session whose id is derived from the entry's index (`session_id`),
so every replica assigns the same id and no id is ever handed out twice. A session keeps its
lowest_pending_seq and the results of the seqs >= it that were applied. Applying
(client_id, seq):
  * no such session     -> never registered, or evicted: NOT applied, reported `expired`.
  * already recorded    -> return the recorded result; nothing else changes (not even LRU).
  * seq < lowest pending -> it was answered and forgotten: not applied, reported `stale`.
  * otherwise           -> apply, record the result, raise lowest_pending_seq to
                           max(old, command's), drop recorded results below it.
A write never creates a session. It used to (with a client-chosen id), and that is how
eviction lost exactly-once: a retry of an applied write, arriving after its session was
evicted, re-created the session and was applied again. Nothing in (seq, lowest_pending_seq)
can tell such a retry from a first attempt. With registration nothing has to: a write is
applied only in a session that exists, and a session that was evicted never exists again.
An async client may have many writes in flight, so a session holds many results; at most
MAX_RESULTS_PER_SESSION: beyond that the oldest are dropped by raising lowest_pending_seq, so a
late retry of one of them is reported stale (safe) rather than applied twice.

Session bound: at most `max_sessions` sessions. Admitting a new one when full evicts the
session least recently used, measured by the log index of the last command that changed it
(its register entry, then its writes). That depends only on the log, so every replica evicts
the same session. An evicted client's writes are refused as expired; it registers a new
session, and a write of its that may have been applied before the eviction is reported to
it as such (never applied twice). Sessions that writes created implicitly before sessions
were registered (client-chosen ids, in existing data dirs) keep working until evicted.
Commands with an empty client_id bypass sessions entirely (applied every time, no dedup).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvstore.etcdpb import rpc_pb2
from kvstore.raft.types import Entry, EntryType
from kvstore.state import alarms, kv_ops, leases, membership
from kvstore.state.commands import ApplyResult, CommandDecodeError, decode
from kvstore.state.leases import LEASES_DB, LeaseChange
from kvstore.state.membership import MEMBERS_DB
from kvstore.state.mvcc import (
    ERR_LEASE_NOT_FOUND,
    KHIST_DB,
    MVCC_DB,
    REVS_DB,
    KeySpace,
    MvccError,
    Revisions,
)
from kvstore.state.ring import HashRing
from kvstore.v1 import raft_pb2

SESSIONS_DB = "sessions"
DEFAULT_MAX_SESSIONS = 100_000
MAX_RESULTS_PER_SESSION = 1024

# LMDB keys are at most 511 bytes. Longer client ids are stored under a 32-byte hash. A
# one-byte tag keeps the two forms apart. (User keys: see kvstore.state.mvcc.ikey.)
_MAX_INLINE_KEY = 400
_TAG_INLINE = b"="
_TAG_HASHED = b"#"

# Keys inside the sessions db.
_REC = b"c"  # _REC + session id -> encoded Session
_LRU = b"u"  # _LRU + 8-byte big-endian last_index -> session id (oldest sorts first)
_COUNT = b"n"  # -> 8-byte big-endian number of sessions

_U64 = struct.Struct(">Q")
_SESSION_ID_TAG = b"s"  # a registered session's id: this tag + the register entry's index
_SESSION_HEADER = struct.Struct(">QQI")  # lowest_pending_seq, last_index, result count
_SESSION_RESULT = struct.Struct(">QB")  # seq, ok


class KVTxn(Protocol):
    """One transaction over named databases of byte keys and values.

    Writes are visible to later reads in the same transaction; whether and when they become
    durable is the store's business (one LMDB commit per persist_and_apply).
    """

    def get(self, db: str, key: bytes) -> bytes | None: ...

    def put(self, db: str, key: bytes, value: bytes) -> None: ...

    def delete(self, db: str, key: bytes) -> bool:
        """Remove key; return whether it was present."""
        ...

    def first_key(self, db: str, prefix: bytes) -> bytes | None:
        """The smallest key starting with `prefix`, or None."""
        ...

    def items(self, db: str) -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs of `db` in ascending key order."""
        ...

    def seek(self, db: str, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of `db` with key >= `start`, ascending. Do not write to `db`
        while iterating."""
        ...

    def floor(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        """The pair with the largest key <= `key`, or None."""
        ...


class DictTxn:
    """KVTxn over `dict[db name, dict[key, value]]` with buffered writes.

    Writes go to an overlay and reach the dicts only on `commit()`, so an exception half-way
    through a batch leaves the state untouched, as an aborted LMDB transaction would.
    `first_key` and `items` scan the whole db: fine for the simulator's small state.
    """

    def __init__(self, dbs: dict[str, dict[bytes, bytes]]) -> None:
        self._dbs = dbs
        self._writes: dict[str, dict[bytes, bytes | None]] = {}

    def get(self, db: str, key: bytes) -> bytes | None:
        writes = self._writes.get(db)
        if writes is not None and key in writes:
            return writes[key]
        return self._dbs.get(db, {}).get(key)

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._writes.setdefault(db, {})[key] = bytes(value)

    def delete(self, db: str, key: bytes) -> bool:
        existed = self.get(db, key) is not None
        self._writes.setdefault(db, {})[key] = None
        return existed

    def _merged(self, db: str) -> dict[bytes, bytes]:
        merged = dict(self._dbs.get(db, {}))
        for key, value in self._writes.get(db, {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def first_key(self, db: str, prefix: bytes) -> bytes | None:
        return min((k for k in self._merged(db) if k.startswith(prefix)), default=None)

    def items(self, db: str) -> Iterator[tuple[bytes, bytes]]:
        merged = self._merged(db)
        for key in sorted(merged):
            yield key, merged[key]

    def seek(self, db: str, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        merged = self._merged(db)
        keys = sorted(merged)
        for key in keys[bisect_left(keys, start):]:
            yield key, merged[key]

    def floor(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        merged = self._merged(db)
        keys = sorted(merged)
        i = bisect_right(keys, key)
        return None if i == 0 else (keys[i - 1], merged[keys[i - 1]])

    def commit(self) -> None:
        """Make the buffered writes visible in the underlying dicts."""
        for db, writes in self._writes.items():
            target = self._dbs.setdefault(db, {})
            for key, value in writes.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        self._writes = {}


@dataclass(slots=True)
class Session:
    """Exactly-once state of one client (see the module docstring)."""

    lowest_pending_seq: int = 0
    last_index: int = 0  # log index of the last command that changed this session
    results: dict[int, bool] = field(default_factory=dict)  # seq -> ok, all seq >= lowest

    def encode(self) -> bytes:
        parts = [_SESSION_HEADER.pack(self.lowest_pending_seq, self.last_index, len(self.results))]
        parts.extend(_SESSION_RESULT.pack(s, ok) for s, ok in sorted(self.results.items()))
        return b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> Session:
        lowest, last, n = _SESSION_HEADER.unpack_from(raw)
        off = _SESSION_HEADER.size
        results: dict[int, bool] = {}
        for _ in range(n):
            seq, ok = _SESSION_RESULT.unpack_from(raw, off)
            results[seq] = bool(ok)
            off += _SESSION_RESULT.size
        return cls(lowest, last, results)


def _storage_key(raw: bytes) -> bytes:
    if len(raw) <= _MAX_INLINE_KEY:
        return _TAG_INLINE + raw
    return _TAG_HASHED + hashlib.blake2b(raw, digest_size=32).digest()


def session_id(index: int) -> bytes:
    """The id of the session created by the register entry at log `index`.

    Derived from the log, so replicas agree on it without talking, and unique because an
    index is applied once: an evicted session's id never names a new session.
    """
    return _SESSION_ID_TAG + _U64.pack(index)


@dataclass
class _Batch:
    """What applying one batch remembers between its entries: session records decoded
    once (written back once, at the end) and whether alarms refuse writes."""

    sessions: dict[bytes, Session | None] = field(default_factory=dict)
    dirty: set[bytes] = field(default_factory=set)
    refusing: int | None = None  # alarm type refusing puts; None: not looked up yet
    revs: Revisions | None = None  # current/compacted revision, loaded at the first write

    def session(self, txn: KVTxn, sid: bytes) -> Session | None:
        if sid not in self.sessions:
            raw = txn.get(SESSIONS_DB, _REC + sid)
            self.sessions[sid] = None if raw is None else Session.decode(raw)
        return self.sessions[sid]


def shard_db_name(shard: int) -> str:
    return f"shard-{shard:03d}"


class ShardedStateMachine:
    """Deterministic apply logic; holds no state of its own besides the (immutable) ring."""

    def __init__(
        self, shards: int = 16, vnodes: int = 64, max_sessions: int = DEFAULT_MAX_SESSIONS
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.ring = HashRing(shards, vnodes)
        self.max_sessions = max_sessions
        self._shard_dbs = [shard_db_name(s) for s in range(shards)]
        self.space = KeySpace(self._shard_dbs, self.ring.shard_for)

    @property
    def db_names(self) -> list[str]:
        """Every database the machine touches; the store must create them all."""
        return [SESSIONS_DB, MVCC_DB, REVS_DB, KHIST_DB, LEASES_DB, MEMBERS_DB, *self._shard_dbs]

    @property
    def shard_dbs(self) -> list[str]:
        return list(self._shard_dbs)

    # -- reads -------------------------------------------------------------------------

    def read(self, txn: KVTxn, key: bytes) -> bytes | None:
        """Current value of `key`, or None if absent."""
        rec = self.space.current(txn, key)
        return None if rec is None else rec.value

    def range(self, txn: KVTxn, req: rpc_pb2.RangeRequest) -> tuple[rpc_pb2.RangeResponse, int]:
        """(answer without header, current revision); raises MvccError."""
        revs = Revisions(txn)
        return kv_ops.range_(self.space, txn, revs, req), revs.current

    def revisions(self, txn: KVTxn) -> tuple[int, int]:
        """(current revision, compacted revision)."""
        revs = Revisions(txn)
        return revs.current, revs.compacted

    def hash_kv(self, txn: KVTxn, revision: int) -> tuple[int, int, int]:
        """(hash, compacted revision, revision hashed) as etcd's HashKV; raises MvccError."""
        return self.space.hash_kv(txn, Revisions(txn), revision)

    def session(self, txn: KVTxn, client_id: bytes) -> Session | None:
        raw = txn.get(SESSIONS_DB, _REC + _storage_key(client_id))
        return None if raw is None else Session.decode(raw)

    def session_count(self, txn: KVTxn) -> int:
        raw = txn.get(SESSIONS_DB, _COUNT)
        return 0 if raw is None else _U64.unpack(raw)[0]

    def hash_all(self, txn: KVTxn) -> int:
        """crc32 over every database in name order (etcd's Maintenance.Hash)."""
        crc = 0
        for db in sorted(self.db_names):
            for key, value in txn.items(db):
                crc = zlib.crc32(value, zlib.crc32(key, crc))
        return crc

    def state_digest(self, txn: KVTxn) -> str:
        """One hash over every shard and the history (what members compare to detect
        corruption)."""
        h = hashlib.blake2b(digest_size=16)
        for s in range(len(self._shard_dbs)):
            h.update(self.shard_digest(txn, s).encode())
        h.update(self.history_digest(txn).encode())
        return h.hexdigest()

    def history_digest(self, txn: KVTxn) -> str:
        """Hex digest of the revisions, history and leases (equal on replicas in sync)."""
        h = hashlib.blake2b(digest_size=16)
        for db in (MVCC_DB, REVS_DB, KHIST_DB, LEASES_DB):
            h.update(self._db_digest(txn, db).encode())
        return h.hexdigest()

    def shard_digest(self, txn: KVTxn, shard: int) -> str:
        """Hex digest of one shard's records in key order; equal on replicas in sync."""
        return self._db_digest(txn, self._shard_dbs[shard])

    @staticmethod
    def _db_digest(txn: KVTxn, db: str) -> str:
        h = hashlib.blake2b(digest_size=16)
        for key, value in txn.items(db):
            h.update(_U64.pack(len(key)))
            h.update(key)
            h.update(_U64.pack(len(value)))
            h.update(value)
        return h.hexdigest()

    # -- apply -------------------------------------------------------------------------

    def apply(self, txn: KVTxn, entry: Entry) -> ApplyResult:
        """Apply one committed entry. Callers apply entries exactly once, in index order."""
        return self.apply_batch(txn, [entry])[0]

    def apply_batch(self, txn: KVTxn, entries: Sequence[Entry]) -> list[ApplyResult]:
        """Apply committed entries in index order, with the same results as applying them
        one by one: replicas batch differently, so batching must never change an outcome.

        A session record is decoded once per batch and written back once at its end (a
        client with many requests in flight has a large record); the LRU index is kept
        exact at every step because eviction consults it.
        """
        batch = _Batch()
        results = [self._apply_one(txn, e, batch) for e in entries]
        for sid in batch.dirty:
            session = batch.sessions[sid]
            assert session is not None
            txn.put(SESSIONS_DB, _REC + sid, session.encode())
        if batch.revs is not None:
            batch.revs.flush(txn)
        return results

    def _apply_one(self, txn: KVTxn, entry: Entry, batch: _Batch) -> ApplyResult:
        if entry.type == EntryType.NOOP or not entry.data:
            return ApplyResult(entry.index, b"", 0, ok=True, stale=False)
        if entry.type == EntryType.CONF_CHANGE:
            try:
                now = membership.apply_change(txn, entry.data)
            except membership.ConfChangeError as err:
                return ApplyResult(entry.index, b"", 0, ok=False, stale=False, error=str(err))
            return ApplyResult(entry.index, b"", 0, ok=True, stale=False, members=tuple(now))
        try:
            cmd = decode(entry.data)
        except CommandDecodeError:
            return ApplyResult(entry.index, b"", 0, ok=False, stale=False, malformed=True)
        op = cmd.WhichOneof("op")
        if op == "register":
            return self._register(txn, entry.index, batch)
        if op == "hash_check":
            if batch.revs is not None:
                batch.revs.flush(txn)  # the digest must not depend on where batches end
            return ApplyResult(entry.index, b"", 0, ok=True, stale=False,
                               digest=self.state_digest(txn))
        if op == "alarm":
            batch.refusing = None  # alarms may change: look again at the next write
            return ApplyResult(entry.index, b"", 0, ok=alarms.apply(txn, cmd.alarm), stale=False)
        if batch.revs is None:
            batch.revs = Revisions(txn)
        if op in ("lease_grant", "lease_revoke"):
            return self._lease_op(txn, cmd, entry.index, batch)
        if op == "compact":
            try:
                self.space.compact(txn, batch.revs, cmd.compact.revision)
            except MvccError as err:
                return ApplyResult(entry.index, b"", 0, ok=False, stale=False,
                                   revision=batch.revs.current, error=err.message)
            return ApplyResult(entry.index, b"", 0, ok=True, stale=False,
                               revision=batch.revs.current)
        cid, seq = cmd.client_id, cmd.seq
        if not cid:
            refused = self._refused_by_alarm(txn, cmd, batch)
            if refused:
                return ApplyResult(entry.index, cid, seq, ok=False, stale=False, alarm=refused,
                                   revision=batch.revs.current)
            return self._execute(txn, cmd, entry.index, batch.revs)

        sid = _storage_key(cid)
        session = batch.session(txn, sid)
        if session is None:
            # Evicted (or never registered): whether this is a retry of a write applied
            # before the eviction cannot be known, so it is not applied now either.
            return ApplyResult(entry.index, cid, seq, ok=False, stale=False, expired=True)
        if seq in session.results:
            ok = session.results[seq]
            return ApplyResult(entry.index, cid, seq, ok=ok, stale=False, duplicate=True,
                               revision=batch.revs.current)
        if seq < session.lowest_pending_seq:
            return ApplyResult(entry.index, cid, seq, ok=False, stale=True)

        refused = self._refused_by_alarm(txn, cmd, batch)
        if refused:
            return ApplyResult(entry.index, cid, seq, ok=False, stale=False, alarm=refused,
                               revision=batch.revs.current)
        result = self._execute(txn, cmd, entry.index, batch.revs)
        if result.error:
            # Refused before anything changed (as etcd's applier does); not recorded, so
            # a retry is judged afresh.
            return result
        txn.delete(SESSIONS_DB, _LRU + _U64.pack(session.last_index))
        self._record(session, seq, cmd.lowest_pending_seq, result.ok)
        session.last_index = entry.index
        batch.dirty.add(sid)
        txn.put(SESSIONS_DB, _LRU + _U64.pack(entry.index), sid)
        return result

    def _register(self, txn: KVTxn, index: int, batch: _Batch) -> ApplyResult:
        """Create the session of the register entry at `index` (admitting it may evict
        the least recently used one)."""
        cid = session_id(index)
        sid = _storage_key(cid)
        old = batch.session(txn, sid)
        if old is not None:
            # Only a pre-registration client could have chosen this id for itself: its
            # session makes room for the new one, which starts with nothing recorded.
            txn.delete(SESSIONS_DB, _LRU + _U64.pack(old.last_index))
        else:
            victim = self._admit(txn)
            if victim is not None and victim in batch.sessions:
                batch.sessions[victim] = None
                batch.dirty.discard(victim)
        batch.sessions[sid] = Session(last_index=index)
        batch.dirty.add(sid)
        txn.put(SESSIONS_DB, _LRU + _U64.pack(index), sid)
        return ApplyResult(index, cid, 0, ok=True, stale=False, registered=True)

    @staticmethod
    def _record(session: Session, seq: int, lowest_pending_seq: int, ok: bool) -> None:
        results = session.results
        lowest = session.lowest_pending_seq
        if lowest_pending_seq > lowest:
            lowest = lowest_pending_seq
            for s in [s for s in results if s < lowest]:
                del results[s]
        if seq >= lowest:  # a client claiming seq is no longer pending gets nothing recorded
            results[seq] = ok
        if len(results) > MAX_RESULTS_PER_SESSION:
            # Forget the oldest; a retry of them then reports stale instead of re-applying.
            keep = sorted(results)[-MAX_RESULTS_PER_SESSION:]
            lowest = keep[0]
            session.results = {s: results[s] for s in keep}
        session.lowest_pending_seq = lowest

    def _admit(self, txn: KVTxn) -> bytes | None:
        """Make room for one new session, evicting the least recently used when full;
        returns the evicted session's id."""
        count = self.session_count(txn)
        if count >= self.max_sessions:
            oldest = txn.first_key(SESSIONS_DB, _LRU)
            assert oldest is not None, "session count says full but the LRU index is empty"
            victim = txn.get(SESSIONS_DB, oldest)
            assert victim is not None
            txn.delete(SESSIONS_DB, oldest)
            txn.delete(SESSIONS_DB, _REC + victim)
            return victim
        txn.put(SESSIONS_DB, _COUNT, _U64.pack(count + 1))
        return None

    @staticmethod
    def _refused_by_alarm(txn: KVTxn, cmd: raft_pb2.Command, batch: _Batch) -> int:
        """The alarm type that refuses this write (0: none). Deletes stay allowed: they are
        how an operator frees space under NOSPACE. Looked up once per batch (and again
        after an alarm entry), not once per write."""
        op = cmd.WhichOneof("op")
        if op not in ("put", "cas", "lease_grant") and not (
                op == "txn" and kv_ops.has_put(cmd.txn)):
            return 0
        if batch.refusing is None:
            raised = alarms.active(txn) if alarms.writes_blocked(txn) else []
            batch.refusing = raised[0].type if raised else 0
        return batch.refusing

    def active_alarms(self, txn: KVTxn) -> list[alarms.Alarm]:
        return alarms.active(txn)

    def _lease_op(self, txn: KVTxn, cmd: raft_pb2.Command, index: int,
                  batch: _Batch) -> ApplyResult:
        """Grant (refused under an alarm, as etcd's capped applier does) or revoke."""
        revs = batch.revs
        assert revs is not None
        if cmd.WhichOneof("op") == "lease_grant":
            lid, ttl = cmd.lease_grant.ID, cmd.lease_grant.TTL
            refused = self._refused_by_alarm(txn, cmd, batch)
            if refused:
                return ApplyResult(index, b"", 0, ok=False, stale=False, alarm=refused,
                                   revision=revs.current)
            error = ""
            if lid <= 0 or leases.exists(txn, lid):
                error = leases.ERR_LEASE_EXISTS if lid > 0 else ERR_LEASE_NOT_FOUND
            elif ttl > leases.MAX_LEASE_TTL:
                error = leases.ERR_LEASE_TTL_TOO_LARGE
            if error:
                return ApplyResult(index, b"", 0, ok=False, stale=False, revision=revs.current,
                                   error=error)
            leases.grant(txn, lid, ttl)
            return ApplyResult(index, b"", 0, ok=True, stale=False, revision=revs.current,
                               lease=LeaseChange("grant", lid, ttl))
        lid = cmd.lease_revoke.ID
        try:
            kv_ops.revoke_lease(self.space, txn, revs, lid)
        except MvccError as err:
            return ApplyResult(index, b"", 0, ok=False, stale=False, revision=revs.current,
                               error=err.message)
        return ApplyResult(index, b"", 0, ok=True, stale=False, revision=revs.current,
                           lease=LeaseChange("revoke", lid))

    def events(self, txn: KVTxn, start_rev: int, key: bytes, range_end: bytes,
               prev_kv: bool = False, limit: int = 1000) -> tuple[list, int]:
        """Changes from `start_rev` on to keys in the range (see KeySpace.events)."""
        return self.space.events(txn, Revisions(txn), start_rev, key, range_end, prev_kv, limit)

    def lease(self, txn: KVTxn, lease_id: int) -> int | None:
        return leases.granted_ttl(txn, lease_id)

    def leases(self, txn: KVTxn) -> list[tuple[int, int]]:
        return leases.all_leases(txn)

    def lease_keys(self, txn: KVTxn, lease_id: int) -> list[bytes]:
        return leases.keys(txn, lease_id)

    def _execute(self, txn: KVTxn, cmd: raft_pb2.Command, index: int,
                 revs: Revisions) -> ApplyResult:
        """Apply a client write as the Txn it is (see the module docstring)."""
        req, ok_of = as_txn(cmd)
        cid, seq = cmd.client_id, cmd.seq
        try:
            resp = kv_ops.apply_txn(self.space, txn, revs, req)
        except MvccError as err:
            return ApplyResult(index, cid, seq, ok=False, stale=False, revision=revs.current,
                               error=err.message)
        return ApplyResult(index, cid, seq, ok=ok_of(resp), stale=False,
                           revision=revs.current, response=resp)


def as_txn(cmd: raft_pb2.Command) -> tuple[rpc_pb2.TxnRequest,
                                           Callable[[rpc_pb2.TxnResponse], bool]]:
    """The Txn a client write is, and how to read its `ok` from the Txn's answer: put ->
    True; delete -> the key existed; compare-and-swap -> it swapped; txn -> succeeded."""
    op = cmd.WhichOneof("op")
    if op == "txn":
        return cmd.txn, _succeeded
    req = rpc_pb2.TxnRequest()
    if op == "put":
        req.success.add().request_put.CopyFrom(
            rpc_pb2.PutRequest(key=cmd.put.key, value=cmd.put.value))
        return req, _always
    if op == "delete":
        req.success.add().request_delete_range.key = cmd.delete.key
        return req, _deleted_any
    assert op == "cas", op
    cas = cmd.cas
    if cas.expect_absent:
        req.compare.add(key=cas.key, target=rpc_pb2.Compare.VERSION,
                        result=rpc_pb2.Compare.EQUAL, version=0)
    else:
        req.compare.add(key=cas.key, target=rpc_pb2.Compare.VALUE,
                        result=rpc_pb2.Compare.EQUAL, value=cas.expected)
    req.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=cas.key, value=cas.value))
    return req, _succeeded


def _succeeded(resp: rpc_pb2.TxnResponse) -> bool:
    return resp.succeeded


def _always(resp: rpc_pb2.TxnResponse) -> bool:
    return True


def _deleted_any(resp: rpc_pb2.TxnResponse) -> bool:
    return resp.responses[0].response_delete_range.deleted > 0
