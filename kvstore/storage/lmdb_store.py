"""The node's durable storage: Raft log, hard state and state machine in one LMDB environment.

Layout (named databases of one environment in the data directory):
    log        8-byte big-endian index -> crc32 | term | type | data  (see _encode_record)
    meta       format, shards, vnodes, hard_state, applied, compacted (index, term of the
               last entry dropped from the log; the state machine holds its effect)
    sessions   client sessions (kvstore.state.machine)
    shard-NNN  user keys of shard NNN

Why one environment: a single LMDB write transaction can then cover the new log entries,
the hard state, the applied entries' effects, the applied index and the session table. A
crash leaves either all of a batch or none of it, so an entry can never be applied twice or
skipped, and nothing is acknowledged before it is on disk.

Syncing (issue 15): the environment is opened with sync=True and metasync=False
(MDB_NOMETASYNC): a commit writes its pages and fdatasyncs them, then writes the meta page
without a second sync. LMDB documents that this keeps the database intact (atomic and
consistent) and may undo the last committed transaction in a system crash. So every
transaction that must be durable — new log entries, a new term or vote, snapshots,
membership, compaction — is followed by an explicit env.sync(), which flushes the meta page
too: the same two syncs as metasync=True. Only a transaction that does nothing but apply
committed entries (and record the commit index, which need not be durable: see
_votes_changed) skips it: the entries are already durable in the log of a quorum, and the applied
index is in the same transaction as their effect, so if a crash undoes it the node applies
them again from the log on restart, exactly once. That is the leader's write on the
critical path of every client write (after the followers acknowledge), so it costs one sync
instead of two. (MDB_NOSYNC, no sync at all, is not used: with it LMDB keeps integrity
only if the filesystem preserves write order, which ext4 does not promise; MDB_WRITEMAP
is not used either, so a stray write cannot reach the map.)

Threading: persist_and_apply runs in a worker thread (asyncio.to_thread) while the event-loop
thread reads. LMDB's MVCC gives each read its own consistent snapshot. The only in-memory
state is `_View` (first/last index, hard state, applied index): an immutable object replaced
in one assignment after the commit succeeds, so a reader sees either the old or the new
state, never a mix, and never a state that is not yet durable.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb

from kvstore.etcdpb import kv_pb2, rpc_pb2
from kvstore.raft.types import Entry, EntryType, HardState, SnapshotMeta
from kvstore.state import membership
from kvstore.state.alarms import Alarm
from kvstore.state.commands import ApplyResult
from kvstore.state.machine import DEFAULT_MAX_SESSIONS, Session, ShardedStateMachine
from kvstore.state.membership import Member
from kvstore.storage.batch import plan_batch
from kvstore.storage.errors import (
    ConfigMismatchError,
    CorruptLogError,
    OutOfSpaceError,
    StorageError,
    is_out_of_space,
)
from kvstore.storage.snapshot_state import dump_state, open_snapshot

# 2: keys carry revisions and history (kvstore.state.mvcc). A format-1 data dir is refused
# with a clear message: there is no in-place upgrade.
FORMAT_VERSION = 2
MAX_SHARDS = 256
DEFAULT_QUOTA_BYTES = 2 << 30  # etcd's default --quota-backend-bytes
MIN_HEADROOM_BYTES = 256 << 20


def map_size_for(quota_bytes: int, data_bytes: int = 0) -> int:
    """The LMDB map (address space reserved; the file grows only as data is written): above
    the quota, so that after the NOSPACE alarm stops puts there is room left for deletes,
    compaction and the log; and above what the data dir already holds, so that a node whose
    data outgrew an older, smaller map opens with room to spare instead of failing on its
    first write again (a crash loop)."""
    headroom = max(quota_bytes // 4, MIN_HEADROOM_BYTES)
    return max(quota_bytes, data_bytes) + headroom
MAX_READERS = 1024
LOCK_FILE = "kvstore.lock"

_LOG_DB = "log"
_META_DB = "meta"
_FORMAT = b"format"
_SHARDS = b"shards"
_VNODES = b"vnodes"
_HARD_STATE = b"hard_state"
_APPLIED = b"applied"
_COMPACTED = b"compacted"
_PAIR = struct.Struct(">QQ")

_U64 = struct.Struct(">Q")
_RECORD_HEADER = struct.Struct(">IQB")  # crc32, term, type; data follows
_CRC_PREFIX = struct.Struct(">QQB")  # index, term, type: what the crc covers besides data
_HARD_STATE_HEADER = struct.Struct(">QQ")  # term, commit; vote (utf-8) follows

T = TypeVar("T")
_ON_READ = "refusing to serve it"  # what a damaged record does at run time


def _log_key(index: int) -> bytes:
    return _U64.pack(index)


def _crc(index: int, term: int, etype: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(_CRC_PREFIX.pack(index, term, etype)))


def _encode_record(entry: Entry) -> bytes:
    etype = int(entry.type)
    crc = _crc(entry.index, entry.term, etype, entry.data)
    return _RECORD_HEADER.pack(crc, entry.term, etype) + entry.data


def _decode_record(index: int, raw: bytes, path: str, action: str) -> Entry:
    """Parse and verify one log record; any damage raises CorruptLogError naming `index`."""
    if len(raw) < _RECORD_HEADER.size:
        raise CorruptLogError(index, path, "truncated record", action)
    crc, term, etype = _RECORD_HEADER.unpack_from(raw)
    data = bytes(raw[_RECORD_HEADER.size :])
    if _crc(index, term, etype, data) != crc:
        raise CorruptLogError(index, path, "checksum mismatch", action)
    try:
        entry_type = EntryType(etype)
    except ValueError:
        raise CorruptLogError(index, path, f"unknown entry type {etype}", action) from None
    return Entry(term=term, index=index, type=entry_type, data=data)


def _encode_hard_state(hs: HardState) -> bytes:
    return _HARD_STATE_HEADER.pack(hs.term, hs.commit) + hs.vote.encode()


def _decode_hard_state(raw: bytes | None) -> HardState:
    if raw is None:
        return HardState()
    term, commit = _HARD_STATE_HEADER.unpack_from(raw)
    return HardState(term=term, vote=raw[_HARD_STATE_HEADER.size :].decode(), commit=commit)


@dataclass(frozen=True, slots=True)
class _View:
    """What has been durably committed, published atomically after each commit."""

    first_index: int
    last_index: int
    hard_state: HardState
    applied: int
    compacted_term: int = 0  # term of entry first_index - 1 (0 when nothing is compacted)
    # Terms of the entries written since the store opened, as runs (first index, term)
    # in index order, each lasting until the next (the last until last_index): the core
    # asks for the term of recent entries several times per write (append consistency
    # checks, the commit rule), and a read transaction and a record decode each time
    # cost more than the rest of a follower's step.
    term_runs: tuple[tuple[int, int], ...] = ()

    def cached_term(self, index: int) -> int | None:
        runs = self.term_runs
        if not runs or index < runs[0][0] or index > self.last_index:
            return None
        return runs[bisect.bisect_right(runs, (index, _MAX_TERM)) - 1][1]


_MAX_TERM = 1 << 64


def _extend_runs(runs: tuple[tuple[int, int], ...],
                 entries: Sequence[Entry]) -> tuple[tuple[int, int], ...]:
    """`runs` with `entries` written (replacing whatever was at and after the first)."""
    first = entries[0].index
    out = [r for r in runs if r[0] < first]
    for e in entries:
        if not out or out[-1][1] != e.term:
            out.append((e.index, e.term))
    return tuple(out)


class _LmdbTxn:
    """KVTxn adapter over an LMDB transaction and the environment's named databases."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, db: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[db])

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[db])

    def delete(self, db: str, key: bytes) -> bool:
        return self._txn.delete(key, db=self._dbs[db])

    def first_key(self, db: str, prefix: bytes) -> bytes | None:
        cursor = self._txn.cursor(db=self._dbs[db])
        if cursor.set_range(prefix):
            key = cursor.key()
            if key.startswith(prefix):
                return key
        return None

    def items(self, db: str) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._txn.cursor(db=self._dbs[db]))

    def seek(self, db: str, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(start):
            return iter(())
        return cursor.iternext()

    def floor(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        cursor = self._txn.cursor(db=self._dbs[db])
        if cursor.set_range(key):
            if cursor.key() == key:
                return cursor.item()
            if not cursor.prev():
                return None
        elif not cursor.last():
            return None
        return cursor.item()


def _lock_data_dir(path: str) -> int:
    """Take an exclusive lock so two nodes (or two opens) never share one data directory.

    LMDB itself allows several processes on one environment, which here would mean two Raft
    nodes writing one log: silent divergence. The lock dies with the process.
    """
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(
            f"data dir {path} is in use by another kvstore process (or already open here)"
        ) from None
    return fd


class LmdbNodeStore:
    """LogStorage for the Raft core plus the durable sharded state machine of one node.

    Create with LmdbNodeStore.open(). Reads may run on any thread; persist_and_apply calls are
    serialized (one writer at a time).
    """

    def __init__(
        self,
        path: str,
        env: lmdb.Environment,
        dbs: dict[str, Any],
        machine: ShardedStateMachine,
        lock_fd: int,
        view: _View,
    ) -> None:
        self.path = path
        self.shards = machine.ring.shards
        self.vnodes = machine.ring.vnodes
        self.machine = machine
        self._env = env
        self._dbs = dbs
        self._lock_fd = lock_fd
        self._view = view
        self._alarms: tuple[_View, list[Alarm]] | None = None  # (for which view, alarms)
        self._write_lock = threading.Lock()
        self._closed = False
        # Readers in, unless a defragmentation is swapping the environment (see _reading).
        self._gate = threading.Condition()
        self._readers = 0
        self._swapping = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        shards: int = 16,
        vnodes: int = 64,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> LmdbNodeStore:
        """Open (creating if needed) the store in directory `path`.

        On first open the shard layout is recorded; a later open with different `shards` or
        `vnodes` raises ConfigMismatchError. The whole log is scanned and every checksum
        verified; damage raises CorruptLogError. `max_sessions` is not recorded but must be
        the same on every replica (servers use the default).
        """
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards must be in 1..{MAX_SHARDS}, got {shards}")
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        if quota_bytes < 1:
            raise ValueError(f"quota_bytes must be >= 1, got {quota_bytes}")
        spath = os.path.abspath(os.fspath(path))
        os.makedirs(spath, exist_ok=True)
        try:
            data_bytes = os.path.getsize(os.path.join(spath, "data.mdb"))
        except OSError:
            data_bytes = 0
        lock_fd = _lock_data_dir(spath)
        env: lmdb.Environment | None = None
        try:
            machine = ShardedStateMachine(shards, vnodes, max_sessions)
            env, dbs = _open_env(spath, map_size_for(quota_bytes, data_bytes), machine,
                                 (shards, vnodes))
            view = _scan(env, dbs, spath)
            return cls(spath, env, dbs, machine, lock_fd, view)
        except BaseException as exc:
            if env is not None:
                env.close()
            os.close(lock_fd)
            if isinstance(exc, lmdb.Error):
                raise StorageError(f"cannot open data dir {spath}: {exc}") from exc
            raise

    # -- LogStorage ----------------------------------------------------------------------

    def initial_state(self) -> HardState:
        return self._view.hard_state

    def first_index(self) -> int:
        return self._view.first_index

    def last_index(self) -> int:
        return self._view.last_index

    def term(self, index: int) -> int:
        view = self._view
        if index == view.first_index - 1:
            return view.compacted_term
        if not view.first_index <= index <= view.last_index:
            raise StorageError(
                f"log entry {index} is not in the log ({view.first_index}..{view.last_index})"
            )
        cached = view.cached_term(index)
        if cached is not None:
            return cached
        with self._reading() as txn:
            return self._read_entry(txn, index).term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        view = self._view
        if lo < view.first_index or hi > view.last_index + 1 or lo > hi:
            raise StorageError(
                f"log entries [{lo}, {hi}) not in the log ({view.first_index}..{view.last_index})"
            )
        out: list[Entry] = []
        if lo == hi:
            return out
        with self._reading() as txn:
            cursor = txn.cursor(db=self._dbs[_LOG_DB])
            if not cursor.set_key(_log_key(lo)):
                raise StorageError(f"log entry {lo} is missing in {self.path}")
            for key, raw in cursor:
                index = _U64.unpack(key)[0]
                if index >= hi:
                    break
                if index != lo + len(out):
                    raise CorruptLogError(lo + len(out), self.path, "missing", _ON_READ)
                out.append(_decode_record(index, raw, self.path, _ON_READ))
        if len(out) != hi - lo:
            raise StorageError(f"log entries [{lo}, {hi}) are not all present in {self.path}")
        return out

    # -- the one write path --------------------------------------------------------------

    def persist_and_apply(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        committed: Sequence[Entry],
        on_applied: Callable[[list[ApplyResult]], None] | None = None,
    ) -> list[ApplyResult]:
        """In ONE LMDB write transaction (one fsync): replace the log from entries[0].index
        on, write `entries`, record `hard_state` if given, apply `committed` in order, and
        record the applied index and sessions. `on_applied`, if given, is called with the
        results once they are computed, before the commit (from this thread).

        Returns one ApplyResult per entry applied now, in index order. Committed entries at
        or below the stored applied index are skipped (already applied); they may also be
        among `entries` of this same call. Raises StorageError, having written nothing, on a
        request that would corrupt the log (gap, rewriting an applied entry, applying out of
        order or past the log's end) or on an LMDB failure; the caller should then stop.
        """
        if hard_state is None and not entries and not committed:
            return []
        with self._write_lock:
            view = self._view
            try:
                txn = self._env.begin(write=True)
            except lmdb.Error as exc:
                raise StorageError(f"cannot begin write in {self.path}: {exc}") from exc
            try:
                new_last, to_apply = plan_batch(
                    entries,
                    committed,
                    first_index=view.first_index,
                    last_index=view.last_index,
                    applied=view.applied,
                    stored_term=lambda i: (view.cached_term(i)
                                           or self._read_entry(txn, i).term),
                )
                if entries:
                    self._write_entries(txn, entries, view.last_index)
                meta = self._dbs[_META_DB]
                if hard_state is not None:
                    txn.put(_HARD_STATE, _encode_hard_state(hard_state), db=meta)
                adapter = _LmdbTxn(txn, self._dbs)
                results = self.machine.apply_batch(adapter, to_apply)
                applied = to_apply[-1].index if to_apply else view.applied
                if to_apply:
                    txn.put(_APPLIED, _U64.pack(applied), db=meta)
                if on_applied is not None and results:
                    on_applied(results)
            except BaseException as exc:
                txn.abort()
                if isinstance(exc, lmdb.Error):
                    if is_out_of_space(exc):
                        raise OutOfSpaceError(f"out of space writing {self.path}: {exc}") from exc
                    raise StorageError(f"write failed in {self.path}: {exc}") from exc
                raise
            try:
                txn.commit()  # fsync; LMDB frees the transaction whether or not it succeeds
                if entries or _votes_changed(hard_state, view.hard_state):
                    self._env.sync(True)  # the meta page too: see the module docstring
            except lmdb.Error as exc:
                if is_out_of_space(exc):
                    raise OutOfSpaceError(f"out of space committing in {self.path}: {exc}"
                                          ) from exc
                raise StorageError(f"commit (fsync) failed in {self.path}: {exc}") from exc
            self._view = _View(
                first_index=view.first_index,
                last_index=new_last,
                hard_state=hard_state if hard_state is not None else view.hard_state,
                applied=applied,
                compacted_term=view.compacted_term,
                term_runs=_extend_runs(view.term_runs, entries) if entries else view.term_runs,
            )
            return results

    # -- compaction and snapshots ----------------------------------------------------------

    def compact(self, upto: int) -> None:
        """Drop log entries up to `upto` (which must be applied): the state machine holds
        their effect, and a follower that still needs them gets a snapshot instead."""
        with self._write_lock:
            view = self._view
            if upto < view.first_index:
                return
            if upto > min(view.applied, view.last_index):
                raise StorageError(f"cannot compact to {upto}: applied is {view.applied}")
            with self._env.begin(write=True) as txn:
                term = self._read_entry(txn, upto).term
                log = self._dbs[_LOG_DB]
                for index in range(view.first_index, upto + 1):
                    txn.delete(_log_key(index), db=log)
                txn.put(_COMPACTED, _PAIR.pack(upto, term), db=self._dbs[_META_DB])
            self._env.sync(True)
            self._view = _View(upto + 1, view.last_index, view.hard_state, view.applied, term,
                               view.term_runs)

    def log_bytes(self) -> int:
        """Bytes of LMDB pages holding the log (a measure of its on-disk size)."""
        with self._reading() as txn:
            st = txn.stat(self._dbs[_LOG_DB])
        return (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]

    def write_snapshot(self, path: str) -> SnapshotMeta:
        """Write the state machine as of its applied index to `path`, from one read
        transaction (writers carry on meanwhile). Returns what it covers."""
        with self._reading() as txn:
            raw = txn.get(_APPLIED, db=self._dbs[_META_DB])
            applied = 0 if raw is None else _U64.unpack(raw)[0]
            raw_c = txn.get(_COMPACTED, db=self._dbs[_META_DB])
            c_index, c_term = (0, 0) if raw_c is None else _PAIR.unpack(raw_c)
            if applied == c_index:
                term = c_term
            else:
                term = self._read_entry(txn, applied).term
            meta = SnapshotMeta(applied, term)
            with open(path, "wb") as out:
                dump_state(out, _LmdbTxn(txn, self._dbs), self.machine, meta)
                out.flush()
                os.fsync(out.fileno())
        return meta

    def install_snapshot(self, data: bytes, hard_state: HardState | None) -> SnapshotMeta:
        """Replace the state machine and the log by a received snapshot, in ONE write
        transaction: a crash leaves the old state or the new, never a mix."""
        header, records = open_snapshot(data, self.machine)
        with self._write_lock:
            view = self._view
            with self._env.begin(write=True) as txn:
                for name in [_LOG_DB, *self.machine.db_names]:
                    txn.drop(self._dbs[name], delete=False)
                for name, key, value in records:
                    txn.put(key, value, db=self._dbs[name])
                meta = self._dbs[_META_DB]
                txn.put(_COMPACTED, _PAIR.pack(header.index, header.term), db=meta)
                txn.put(_APPLIED, _U64.pack(header.index), db=meta)
                hs = hard_state if hard_state is not None else view.hard_state
                txn.put(_HARD_STATE, _encode_hard_state(hs), db=meta)
            self._env.sync(True)
            self._view = _View(header.index + 1, header.index, hs, header.index, header.term)
        return SnapshotMeta(header.index, header.term)

    def _write_entries(
        self, txn: lmdb.Transaction, entries: Sequence[Entry], last_index: int
    ) -> None:
        log = self._dbs[_LOG_DB]
        for index in range(entries[0].index, last_index + 1):  # drop the conflicting suffix
            txn.delete(_log_key(index), db=log)
        for entry in entries:
            if not txn.put(_log_key(entry.index), _encode_record(entry), db=log, append=True):
                raise StorageError(f"log entry {entry.index} out of order in {self.path}")

    def _read_entry(self, txn: lmdb.Transaction, index: int) -> Entry:
        raw = txn.get(_log_key(index), db=self._dbs[_LOG_DB])
        if raw is None:
            raise StorageError(f"log entry {index} is missing in {self.path}")
        return _decode_record(index, raw, self.path, _ON_READ)

    # -- state-machine reads -------------------------------------------------------------

    def get(self, key: bytes) -> tuple[bool, bytes, int]:
        """(found, value, applied index), all from one consistent snapshot."""
        with self._reading() as txn:
            value = self.machine.read(_LmdbTxn(txn, self._dbs), key)
            raw = txn.get(_APPLIED, db=self._dbs[_META_DB])
        applied = 0 if raw is None else _U64.unpack(raw)[0]
        return value is not None, value or b"", applied

    def range(self, req: rpc_pb2.RangeRequest) -> tuple[rpc_pb2.RangeResponse, int, int]:
        """(answer without header, store revision, applied index) from one consistent
        snapshot; raises MvccError for a compacted or future revision."""
        with self._reading() as txn:
            resp, revision = self.machine.range(_LmdbTxn(txn, self._dbs), req)
            raw = txn.get(_APPLIED, db=self._dbs[_META_DB])
        return resp, revision, 0 if raw is None else _U64.unpack(raw)[0]

    def events(self, start_rev: int, key: bytes, range_end: bytes, *, prev_kv: bool = False,
               limit: int = 1000) -> tuple[list[kv_pb2.Event], int]:
        """Changes from `start_rev` on to keys in the range, in revision order, from one
        snapshot: (events, revision to continue from). Raises MvccError when compacted."""
        return self._read(lambda t: self.machine.events(t, start_rev, key, range_end,
                                                        prev_kv, limit))

    def members(self) -> list[Member]:
        """The applied membership (empty until seeded)."""
        return self._read(membership.members)

    def removed_members(self) -> list[str]:
        """Ids removed from the cluster (never admitted again)."""
        return self._read(membership.removed_ids)

    def reset_members(self, members: Iterable[Member]) -> None:
        """Replace the recorded membership (a restore into a new cluster, offline)."""
        with self._write_lock:
            with self._env.begin(write=True) as txn:
                membership.reset(_LmdbTxn(txn, self._dbs), members)
            self._env.sync(True)

    def seed_members(self, initial: Iterable[Member]) -> bool:
        """Record the initial membership unless one is recorded; True if it wrote it."""
        with self._write_lock:
            with self._env.begin(write=True) as txn:
                wrote = membership.seed(_LmdbTxn(txn, self._dbs), initial)
            self._env.sync(True)
            return wrote

    def lease(self, lease_id: int) -> int | None:
        """The granted TTL of a lease, or None if it does not exist."""
        return self._read(lambda t: self.machine.lease(t, lease_id))

    def leases(self) -> list[tuple[int, int]]:
        """(id, granted TTL) of every lease."""
        return self._read(self.machine.leases)

    def lease_keys(self, lease_id: int) -> list[bytes]:
        return self._read(lambda t: self.machine.lease_keys(t, lease_id))

    def revisions(self) -> tuple[int, int]:
        """(current revision, compacted revision) of the applied state."""
        return self._read(self.machine.revisions)

    def hash_kv(self, revision: int) -> tuple[int, int, int]:
        """etcd's HashKV: (hash, compacted revision, revision hashed); raises MvccError."""
        return self._read(lambda t: self.machine.hash_kv(t, revision))

    def hash_all(self) -> int:
        """etcd's Hash: a crc32 over every state-machine database, in one snapshot."""
        return self._read(self.machine.hash_all)

    @contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        """A read transaction; waits while defragment() swaps the environment."""
        with self._gate:
            while self._swapping:
                self._gate.wait()
            self._readers += 1
        try:
            with self._env.begin() as txn:
                yield txn
        finally:
            with self._gate:
                self._readers -= 1
                self._gate.notify_all()

    def defragment(self) -> None:
        """etcd's defrag for LMDB: write a compacting copy of the environment (free pages
        dropped, pages packed), then swap it in. Writes and reads wait meanwhile, as they
        do on an etcd member being defragmented; the copy is made before anything is
        replaced, so a crash mid-way leaves the old file in place."""
        with self._write_lock:
            with self._gate:
                self._swapping = True
                while self._readers:
                    self._gate.wait()
            try:
                tmp = os.path.join(self.path, "defrag.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(tmp)
                self._env.copy(tmp, compact=True)
                map_size = self._env.info()["map_size"]
                self._env.close()
                os.replace(os.path.join(tmp, "data.mdb"), os.path.join(self.path, "data.mdb"))
                shutil.rmtree(tmp, ignore_errors=True)
                self._env, self._dbs = _open_env(self.path, map_size, self.machine)
            finally:
                with self._gate:
                    self._swapping = False
                    self._gate.notify_all()

    def file_bytes(self) -> int:
        """Size of the database file on disk (etcd's dbSize)."""
        return os.path.getsize(os.path.join(self.path, "data.mdb"))

    def applied_index(self) -> int:
        return self._view.applied

    def session(self, client_id: bytes) -> Session | None:
        """The exactly-once session of `client_id` (for status and tests)."""
        return self._read(lambda t: self.machine.session(t, client_id))

    def size_bytes(self) -> int:
        """Bytes of LMDB pages holding data (every database's branch, leaf and overflow
        pages; freed pages waiting for reuse do not count), the measure the quota
        (`--quota-backend-bytes`) is checked against. Unlike the file size it goes down
        when keys are deleted and the log is compacted, so a NOSPACE alarm can be cleared
        after freeing space (etcd needs a defragmentation for that)."""
        with self._reading() as txn:
            stats = [txn.stat(db) for db in self._dbs.values()]
        return sum((st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
                   for st in stats)

    def alarms(self) -> list[Alarm]:
        """The cluster alarms raised in the applied state. Every write asks (a put is
        refused under NOSPACE), so the answer is kept until the next change of the store's
        view, which any applied entry makes (a read transaction per request was a tenth of
        the leader's work per put under load)."""
        view = self._view
        cached = self._alarms
        if cached is not None and cached[0] is view:
            return list(cached[1])
        alarms = self._read(self.machine.active_alarms)
        self._alarms = (view, alarms)
        return list(alarms)

    def session_count(self) -> int:
        return self._read(self.machine.session_count)

    def shard_digests(self) -> list[str]:
        """One hex digest per shard over its records in key order, from one snapshot.

        Replicas that applied the same log prefix report equal digests.
        """
        return self._read(lambda t: [self.machine.shard_digest(t, s) for s in range(self.shards)])

    def state_digests(self) -> list[str]:
        """Shard digests plus the digest of revisions and history, from one snapshot."""
        return self._read(lambda t: [*(self.machine.shard_digest(t, s)
                                       for s in range(self.shards)),
                                     self.machine.history_digest(t)])

    def digest(self) -> tuple[int, list[str]]:
        """(applied index, shard digests) from one consistent snapshot."""
        with self._reading() as txn:
            raw = txn.get(_APPLIED, db=self._dbs[_META_DB])
            t = _LmdbTxn(txn, self._dbs)
            digests = [self.machine.shard_digest(t, s) for s in range(self.shards)]
        return (0 if raw is None else _U64.unpack(raw)[0]), digests

    def _read(self, fn: Callable[[_LmdbTxn], T]) -> T:
        with self._reading() as txn:
            return fn(_LmdbTxn(txn, self._dbs))

    def close(self) -> None:
        """Close the environment and release the data-dir lock. Idempotent."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._env.close()
            os.close(self._lock_fd)

    def __enter__(self) -> LmdbNodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _votes_changed(new: HardState | None, old: HardState) -> bool:
    """Whether `new` changes the term or the vote: those must be durable before a vote or
    an append goes out. A new commit index alone need not be (etcd's MustSync rule): a
    node that loses it learns it again from the leader."""
    return new is not None and (new.term != old.term or new.vote != old.vote)


def _open_env(path: str, map_size: int, machine: ShardedStateMachine,
              layout: tuple[int, int] | None = None) -> tuple[lmdb.Environment, dict[str, Any]]:
    """Open the environment and every named database (checking the recorded layout when
    `layout` = (shards, vnodes) is given)."""
    env = lmdb.open(path, map_size=map_size, max_dbs=MAX_SHARDS + 8,
                    max_readers=MAX_READERS, subdir=True, sync=True, metasync=False, lock=True)
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(_META_DB.encode(), txn=txn, create=True)
            if layout is not None:
                _check_layout(txn, meta, path, *layout)
            dbs = {_META_DB: meta}
            for name in [_LOG_DB, *machine.db_names]:
                dbs[name] = env.open_db(name.encode(), txn=txn, create=True)
        env.sync(True)
    except BaseException:
        env.close()
        raise
    return env, dbs


def _check_layout(txn: lmdb.Transaction, meta: Any, path: str, shards: int, vnodes: int) -> None:
    """Record the shard layout on first open; refuse a different one later."""
    raw_format = txn.get(_FORMAT, db=meta)
    if raw_format is None:
        txn.put(_FORMAT, _U64.pack(FORMAT_VERSION), db=meta)
        txn.put(_SHARDS, _U64.pack(shards), db=meta)
        txn.put(_VNODES, _U64.pack(vnodes), db=meta)
        return
    version = _U64.unpack(raw_format)[0]
    if version != FORMAT_VERSION:
        raise StorageError(
            f"data dir {path} has storage format {version}; this build reads {FORMAT_VERSION}"
        )
    stored_shards = _U64.unpack(txn.get(_SHARDS, db=meta))[0]
    stored_vnodes = _U64.unpack(txn.get(_VNODES, db=meta))[0]
    if (stored_shards, stored_vnodes) != (shards, vnodes):
        raise ConfigMismatchError(
            f"data dir {path} was created with shards={stored_shards} vnodes={stored_vnodes} "
            f"but this node was started with shards={shards} vnodes={vnodes}; the layout is "
            f"fixed at creation: start with --shards {stored_shards} --vnodes {stored_vnodes} "
            f"or use a new data dir"
        )


def _scan(env: lmdb.Environment, dbs: dict[str, Any], path: str) -> _View:
    """Verify every log record (checksum, contiguity) and load the durable view."""
    with env.begin() as txn:
        raw_c = txn.get(_COMPACTED, db=dbs[_META_DB])
        c_index, c_term = (0, 0) if raw_c is None else _PAIR.unpack(raw_c)
        first = 0
        last = c_index
        for key, raw in txn.cursor(db=dbs[_LOG_DB]):
            if len(key) != _U64.size:
                raise CorruptLogError(last + 1, path, f"malformed key {bytes(key).hex()}")
            index = _U64.unpack(key)[0]
            if first == 0:
                if index != c_index + 1:  # the log starts right after the compacted prefix
                    raise CorruptLogError(c_index + 1, path,
                                          f"missing: the log starts at {index}")
                first = index
            elif index != last + 1:
                raise CorruptLogError(last + 1, path, f"missing: the log jumps to {index}")
            _decode_record(index, raw, path, "refusing to start")
            last = index
        meta = dbs[_META_DB]
        hard_state = _decode_hard_state(txn.get(_HARD_STATE, db=meta))
        raw_applied = txn.get(_APPLIED, db=meta)
    applied = 0 if raw_applied is None else _U64.unpack(raw_applied)[0]
    if applied > last:
        raise StorageError(
            f"data dir {path}: applied index {applied} is beyond the last log entry {last}"
        )
    if applied < c_index:
        raise StorageError(
            f"data dir {path}: applied index {applied} is behind the compacted log ({c_index})"
        )
    return _View(first_index=c_index + 1, last_index=last, hard_state=hard_state,
                 applied=applied, compacted_term=c_term)
