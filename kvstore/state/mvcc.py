"""Multi-version keys: one cluster-wide revision, per-key history, ordered ranges, compaction.

The data model is etcd's (its mvcc package): every write request that changes something
takes the next revision (a whole Txn is one revision; the keys it changes get sub-revisions
0, 1, 2 ... in order); every key carries create_revision, mod_revision, version (writes
since creation, reset by a delete) and lease. History is kept until a compaction, so a read
at an older revision answers what was true then.

Layout (LMDB named databases, or dicts in the simulator; all through `KVTxn`):

    shard-NNN  the key index, routed by the consistent-hash ring. One record per key that
               is alive or still has history: ikey(key) -> index record (alive flag,
               create/mod revision, version, lease, the key's history id, the current
               value). Current reads and ranges need only this.
    khist      per-key history: history id (12 bytes) + revision (8) -> sub-revision (4)
               + kind (1). A read at revision R finds the key's last change at or before R
               with one floor lookup.
    revs       every change in revision order: revision (8) + sub (4) -> event (kind,
               key, create revision, version, lease, value). What a historical read
               returns, and what watchers will replay.
    mvcc       b"rev" -> the current revision; b"compact" -> the compacted revision.

LMDB keys are at most 511 bytes and keys may be 4096, so the index key of a key longer than
400 bytes is its first 400 bytes plus a 16-byte hash, the full key kept in the record. That
keeps byte order except among long keys sharing their first 400 bytes, which sit next to
each other and are re-sorted by full key as a range passes them (`_ordered`).

A key's history id is the (revision, sub) of the first change that created its index
record, so it is unique and identical on every replica. Everything here is a deterministic
function of the entries applied.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from kvstore.etcdpb import kv_pb2

MVCC_DB = "mvcc"
REVS_DB = "revs"
KHIST_DB = "khist"

ERR_COMPACTED = "mvcc: required revision has been compacted"
ERR_FUTURE_REV = "mvcc: required revision is a future revision"
ERR_KEY_NOT_FOUND = "etcdserver: key not found"
ERR_LEASE_NOT_FOUND = "etcdserver: requested lease not found"

_MAX_INLINE_KEY = 400
_LONG_IKEY_LEN = _MAX_INLINE_KEY + 16
_U64 = struct.Struct(">Q")
_REV = struct.Struct(">QI")  # revision, sub
_HIST_VAL = struct.Struct(">IB")  # sub, kind
# alive, create, mod, version, lease, history id (rev, sub), full-key length (0: inline)
_INDEX = struct.Struct(">BQQQqQII")
# kind, create, version, lease, key length
_EVENT = struct.Struct(">BQQqI")
PUT, DELETE = 0, 1
_CUR = b"rev"
_COMPACT = b"compact"
FIRST_REVISION = 1  # an empty store is at revision 1, as etcd's


class MvccError(Exception):
    """A request the data model refuses; `message` is etcd's wording."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Txn(Protocol):
    """The part of kvstore.state.machine.KVTxn this module uses."""

    def get(self, db: str, key: bytes) -> bytes | None: ...
    def put(self, db: str, key: bytes, value: bytes) -> None: ...
    def delete(self, db: str, key: bytes) -> bool: ...
    def seek(self, db: str, start: bytes) -> Iterator[tuple[bytes, bytes]]: ...
    def floor(self, db: str, key: bytes) -> tuple[bytes, bytes] | None: ...


def ikey(key: bytes) -> bytes:
    """The index key of `key`: itself, or for a long key its first 400 bytes + a hash."""
    if len(key) <= _MAX_INLINE_KEY:
        return key
    return key[:_MAX_INLINE_KEY] + hashlib.blake2b(key, digest_size=16).digest()


@dataclass(slots=True)
class Record:
    """A key's index record: its current generation (if alive) and its history id."""

    key: bytes
    alive: bool
    create: int
    mod: int
    version: int
    lease: int
    hist: bytes  # 12 bytes: _REV of the change that created this record
    value: bytes

    def encode(self) -> bytes:
        hrev, hsub = _REV.unpack(self.hist)
        long_key = len(self.key) > _MAX_INLINE_KEY
        head = _INDEX.pack(self.alive, self.create, self.mod, self.version, self.lease,
                           hrev, hsub, len(self.key) if long_key else 0)
        return head + (self.key if long_key else b"") + self.value

    @classmethod
    def decode(cls, ik: bytes, raw: bytes) -> Record:
        alive, create, mod, version, lease, hrev, hsub, klen = _INDEX.unpack_from(raw)
        off = _INDEX.size
        key = ik
        if klen:
            key = bytes(raw[off:off + klen])
            off += klen
        return cls(key, bool(alive), create, mod, version, lease, _REV.pack(hrev, hsub),
                   bytes(raw[off:]))

    def kv(self, keys_only: bool = False) -> kv_pb2.KeyValue:
        return kv_pb2.KeyValue(key=self.key, create_revision=self.create,
                               mod_revision=self.mod, version=self.version,
                               value=b"" if keys_only else self.value, lease=self.lease)


