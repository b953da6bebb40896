"""The leader's lease clock: when each lease expires, keep-alives, and which leases to revoke.

Lease expiry is the one place where a node's clock matters, so it is decided in one place
(etcd's lessor has the same split): the leader keeps an expiry time per lease in memory,
renews it on keep-alives, and when one passes it proposes a revoke through the log, so every
member deletes the lease's keys at the same entry. Followers keep no clocks at all.

A new leader cannot know how much of a lease's TTL the old leader had left (its clock and its
keep-alives died with it), so it gives every lease its full TTL again, counted from its own
promotion (etcd's rule): a lease may then outlive its TTL across a failover, but never
expires early. A lease's TTL is raised to at least `min_ttl`, which is longer than an
election, so that a failover alone cannot make a kept-alive lease expire.

Sans-I/O: the clock is injected (the simulator's is virtual); proposing is the runtime's job.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

from kvstore.raft.errors import NotLeader
from kvstore.state.leases import LeaseChange

# A revoke that has not been applied this long after it was proposed is proposed again
# (the first may have been lost with a leadership change).
REVOKE_RETRY_SECONDS = 3.0


class LeaseNotFound(Exception):
    """No lease with this id (never granted, revoked, or expired)."""


class Lessor:
    def __init__(self, clock: Callable[[], float], rng: random.Random, min_ttl: int) -> None:
        self._clock = clock
        self._rng = rng
        self.min_ttl = min_ttl
        self.is_leader = False
        self.leader_id = ""
        self._ttl: dict[int, int] = {}  # granted TTL of every lease we track (leader only)
        self._expiry: dict[int, float] = {}
        self._revoking: dict[int, float] = {}  # lease id -> when we proposed its revoke

    # -- leadership ----------------------------------------------------------------------

    def promote(self, leases: Iterable[tuple[int, int]]) -> None:
        """We became leader: every lease in the applied state gets its full TTL from now."""
        now = self._clock()
        self.is_leader = True
        self._ttl = dict(leases)
        self._expiry = {lid: now + ttl for lid, ttl in self._ttl.items()}
        self._revoking = {}

    def demote(self, leader_id: str) -> None:
        """We are no longer leader: forget every clock (the next leader starts its own)."""
        self.is_leader = False
        self.leader_id = leader_id
        self._ttl, self._expiry, self._revoking = {}, {}, {}

    def _require_leader(self) -> None:
        if not self.is_leader:
            raise NotLeader(self.leader_id)

    # -- applied changes -----------------------------------------------------------------

    def applied(self, changes: Iterable[LeaseChange]) -> None:
        """Follow grants and revokes as they are applied (on the leader)."""
        if not self.is_leader:
            return
        now = self._clock()
        for change in changes:
            if change.kind == "grant":
                self._ttl[change.id] = change.ttl
                self._expiry[change.id] = now + change.ttl
            else:
                self._ttl.pop(change.id, None)
                self._expiry.pop(change.id, None)
                self._revoking.pop(change.id, None)

    # -- client calls (leader only) ------------------------------------------------------

    def start_keepalive(self, lease_id: int) -> float:
        """A keep-alive arrived: check it (NotLeader, LeaseNotFound) and return its arrival
        time, to pass to keepalive() once a ReadIndex round confirmed our leadership."""
        self.granted_ttl(lease_id)
        if lease_id in self._revoking:
            raise LeaseNotFound(lease_id)
        return self._clock()

    def keepalive(self, lease_id: int, since: float | None = None) -> int:
        """Renew: the lease now expires a full TTL after `since` (default now). Returns
        that TTL.

        Shells pass as `since` the time the keep-alive arrived and call this only after a
        ReadIndex round confirmed our leadership (NodeDriver.lease_keepalive): a deposed
        leader that does not know it yet cannot confirm, and a confirmed one heard from a
        majority after `since`, so before any new leader was elected, whose promotion
        then gives the lease a full TTL counted from a later time. So a lease never
        expires less than a TTL after a keep-alive that was answered was sent."""
        self._require_leader()
        ttl = self._ttl.get(lease_id)
        if ttl is None or lease_id in self._revoking:
            raise LeaseNotFound(lease_id)
        start = self._clock() if since is None else since
        self._expiry[lease_id] = max(self._expiry.get(lease_id, start), start + ttl)
        return ttl

    def time_to_live(self, lease_id: int) -> int:
        """Seconds left (rounded up, never negative)."""
        self._require_leader()
        expiry = self._expiry.get(lease_id)
        if expiry is None:
            raise LeaseNotFound(lease_id)
        return max(0, math.ceil(expiry - self._clock()))

    def granted_ttl(self, lease_id: int) -> int:
        self._require_leader()
        ttl = self._ttl.get(lease_id)
        if ttl is None:
            raise LeaseNotFound(lease_id)
        return ttl

    def new_id(self) -> int:
        """A fresh lease id: positive, 63 bits, not in use (the grant entry carries it, so
        every member agrees on it; a collision with a lease granted concurrently is refused
        by the state machine as "lease already exists")."""
        while True:
            lid = self._rng.getrandbits(63)
            if lid and lid not in self._ttl:
                return lid

    def ttl_for(self, requested: int) -> int:
        """The TTL a grant gets: at least min_ttl (as etcd raises short TTLs)."""
        return max(requested, self.min_ttl)

    # -- expiry --------------------------------------------------------------------------

    def expired(self) -> list[int]:
        """Leases whose time is up and whose revoke should be proposed now (each once,
        again only if the revoke has not been applied after REVOKE_RETRY_SECONDS)."""
        if not self.is_leader:
            return []
        now = self._clock()
        due: list[int] = []
        for lid, expiry in self._expiry.items():
            if expiry > now:
                continue
            proposed = self._revoking.get(lid)
            if proposed is None or now - proposed >= REVOKE_RETRY_SECONDS:
                self._revoking[lid] = now
                due.append(lid)
        return sorted(due)
