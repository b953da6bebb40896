"""In-memory node store for the deterministic simulator.

Same public methods as LmdbNodeStore and the same semantics (the same apply logic,
ShardedStateMachine over a DictTxn; the same batch checks, plan_batch; the same snapshot
bytes and install checks, snapshot_state), but no disk. Every write path (persist_and_apply,
compact, install_snapshot) validates and computes everything before it changes any field,
so it is atomic (all of it or, on an exception, none of it) and "durable" by definition.
A simulated crash drops the node's volatile state and keeps this object, exactly as a real
crash keeps the LMDB files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence

from kvstore.etcdpb import kv_pb2, rpc_pb2
from kvstore.raft.types import Entry, HardState, SnapshotMeta
from kvstore.state import membership
from kvstore.state.alarms import Alarm
from kvstore.state.commands import ApplyResult
from kvstore.state.machine import (
    DEFAULT_MAX_SESSIONS,
    DictTxn,
    Session,
    ShardedStateMachine,
)
from kvstore.state.membership import Member
from kvstore.storage.batch import plan_batch
from kvstore.storage.errors import StorageError
from kvstore.storage.snapshot_state import dump_state, open_snapshot

# What LMDB stores per log entry besides its data: the 8-byte index key and the record
# header (crc32, term, type). log_bytes() counts it so both stores report a comparable size.
ENTRY_OVERHEAD = 8 + 13


class MemoryNodeStore:
    """LogStorage + state machine kept in Python lists and dicts."""

    def __init__(
        self, shards: int = 16, vnodes: int = 64, max_sessions: int = DEFAULT_MAX_SESSIONS
    ) -> None:
        self.shards = shards
        self.vnodes = vnodes
        self.machine = ShardedStateMachine(shards, vnodes, max_sessions)
        self._hard_state = HardState()
        # Index and term of the last entry dropped from the log (by compaction or a
        # snapshot install); the state machine holds its effect.
        self._compacted = SnapshotMeta(0, 0)
        self._log: list[Entry] = []  # _log[i].index == self._compacted.index + 1 + i
        self._applied = 0
        self._dbs: dict[str, dict[bytes, bytes]] = {name: {} for name in self.machine.db_names}

    # -- LogStorage ----------------------------------------------------------------------

    def initial_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._compacted.index + 1

    def last_index(self) -> int:
        return self._compacted.index + len(self._log)

    def term(self, index: int) -> int:
        """Term of entry `index`; the last compacted entry still answers (its term is kept)."""
        if index == self._compacted.index:
            return self._compacted.term
        first, last = self.first_index(), self.last_index()
        if not first <= index <= last:
            raise StorageError(f"log entry {index} is not in the log ({first}..{last})")
        return self._log[index - first].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        first, last = self.first_index(), self.last_index()
        if lo < first or hi > last + 1 or lo > hi:
            raise StorageError(f"log entries [{lo}, {hi}) not in the log ({first}..{last})")
        return self._log[lo - first : hi - first]

    # -- writes --------------------------------------------------------------------------

    def persist_and_apply(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        committed: Sequence[Entry],
        on_applied: Callable[[list[ApplyResult]], None] | None = None,
    ) -> list[ApplyResult]:
        """Replace the log from entries[0].index on, record hard_state, apply `committed`.

        Same contract as LmdbNodeStore.persist_and_apply; everything is validated and applied
        to a buffered transaction before any state changes, so a failure changes nothing.
        """
        if hard_state is None and not entries and not committed:
            return []
        first = self.first_index()
        _, to_apply = plan_batch(
            entries,
            committed,
            first_index=first,
            last_index=self.last_index(),
            applied=self._applied,
            stored_term=self.term,
        )
        txn = DictTxn(self._dbs)
        results = self.machine.apply_batch(txn, to_apply)
        if on_applied is not None and results:
            on_applied(results)
        # Nothing below can fail: commit.
        if entries:
            del self._log[entries[0].index - first :]
            self._log.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state
        txn.commit()
        if to_apply:
            self._applied = to_apply[-1].index
        return results

    # -- compaction and snapshots --------------------------------------------------------

    def compact(self, upto: int) -> None:
        """Drop log entries up to `upto` (which must be applied), as LmdbNodeStore.compact:
        the state machine holds their effect; a follower that needs them gets a snapshot."""
        first = self.first_index()
        if upto < first:
            return
        if upto > min(self._applied, self.last_index()):
            raise StorageError(f"cannot compact to {upto}: applied is {self._applied}")
        term = self.term(upto)
        del self._log[: upto - first + 1]
        self._compacted = SnapshotMeta(upto, term)

    def log_bytes(self) -> int:
        """Bytes the log would take as LMDB records (LmdbNodeStore counts whole pages)."""
        return sum(ENTRY_OVERHEAD + len(e.data) for e in self._log)

    def export_snapshot(self) -> tuple[SnapshotMeta, bytes]:
        """The state machine as of its applied index, in snapshot_file format, in memory:
        the simulator has no disk, and these are the bytes write_snapshot would write."""
        meta = SnapshotMeta(self._applied, self.term(self._applied))
        out = io.BytesIO()
        dump_state(out, DictTxn(self._dbs), self.machine, meta)
        return meta, out.getvalue()

    def write_snapshot(self, path: str) -> SnapshotMeta:
        """Write export_snapshot()'s bytes to `path` (for parity with LmdbNodeStore)."""
        meta, data = self.export_snapshot()
        with open(path, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return meta

    def install_snapshot(self, data: bytes, hard_state: HardState | None) -> SnapshotMeta:
        """Replace the state machine and the log by a received snapshot, recording
        `hard_state` if given. The snapshot is verified and fully loaded before anything is
        replaced, so a damaged or foreign one raises StorageError and changes nothing."""
        header, records = open_snapshot(data, self.machine)
        dbs: dict[str, dict[bytes, bytes]] = {name: {} for name in self.machine.db_names}
        for name, key, value in records:
            dbs[name][key] = value
        # Nothing below can fail: commit.
        meta = SnapshotMeta(header.index, header.term)
        self._dbs = dbs
        self._log = []
        self._compacted = meta
        self._applied = meta.index
        if hard_state is not None:
            self._hard_state = hard_state
        return meta

    # -- state-machine reads -------------------------------------------------------------

    def get(self, key: bytes) -> tuple[bool, bytes, int]:
        """(found, value, applied index) as of the last completed write."""
        value = self.machine.read(DictTxn(self._dbs), key)
        return value is not None, value or b"", self._applied

    def range(self, req: rpc_pb2.RangeRequest) -> tuple[rpc_pb2.RangeResponse, int, int]:
        """As LmdbNodeStore.range."""
        resp, revision = self.machine.range(DictTxn(self._dbs), req)
        return resp, revision, self._applied

    def events(self, start_rev: int, key: bytes, range_end: bytes, *, prev_kv: bool = False,
               limit: int = 1000) -> tuple[list[kv_pb2.Event], int]:
        """As LmdbNodeStore.events."""
        return self.machine.events(DictTxn(self._dbs), start_rev, key, range_end, prev_kv,
                                   limit)

    def members(self) -> list[Member]:
        return membership.members(DictTxn(self._dbs))

    def removed_members(self) -> list[str]:
        return membership.removed_ids(DictTxn(self._dbs))

    def seed_members(self, initial: Iterable[Member]) -> bool:
        txn = DictTxn(self._dbs)
        wrote = membership.seed(txn, initial)
        txn.commit()
        return wrote

    def lease(self, lease_id: int) -> int | None:
        return self.machine.lease(DictTxn(self._dbs), lease_id)

    def leases(self) -> list[tuple[int, int]]:
        return self.machine.leases(DictTxn(self._dbs))

    def lease_keys(self, lease_id: int) -> list[bytes]:
        return self.machine.lease_keys(DictTxn(self._dbs), lease_id)

    def revisions(self) -> tuple[int, int]:
        return self.machine.revisions(DictTxn(self._dbs))

    def hash_kv(self, revision: int) -> tuple[int, int, int]:
        return self.machine.hash_kv(DictTxn(self._dbs), revision)

    def hash_all(self) -> int:
        return self.machine.hash_all(DictTxn(self._dbs))

    def file_bytes(self) -> int:
        return self.size_bytes()

    def defragment(self) -> None:
        """Nothing to reclaim in memory."""

    def applied_index(self) -> int:
        return self._applied

    def session(self, client_id: bytes) -> Session | None:
        return self.machine.session(DictTxn(self._dbs), client_id)

    def size_bytes(self) -> int:
        """An estimate of the bytes in use: log records plus every database record."""
        data = sum(len(k) + len(v) for db in self._dbs.values() for k, v in db.items())
        return self.log_bytes() + data

    def alarms(self) -> list[Alarm]:
        """The cluster alarms raised in the applied state."""
        return self.machine.active_alarms(DictTxn(self._dbs))

    def session_count(self) -> int:
        return self.machine.session_count(DictTxn(self._dbs))

    def shard_digests(self) -> list[str]:
        txn = DictTxn(self._dbs)
        return [self.machine.shard_digest(txn, s) for s in range(self.shards)]

    def state_digests(self) -> list[str]:
        """Shard digests plus the digest of revisions and history."""
        txn = DictTxn(self._dbs)
        return [*self.shard_digests(), self.machine.history_digest(txn)]

    def digest(self) -> tuple[int, list[str]]:
        """(applied index, shard digests), as LmdbNodeStore.digest."""
        return self._applied, self.shard_digests()

    def close(self) -> None:
        """Nothing to release; present so the simulator and runtime share one interface."""