def encode_event(kind: int, key: bytes, create: int, version: int, lease: int,
                 value: bytes) -> bytes:
    return _EVENT.pack(kind, create, version, lease, len(key)) + key + value


def decode_event(rev_key: bytes, raw: bytes) -> tuple[int, kv_pb2.KeyValue]:
    """(kind, KeyValue) of one `revs` record; mod_revision comes from its db key."""
    kind, create, version, lease, klen = _EVENT.unpack_from(raw)
    off = _EVENT.size
    mod, _ = _REV.unpack(rev_key)
    return kind, kv_pb2.KeyValue(key=bytes(raw[off:off + klen]), create_revision=create,
                                 mod_revision=mod, version=version, lease=lease,
                                 value=bytes(raw[off + klen:]))


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd's range convention: end b"" = the key alone; b"\\0" = every key >= start."""
    if not end:
        return key == start
    if end == b"\x00":
        return key >= start
    return start <= key < end


class Revisions:
    """The current and compacted revision of one apply batch (or one read), loaded once
    and written back once (`flush`)."""

    def __init__(self, txn: Txn) -> None:
        raw = txn.get(MVCC_DB, _CUR)
        self.current = FIRST_REVISION if raw is None else _U64.unpack(raw)[0]
        raw = txn.get(MVCC_DB, _COMPACT)
        self.compacted = 0 if raw is None else _U64.unpack(raw)[0]
        self.dirty = False

    def as_of(self, current: int) -> Revisions:
        """A read-only view with another current revision: what a Range inside a Txn that
        has already written sees (its own revision is readable before the Txn ends)."""
        view = copy.copy(self)
        view.current = current
        view.dirty = False
        return view

    def flush(self, txn: Txn) -> None:
        if self.dirty:
            txn.put(MVCC_DB, _CUR, _U64.pack(self.current))
            txn.put(MVCC_DB, _COMPACT, _U64.pack(self.compacted))
            self.dirty = False

    def check_read(self, revision: int) -> int:
        """The revision a read at `revision` (0 = current) sees; raises MvccError."""
        if revision <= 0:
            return self.current
        if revision > self.current:
            raise MvccError(ERR_FUTURE_REV)
        if revision < self.compacted:
            raise MvccError(ERR_COMPACTED)
        return revision


