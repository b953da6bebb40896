"""Pure majority arithmetic over a fixed voter set."""

from __future__ import annotations

from collections.abc import Iterable


def majority(voters: int) -> int:
    return voters // 2 + 1


def committed_index(match_indexes: Iterable[int], voters: int) -> int:
    """The largest index that a majority of voters has durably stored.

    Voters missing from `match_indexes` count as having stored nothing.
    """
    matches = sorted(match_indexes, reverse=True)
    q = majority(voters)
    return matches[q - 1] if len(matches) >= q else 0


def vote_result(votes: dict[str, bool], voters: int) -> bool | None:
    """True once a majority granted, False once a majority is impossible, else None."""
    q = majority(voters)
    granted = sum(1 for g in votes.values() if g)
    rejected = len(votes) - granted
    if granted >= q:
        return True
    if rejected > voters - q:
        return False
    return None
