"""In-memory node store for the deterministic simulator.

Same public methods as LmdbNodeStore and the same apply logic (ShardedStateMachine over a
DictTxn), but no disk: every persist_and_apply is atomic (all of it or, on an exception,
none of it) and "durable" by definition. A simulated crash drops the node's volatile state
and keeps this object, exactly as a real crash keeps the LMDB files.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.raft.types import Entry, HardState
from kvstore.state.commands import ApplyResult
from kvstore.state.machine import (
    DEFAULT_MAX_SESSIONS,
    DictTxn,
    Session,
    ShardedStateMachine,
)
from kvstore.storage.batch import plan_batch
from kvstore.storage.errors import StorageError


class MemoryNodeStore:
    """LogStorage + state machine kept in Python lists and dicts."""

    def __init__(
        self, shards: int = 16, vnodes: int = 64, max_sessions: int = DEFAULT_MAX_SESSIONS
    ) -> None:
        self.shards = shards
        self.vnodes = vnodes
        self.machine = ShardedStateMachine(shards, vnodes, max_sessions)
        self._hard_state = HardState()
        self._log: list[Entry] = []  # _log[i].index == i + 1
        self._applied = 0
        self._dbs: dict[str, dict[bytes, bytes]] = {name: {} for name in self.machine.db_names}

    # -- LogStorage ----------------------------------------------------------------------

    def initial_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return 1

    def last_index(self) -> int:
        return len(self._log)

    def term(self, index: int) -> int:
        if index == 0:
            return 0
        if not 1 <= index <= len(self._log):
            raise StorageError(f"log entry {index} is not in the log (1..{len(self._log)})")
        return self._log[index - 1].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        if lo < 1 or hi > len(self._log) + 1 or lo > hi:
            raise StorageError(f"log entries [{lo}, {hi}) not in the log (1..{len(self._log)})")
        return self._log[lo - 1 : hi - 1]

    # -- writes --------------------------------------------------------------------------

    def persist_and_apply(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        committed: Sequence[Entry],
    ) -> list[ApplyResult]:
        """Replace the log from entries[0].index on, record hard_state, apply `committed`.

        Same contract as LmdbNodeStore.persist_and_apply; everything is validated and applied
        to a buffered transaction before any state changes, so a failure changes nothing.
        """
        _, to_apply = plan_batch(
            entries,
            committed,
            first_index=1,
            last_index=len(self._log),
            applied=self._applied,
            stored_term=self.term,
        )
        txn = DictTxn(self._dbs)
        results = self.machine.apply_batch(txn, to_apply)
        # Nothing below can fail: commit.
        if entries:
            del self._log[entries[0].index - 1 :]
            self._log.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state
        txn.commit()
        if to_apply:
            self._applied = to_apply[-1].index
        return results

    # -- state-machine reads -------------------------------------------------------------

    def get(self, key: bytes) -> tuple[bool, bytes, int]:
        """(found, value, applied index) as of the last completed persist_and_apply."""
        value = self.machine.read(DictTxn(self._dbs), key)
        return value is not None, value or b"", self._applied

    def applied_index(self) -> int:
        return self._applied

    def session(self, client_id: bytes) -> Session | None:
        return self.machine.session(DictTxn(self._dbs), client_id)

    def session_count(self) -> int:
        return self.machine.session_count(DictTxn(self._dbs))

    def shard_digests(self) -> list[str]:
        txn = DictTxn(self._dbs)
        return [self.machine.shard_digest(txn, s) for s in range(self.shards)]

    def digest(self) -> tuple[int, list[str]]:
        """(applied index, shard digests), as LmdbNodeStore.digest."""
        return self._applied, self.shard_digests()

    def close(self) -> None:
        """Nothing to release; present so the simulator and runtime share one interface."""