class KeySpace:
    """Reads and writes of the multi-version key space over the sharded index."""

    def __init__(self, shard_dbs: list[str], shard_for: Callable[[bytes], int]) -> None:
        self.shard_dbs = shard_dbs
        self.shard_for = shard_for

    # -- reads -------------------------------------------------------------------------

    def record(self, txn: Txn, key: bytes) -> Record | None:
        ik = ikey(key)
        raw = txn.get(self.shard_dbs[self.shard_for(key)], ik)
        if raw is None:
            return None
        rec = Record.decode(ik, raw)
        if rec.key != key:  # a 128-bit hash collision between two long keys: never expected
            raise AssertionError("long-key hash collision in the key index")
        return rec

    def current(self, txn: Txn, key: bytes) -> Record | None:
        rec = self.record(txn, key)
        return rec if rec is not None and rec.alive else None

    def at(self, txn: Txn, rec: Record, revision: int, now: int) -> kv_pb2.KeyValue | None:
        """The key of `rec` as it was at `revision` (None: absent then)."""
        if revision >= now:
            return rec.kv() if rec.alive else None
        found = txn.floor(KHIST_DB, rec.hist + _U64.pack(revision))
        if found is None or found[0][:12] != rec.hist:
            return None
        sub, kind = _HIST_VAL.unpack(found[1])
        if kind == DELETE:
            return None
        rev = _U64.unpack(found[0][12:])[0]
        raw = txn.get(REVS_DB, _REV.pack(rev, sub))
        assert raw is not None, "history names a change the revs db lacks"
        return decode_event(_REV.pack(rev, sub), raw)[1]

    def records(self, txn: Txn, start: bytes, end: bytes) -> Iterator[Record]:
        """Index records of the keys in [start, end) (etcd's conventions), in key order:
        a k-way merge of the shards' sorted cursors."""
        if not end:  # one key: one lookup in its shard
            rec = self.record(txn, start)
            return iter(() if rec is None else (rec,))
        streams = [self._shard_records(txn, db, start, end) for db in self.shard_dbs]
        return heapq.merge(*streams, key=lambda r: r.key)

    def _shard_records(self, txn: Txn, db: str, start: bytes, end: bytes) -> Iterator[Record]:
        for rec in _ordered(Record.decode(k, v) for k, v in txn.seek(db, start[:_MAX_INLINE_KEY])):
            if rec.key < start:
                continue
            if not in_range(rec.key, start, end):
                return
            yield rec

    # -- writes ------------------------------------------------------------------------

    def put(self, txn: Txn, key: bytes, value: bytes, lease: int, rev: int, sub: int,
            prev: Record | None) -> Record:
        """Write a new version of `key` at (rev, sub); `prev` is its index record."""
        if prev is not None and prev.alive:
            create, version, hist = prev.create, prev.version + 1, prev.hist
        else:
            create, version = rev, 1
            hist = prev.hist if prev is not None else _REV.pack(rev, sub)
        rec = Record(key, True, create, rev, version, lease, hist, value)
        txn.put(self.shard_dbs[self.shard_for(key)], ikey(key), rec.encode())
        txn.put(KHIST_DB, hist + _U64.pack(rev), _HIST_VAL.pack(sub, PUT))
        txn.put(REVS_DB, _REV.pack(rev, sub), encode_event(PUT, key, create, version, lease,
                                                           value))
        return rec

    def delete(self, txn: Txn, rec: Record, rev: int, sub: int) -> None:
        """Delete the alive key of `rec` at (rev, sub), leaving a tombstone in history."""
        tomb = Record(rec.key, False, 0, rev, 0, 0, rec.hist, b"")
        txn.put(self.shard_dbs[self.shard_for(rec.key)], ikey(rec.key), tomb.encode())
        txn.put(KHIST_DB, rec.hist + _U64.pack(rev), _HIST_VAL.pack(sub, DELETE))
        txn.put(REVS_DB, _REV.pack(rev, sub), encode_event(DELETE, rec.key, 0, 0, 0, b""))

    # -- compaction --------------------------------------------------------------------

    def compact(self, txn: Txn, revs: Revisions, upto: int) -> None:
        """Drop the history no read or watch at or after `upto` can need: for each key,
        every change before its last one at or before `upto`, and that one too if it is a
        delete before `upto` (a key deleted for good then leaves the index). Deletes AT
        `upto` stay until the next compaction, so that a watch may still start at `upto`
        and see everything that happened there (etcd allows a watch from the compacted
        revision). Raises MvccError."""
        if upto <= revs.compacted:
            raise MvccError(ERR_COMPACTED)
        if upto > revs.current:
            raise MvccError(ERR_FUTURE_REV)
        if revs.compacted:
            self._sweep_tombstones(txn, revs.compacted)
        doomed: list[bytes] = []
        for rk, raw in txn.seek(REVS_DB, _REV.pack(revs.compacted + 1, 0)):
            rev, _ = _REV.unpack(rk)
            if rev > upto:
                break
            doomed.append(bytes(rk))
            doomed.append(bytes(raw))
        for i in range(0, len(doomed), 2):
            self._compact_change(txn, doomed[i], doomed[i + 1], upto, revs.compacted)
        revs.compacted = upto
        revs.dirty = True

    def _compact_change(self, txn: Txn, rk: bytes, raw: bytes, upto: int,
                        before: int) -> None:
        """Compact one change in (before, upto]. The key's change that the previous
        compaction (at `before`) kept, if any, is superseded by this one: dropped too."""
        rev, _ = _REV.unpack(rk)
        kind, kv = decode_event(rk, raw)
        rec = self.record(txn, kv.key)
        assert rec is not None, "a change in history for a key missing from the index"
        kept = txn.floor(KHIST_DB, rec.hist + _U64.pack(before))
        if kept is not None and kept[0][:12] == rec.hist:
            kept_rev = _U64.unpack(kept[0][12:])[0]
            txn.delete(REVS_DB, _REV.pack(kept_rev, _HIST_VAL.unpack(kept[1])[0]))
            txn.delete(KHIST_DB, bytes(kept[0]))
        later = next(iter(txn.seek(KHIST_DB, rec.hist + _U64.pack(rev + 1))), None)
        later_rev = None
        if later is not None and later[0][:12] == rec.hist:
            later_rev = _U64.unpack(later[0][12:])[0]
        dead = kind == DELETE and rev < upto
        if (later_rev is not None and later_rev <= upto) or dead:
            txn.delete(REVS_DB, rk)
            txn.delete(KHIST_DB, rec.hist + _U64.pack(rev))
        if dead and later_rev is None and not rec.alive:
            txn.delete(self.shard_dbs[self.shard_for(kv.key)], ikey(kv.key))

    def _sweep_tombstones(self, txn: Txn, at: int) -> None:
        """Drop the deletes the previous compaction kept at its own revision `at`; a key
        with no history left and not alive leaves the index."""
        tombs: list[tuple[bytes, bytes]] = []
        for rk, raw in txn.seek(REVS_DB, _REV.pack(at, 0)):
            if _REV.unpack(rk)[0] != at:
                break
            if raw[0] == DELETE:
                tombs.append((bytes(rk), bytes(raw)))
        for rk, raw in tombs:
            _, kv = decode_event(rk, raw)
            rec = self.record(txn, kv.key)
            assert rec is not None, "a delete in history for a key missing from the index"
            txn.delete(REVS_DB, rk)
            txn.delete(KHIST_DB, rec.hist + _U64.pack(at))
            rest = next(iter(txn.seek(KHIST_DB, rec.hist)), None)
            if not rec.alive and (rest is None or rest[0][:12] != rec.hist):
                txn.delete(self.shard_dbs[self.shard_for(kv.key)], ikey(kv.key))

    # -- watch -------------------------------------------------------------------------

    def events(self, txn: Txn, revs: Revisions, start_rev: int, key: bytes, range_end: bytes,
               prev_kv: bool, limit: int) -> tuple[list[kv_pb2.Event], int]:
        """The changes with revision >= `start_rev` to keys in [key, range_end) (etcd's
        conventions), in (revision, sub) order: at most `limit` of them, but never part of
        a revision. Returns (events, the revision to continue from). A watcher is a cursor
        over the `revs` database, so it can fall behind without holding memory and its
        events cannot be lost; once compaction removed history from its position on it is
        told so (MvccError), never silently skipped."""
        if 0 < start_rev < revs.compacted:
            raise MvccError(ERR_COMPACTED)
        start = max(start_rev, 1)
        out: list[kv_pb2.Event] = []
        for rk, raw in txn.seek(REVS_DB, _REV.pack(start, 0)):
            rev, _ = _REV.unpack(rk)
            if len(out) >= limit and rev != out[-1].kv.mod_revision:
                return out, rev
            kind, kv = decode_event(rk, raw)
            if not in_range(kv.key, key, range_end):
                continue
            ev = kv_pb2.Event(type=kv_pb2.Event.DELETE if kind == DELETE else kv_pb2.Event.PUT)
            if kind == DELETE:
                ev.kv.key = kv.key
                ev.kv.mod_revision = kv.mod_revision
            else:
                ev.kv.CopyFrom(kv)
            if prev_kv:
                rec = self.record(txn, kv.key)
                prev = None if rec is None else self.at(txn, rec, rev - 1, revs.current + 1)
                if prev is not None:
                    ev.prev_kv.CopyFrom(prev)
            out.append(ev)
        return out, max(start, revs.current + 1)

    # -- hashes ------------------------------------------------------------------------

    @staticmethod
    def hash_kv(txn: Txn, revs: Revisions, revision: int) -> tuple[int, int, int]:
        """(crc32 of the history up to `revision`, compacted revision, revision hashed):
        equal on members that applied the same log, as etcd's HashKV."""
        upto = revs.current if revision <= 0 else revision
        if upto > revs.current:
            raise MvccError(ERR_FUTURE_REV)
        if upto < revs.compacted:
            raise MvccError(ERR_COMPACTED)
        crc = 0
        for rk, raw in txn.seek(REVS_DB, b""):
            if _REV.unpack(rk)[0] > upto:
                break
            crc = zlib.crc32(raw, zlib.crc32(rk, crc))
        return crc, revs.compacted, upto


def _ordered(records: Iterator[Record]) -> Iterator[Record]:
    """Index records in true key order: long keys sharing their first 400 bytes are
    stored by hash, so each such run is sorted by full key."""
    run: list[Record] = []
    for rec in records:
        if run and rec.key[:_MAX_INLINE_KEY] != run[0].key[:_MAX_INLINE_KEY]:
            run.sort(key=lambda r: r.key)
            yield from run
            run = []
        if len(rec.key) > _MAX_INLINE_KEY:
            run.append(rec)
        else:
            if run:
                run.sort(key=lambda r: r.key)
                yield from run
                run = []
            yield rec
    run.sort(key=lambda r: r.key)
    yield from run
