"""The Raft log as the core sees it: the stable part in LogStorage plus an unstable tail.

Invariants: `unstable[i].index == offset + i`; entries at or after `offset` come from
`unstable` and shadow whatever storage holds there (a conflicting suffix that is being
replaced); entries before `offset` come from storage. `applied <= committed <= last_index()`.

A received snapshot that is not yet installed (`pending_snapshot`) replaces everything the
storage holds: until the runtime installs it, the log starts right after it.
"""

from __future__ import annotations

from kvstore.raft.storage import LogStorage
from kvstore.raft.types import Entry, Snapshot, SnapshotMeta


class RaftLog:
    def __init__(self, storage: LogStorage, applied: int = 0) -> None:
        self.storage = storage
        self.pending_snapshot: SnapshotMeta | None = None
        self.incoming_snapshot: Snapshot | None = None  # the data behind pending_snapshot
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        self.committed = storage.initial_state().commit
        first = storage.first_index()
        self.applied = max(applied, first - 1)
        if self.committed < self.applied:
            # The state machine and its applied index are written in one transaction with
            # the data; a hard state written earlier may lag behind it.
            self.committed = self.applied
        assert self.committed <= self.last_index(), "commit index beyond the log"

    # -- reading ---------------------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return self.storage.last_index()

    def stable_last_index(self) -> int:
        """Last index that is durable locally (storage, not shadowed by `unstable`)."""
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return min(self.storage.last_index(), self.offset - 1)

    def term(self, index: int) -> int | None:
        """Term of `index`, or None when it is beyond the log or compacted away."""
        if index >= self.offset:
            i = index - self.offset
            return self.unstable[i].term if i < len(self.unstable) else None
        snap = self.pending_snapshot
        if snap is not None:
            return snap.term if index == snap.index else None
        if index < self.storage.first_index() - 1 or index > self.storage.last_index():
            return None
        return self.storage.term(index)

    def last_term(self) -> int:
        term = self.term(self.last_index())
        assert term is not None
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with lo <= index < hi; with `max_bytes`, a prefix of about that size
        (at least one entry)."""
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self.offset:
            out.extend(self.storage.entries(lo, min(hi, self.offset)))
        if hi > self.offset:
            out.extend(self.unstable[max(lo, self.offset) - self.offset : hi - self.offset])
        if max_bytes is not None:
            size = 0
            for n, e in enumerate(out):
                size += len(e.data) + 24
                if size > max_bytes and n > 0:
                    return out[:n]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Thesis 3.6.1: a candidate's log is at least as up to date as ours."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or disagrees with our log, or 0."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= `index` whose term is <= `term` (fast backtracking hint)."""
        index = min(index, self.last_index())
        while index > 0:
            t = self.term(index)
            if t is None or t <= term:
                break
            index -= 1
        return index

    # -- changing --------------------------------------------------------------------

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Append, replacing any suffix that starts at entries[0].index."""
        if not entries:
            return
        after = entries[0].index
        assert after > self.committed, f"truncating committed entry {after}"
        if after == self.offset + len(self.unstable):
            self.unstable.extend(entries)
        elif after <= self.offset:
            self.offset = after
            self.unstable = list(entries)
        else:
            del self.unstable[after - self.offset :]
            self.unstable.extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """AppendEntries consistency check (thesis 3.5). Returns the last index known to
        match the leader, or None when the check fails."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            self.append(entries[conflict - prev_index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), "commit beyond the last index"
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit `index` only if it belongs to `term` (thesis 3.6.2)."""
        if index > self.committed and self.term(index) == term:
            self.committed = index
            return True
        return False

    def restore(self, incoming: Snapshot) -> None:
        """Replace the whole log by a snapshot up to snap.index (installed by the runtime)."""
        snap = incoming.meta
        assert snap.index > self.committed, "restoring a snapshot older than the commit"
        self.pending_snapshot = snap
        self.incoming_snapshot = incoming
        self.unstable = []
        self.offset = snap.index + 1
        self.committed = snap.index
        self.applied = snap.index

    def snapshot_installed(self, snap: SnapshotMeta) -> None:
        if self.pending_snapshot == snap:
            self.pending_snapshot = None
            self.incoming_snapshot = None

    def unstable_entries(self) -> tuple[Entry, ...]:
        return tuple(self.unstable)

    def stable_to(self, index: int, term: int) -> None:
        """The runtime made entries up to `index` durable."""
        if index < self.offset or self.term(index) != term:
            return
        del self.unstable[: index + 1 - self.offset]
        self.offset = index + 1

    def next_committed(self, max_bytes: int | None = None) -> list[Entry]:
        if self.committed <= self.applied:
            return []
        return self.entries(self.applied + 1, self.committed + 1, max_bytes)

    def applied_to(self, index: int) -> None:
        assert index <= self.committed
        self.applied = max(self.applied, index)
