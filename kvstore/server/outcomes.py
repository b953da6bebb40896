"""What a waiting request is told: the outcomes of proposals and reads as exceptions, and
the matching of applied entries to their waiters. Shared by the node runtime, its asyncio
shell and the simulator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kvstore.raft.types import Entry
from kvstore.state.alarms import NOSPACE
from kvstore.state.commands import ApplyResult


class LeadershipLost(Exception):
    """The request was accepted by a leader that lost its role before answering; a write
    may or may not be applied (the client retries it with the same write id)."""


class StaleRequest(Exception):
    """The write id is older than what its session still remembers."""


class SessionExpired(Exception):
    """The write names a session the state machine does not hold (evicted, or never
    registered); it was not applied now (an earlier attempt of it may have been)."""


class SnapshotRefused(ValueError):
    """A snapshot that may be intact but is not ours to take now (not from the leader we
    follow in our term); a damaged one raises a plain ValueError."""


class AlarmRefused(Exception):
    """A put or compare-and-swap was refused because a cluster alarm is raised (NOSPACE or
    CORRUPT); it was not applied."""

    def __init__(self, alarm_type: int) -> None:
        self.alarm_type = alarm_type
        name = "database space exceeded" if alarm_type == NOSPACE else "corruption detected"
        super().__init__(f"writes refused: {name} (see `kvstore alarm list`)")


class Waiter(Protocol):
    """What a waiting request offers: an asyncio.Future, or the simulator's promise."""

    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


def resolve_applied(
    waiting: dict[int, tuple[int, Waiter]],
    committed: Sequence[Entry],
    results: Sequence[ApplyResult],
    only: Callable[[Waiter], bool] | None = None,
) -> int:
    """Answer the proposals waiting on `committed` entries, matched by (index, term) —
    never by order: an entry replaced after a leader change fails its waiter. With
    `only`, answer just the waiters it accepts and leave every waiter in `waiting` (an
    early answer: the later full pass finds them done). Returns how many were answered."""
    by_index = {r.index: r for r in results}
    answered = 0
    for e in committed:
        entry_waiter = (waiting.pop(e.index, None) if only is None
                        else waiting.get(e.index))
        if entry_waiter is None:
            continue
        term, fut = entry_waiter
        if fut.done() or (only is not None and not only(fut)):
            continue
        _resolve_one(fut, e, term, by_index.get(e.index))
        answered += 1
    return answered


def _resolve_one(fut: Waiter, entry: Entry, term: int, result: ApplyResult | None) -> None:
    """Answer one proposal (proposed in `term`) from the outcome of applying `entry`."""
    if entry.term != term or result is None:
        fut.set_exception(LeadershipLost("the entry was replaced after a leader change"))
    elif result.stale:
        fut.set_exception(StaleRequest("write id older than its session remembers"))
    elif result.alarm:
        fut.set_exception(AlarmRefused(result.alarm))
    elif result.expired:
        fut.set_exception(SessionExpired(
            "client session not found (evicted or never registered); not applied now, "
            "an earlier attempt may have been: register a new session"))
    else:
        fut.set_result(result)
