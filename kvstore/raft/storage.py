"""The read side of stable storage that the Raft core consults, and an in-memory store.

The core never writes storage itself: it hands entries and hard state out in a Ready and
the runtime persists them (see kvstore.storage for the LMDB write-ahead log). MemoryStorage
implements both sides and is what unit tests and the simulator use.
"""

from __future__ import annotations

from typing import Protocol

from kvstore.raft.types import Entry, HardState, SnapshotMeta


class LogStorage(Protocol):
    """Stable (fsynced) log and hard state. Indexes start at 1; index 0 has term 0."""

    def initial_state(self) -> HardState: ...

    def first_index(self) -> int:
        """Index of the first entry available (1 until the log is compacted)."""
        ...

    def last_index(self) -> int:
        """Index of the last stable entry, or first_index() - 1 when there is none."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at `index`, for first_index() - 1 <= index <= last_index()."""
        ...

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi, all of which must exist."""
        ...


class MemoryStorage:
    """LogStorage kept in a list; `save` mimics one durable write of a Ready."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot = SnapshotMeta(0, 0)  # everything up to here is compacted away
        self.log: list[Entry] = []  # log[i].index == snapshot.index + 1 + i

    def initial_state(self) -> HardState:
        return self.hard_state

    def first_index(self) -> int:
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.snapshot.index + len(self.log)

    def term(self, index: int) -> int:
        if index == self.snapshot.index:
            return self.snapshot.term
        return self.log[index - self.snapshot.index - 1].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        base = self.snapshot.index + 1
        return self.log[lo - base : hi - base]

    def save(self, hard_state: HardState | None, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Replace the log from entries[0].index on, and record hard_state."""
        if entries:
            first = entries[0].index
            assert self.first_index() <= first <= self.last_index() + 1, "gap in the log"
            del self.log[first - self.snapshot.index - 1 :]
            self.log.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def compact(self, index: int) -> None:
        """Drop entries up to `index` (the state machine keeps their effect)."""
        assert self.first_index() <= index <= self.last_index()
        term = self.term(index)
        del self.log[: index - self.snapshot.index]
        self.snapshot = SnapshotMeta(index, term)

    def install(self, snap: SnapshotMeta) -> None:
        """Replace the log by an empty one starting after `snap`."""
        self.log = []
        self.snapshot = snap
