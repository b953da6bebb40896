"""Pure majority arithmetic over a fixed voter set.

Both functions take the configuration's voters by id and look only at them, as
etcd-io/raft's quorum.MajorityConfig does: a vote or a match index keyed by anything else (a
stranger, a forged sender, a removed node) counts for nothing. Counting whatever keys a map
happens to hold let one VOTE_RESP from "intruder" elect a 3-node candidate.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def majority(voters: int) -> int:
    return voters // 2 + 1


def committed_index(match_indexes: Mapping[str, int], voters: Collection[str]) -> int:
    """The largest index that a majority of `voters` has durably stored.

    Voters missing from `match_indexes` count as having stored nothing; other keys are
    ignored.
    """
    matches = sorted((match_indexes.get(v, 0) for v in voters), reverse=True)
    return matches[majority(len(voters)) - 1] if matches else 0


def vote_result(votes: Mapping[str, bool], voters: Collection[str]) -> bool | None:
    """True once a majority of `voters` granted, False once a majority is impossible, else
    None. Votes from ids outside `voters` are ignored."""
    q = majority(len(voters))
    granted = rejected = 0
    for v in voters:
        vote = votes.get(v)
        if vote is True:
            granted += 1
        elif vote is False:
            rejected += 1
    if granted >= q:
        return True
    if rejected > len(voters) - q:
        return False
    return None
