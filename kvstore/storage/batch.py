"""Checks shared by the LMDB and in-memory stores before a persist_and_apply batch is written.

Both stores must refuse the same impossible requests (a gap in the log, rewriting an applied
entry, applying an entry that is not in the log, skipping an index), because doing any of them
silently would make a replica diverge. A refusal raises StorageError and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvstore.raft.types import Entry
from kvstore.storage.errors import StorageError


def plan_batch(
    entries: Sequence[Entry],
    committed: Sequence[Entry],
    *,
    first_index: int,
    last_index: int,
    applied: int,
    stored_term: Callable[[int], int],
) -> tuple[int, list[Entry]]:
    """Validate a batch; return (last index after the write, committed entries to apply).

    `stored_term(i)` is the term of the entry at index i in the log as it is before the write
    (first_index <= i <= last_index). Committed entries at or below `applied` are dropped:
    they were applied by an earlier call, and applying them again would break exactly-once.
    """
    new_last = last_index
    if entries:
        first = entries[0].index
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise StorageError(
                    f"entries are not contiguous: index {entry.index} at position {offset} "
                    f"of a batch starting at {first}"
                )
        if first < first_index or first > last_index + 1:
            raise StorageError(
                f"entries starting at {first} would leave a gap or precede the log "
                f"(log holds {first_index}..{last_index})"
            )
        for entry in entries:
            if entry.index > min(applied, last_index):
                break
            if stored_term(entry.index) != entry.term:
                raise StorageError(
                    f"refusing to replace applied entry {entry.index} (term "
                    f"{stored_term(entry.index)}) with one of term {entry.term}"
                )
        new_last = entries[-1].index

    def term_after(index: int) -> int:
        if entries and index >= entries[0].index:
            return entries[index - entries[0].index].term
        return stored_term(index)

    to_apply = [e for e in committed if e.index > applied]
    expected = applied + 1
    for entry in to_apply:
        if entry.index != expected:
            raise StorageError(
                f"committed entry {entry.index} applied out of order (expected {expected})"
            )
        if entry.index > new_last:
            raise StorageError(
                f"committed entry {entry.index} is not in the local log (last {new_last})"
            )
        if term_after(entry.index) != entry.term:
            raise StorageError(
                f"committed entry {entry.index} has term {entry.term} but the log holds "
                f"term {term_after(entry.index)} there"
            )
        expected += 1
    return new_last, to_apply
