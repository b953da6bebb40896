"""Leader election (etcd's concurrency.Election), interoperable with ``etcdctl elect``.

    election = Election(client, "workers/leader", ttl=10)
    election.campaign("worker-1")        # blocks until this process is the leader
    election.proclaim("worker-1 (busy)") # update the value others observe
    election.resign()                    # let the next campaigner in

    for kv in Election(client, "workers/leader").observe():
        print("leader is", kv.value)     # the current leader, then every change

Each campaigner puts ``NAME/<lease id hex>`` under its lease; the leader is the key with
the lowest create revision, and a campaigner waits for the one just ahead of it to go, as
in :mod:`kvstore.client.locks` (the same algorithm). ``leader_revision`` (the leader key's
create revision) serves as a fencing token for the leader's term. When the lease is lost
the leadership is too: check ``lost`` or pass ``on_lost``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

from kvstore.client import _recipes as recipes
from kvstore.client._recipes import AsyncDriver, SyncDriver
from kvstore.client.errors import NotElected
from kvstore.client.leases import AsyncLease, Lease, LostCallback
from kvstore.client.ranges import KeyLike, KeyValue, to_bytes

DEFAULT_ELECTION_TTL = 60  # seconds, as etcdctl elect's session


class _ElectionBase:
    def __init__(self, name: KeyLike, ttl: int, on_lost: LostCallback | None) -> None:
        self.name = to_bytes(name, "election name")
        self.prefix = self.name + b"/"
        self.ttl = ttl
        self.on_lost = on_lost
        self.key = b""  # our key while we campaign or lead
        self.leader_revision = 0  # its create revision: the term's fencing token
        self._own_lease = False

    @property
    def is_leader(self) -> bool:
        lease = getattr(self, "lease", None)
        return bool(self.key) and not (lease is not None and lease.lost)

    @property
    def lost(self) -> bool:
        lease = getattr(self, "lease", None)
        return lease is not None and lease.lost

    def _ours(self) -> tuple[bytes, int]:
        if not self.key:
            raise NotElected(f"election {self.name!r}: not the leader")
        return self.key, self.leader_revision

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout


class Election(_ElectionBase):
    """An election on ``name`` for one campaigner (``lease``: share an existing lease,
    else the election grants its own of ``ttl`` seconds on campaign)."""

    def __init__(self, client: object, name: KeyLike, *, ttl: int = DEFAULT_ELECTION_TTL,
                 lease: Lease | None = None, on_lost: LostCallback | None = None) -> None:
        super().__init__(name, ttl, on_lost)
        self._driver = SyncDriver(client._face)  # type: ignore[attr-defined]
        self.lease = lease

    def campaign(self, value: KeyLike, timeout: float | None = None) -> None:
        """Block until elected, with ``value`` as the leader's value (``timeout``: give up,
        LockTimeout, having withdrawn)."""
        if self.lease is None:
            self.lease = Lease(self._driver.face, self.ttl, on_lost=self.on_lost)
            self._own_lease = True
        self.lease.grant()
        self.key, self.leader_revision = self._driver.run(recipes.campaign(
            self.prefix, self.lease.id, to_bytes(value, "value"), self._deadline(timeout)))

    def proclaim(self, value: KeyLike) -> None:
        """Change the leader's value without a new election; NotElected if not leader."""
        key, revision = self._ours()
        assert self.lease is not None
        try:
            self._driver.run(recipes.proclaim(key, revision, self.lease.id,
                                              to_bytes(value, "value")))
        except NotElected:
            self.key = b""
            raise

    def resign(self) -> None:
        """Stop leading (no-op if not leading); the next campaigner takes over."""
        if self.key:
            key, self.key = self.key, b""
            self._driver.run(recipes.resign(key, self.leader_revision))

    def leader(self) -> KeyValue | None:
        """The current leader's key and value (None: nobody leads)."""
        return self._driver.run(recipes.leader(self.prefix))  # type: ignore[no-any-return]

    def observe(self) -> Iterator[KeyValue]:
        """The leader, then each value it proclaims, then the next leader... (until the
        iterator is closed: ``it.close()`` or leaving a ``for`` loop)."""
        return self._driver.iterate(recipes.observe(self.prefix))

    def close(self) -> None:
        """Resign and revoke the election's own lease."""
        try:
            self.resign()
        finally:
            if self._own_lease and self.lease is not None:
                lease, self.lease, self._own_lease = self.lease, None, False
                lease.revoke()

    def __enter__(self) -> Election:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncElection(_ElectionBase):
    """The asyncio election (same methods, awaited; ``observe()`` an async iterator)."""

    def __init__(self, client: object, name: KeyLike, *, ttl: int = DEFAULT_ELECTION_TTL,
                 lease: AsyncLease | None = None, on_lost: LostCallback | None = None) -> None:
        super().__init__(name, ttl, on_lost)
        self._driver = AsyncDriver(client._face)  # type: ignore[attr-defined]
        self.lease = lease

    async def campaign(self, value: KeyLike, timeout: float | None = None) -> None:
        if self.lease is None:
            self.lease = AsyncLease(self._driver.face, self.ttl, on_lost=self.on_lost)
            self._own_lease = True
        await self.lease.grant()
        self.key, self.leader_revision = await self._driver.run(recipes.campaign(
            self.prefix, self.lease.id, to_bytes(value, "value"), self._deadline(timeout)))

    async def proclaim(self, value: KeyLike) -> None:
        key, revision = self._ours()
        assert self.lease is not None
        try:
            await self._driver.run(recipes.proclaim(key, revision, self.lease.id,
                                                    to_bytes(value, "value")))
        except NotElected:
            self.key = b""
            raise

    async def resign(self) -> None:
        if self.key:
            key, self.key = self.key, b""
            await self._driver.run(recipes.resign(key, self.leader_revision))

    async def leader(self) -> KeyValue | None:
        return await self._driver.run(recipes.leader(self.prefix))  # type: ignore[no-any-return]

    def observe(self) -> AsyncIterator[KeyValue]:
        return self._driver.iterate(recipes.observe(self.prefix))

    async def close(self) -> None:
        try:
            await self.resign()
        finally:
            if self._own_lease and self.lease is not None:
                lease, self.lease, self._own_lease = self.lease, None, False
                await lease.revoke()

    async def __aenter__(self) -> AsyncElection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["DEFAULT_ELECTION_TTL", "AsyncElection", "Election"]
