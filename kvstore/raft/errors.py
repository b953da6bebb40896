"""Expected outcomes the core reports to its caller. Broken invariants use assert instead."""

from __future__ import annotations


class RaftError(Exception):
    pass


class NotLeader(RaftError):
    """A proposal or ReadIndex request reached a node that is not the leader."""

    def __init__(self, leader: str) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader
