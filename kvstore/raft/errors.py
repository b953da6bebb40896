"""Expected outcomes the core reports to its caller. Broken invariants use assert instead."""

from __future__ import annotations


class RaftError(Exception):
    pass


class NotLeader(RaftError):
    """A proposal or ReadIndex request reached a node that is not the leader."""

    def __init__(self, leader: str) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ConfChangeRefused(RaftError):
    """A membership change the leader cannot propose now (one is still being applied,
    this term has no committed entry yet, or a leader transfer is under way)."""


class TransferRefused(RaftError):
    """A leader transfer that cannot start (the target is not another voter)."""
