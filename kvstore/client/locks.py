"""Distributed locks (etcd's concurrency.Mutex), with a fencing token.

    with client.lock("jobs/nightly", ttl=30) as lock:
        storage.write(data, fencing_token=lock.token)

The algorithm and key layout are etcd's (see :mod:`kvstore.client._recipes`), so a
kvstore lock and ``etcdctl lock jobs/nightly`` exclude each other.

Why a fencing token: the lock lives as long as its lease, and a lease is a promise about
*time*. A holder that is paused (GC, SIGSTOP, a swapped-out VM) or cut off for longer than
the TTL keeps running its critical section while the cluster has expired its lease and
given the lock to someone else; when it wakes up it cannot tell, and two holders act at
once. No client-side check closes that window (the pause can fall between the check and
the write). The token (``lock.token``, the create revision of the holder's key) strictly
increases from one holder to the next, so the protected resource can close it: remember
the highest token seen and refuse any request carrying a lower one. ``lock.lost`` (and
``on_lost``) tell a live holder promptly that its lease is gone, which is enough for
advisory use, but only the token makes a stale holder harmless.
"""

from __future__ import annotations

import time
from types import TracebackType

from kvstore.client._recipes import AsyncDriver, SyncDriver, lock, unlock
from kvstore.client.leases import AsyncLease, Lease, LostCallback
from kvstore.client.ranges import KeyLike, to_bytes

DEFAULT_LOCK_TTL = 60  # seconds, as etcdctl lock's session


def lock_prefix(name: KeyLike) -> bytes:
    """etcd's mutex prefix: the name and a slash."""
    return to_bytes(name, "lock name") + b"/"


class _LockBase:
    def __init__(self, name: KeyLike, ttl: int, on_lost: LostCallback | None) -> None:
        self.name = to_bytes(name, "lock name")
        self.prefix = lock_prefix(name)
        self.ttl = ttl
        self.on_lost = on_lost
        self.key = b""  # the holder's key, NAME/<lease id hex>, once acquired
        self.token = 0  # the fencing token: the key's create revision
        self._own_lease = False

    @property
    def held(self) -> bool:
        """Acquired, not released, and its lease not known to be lost."""
        return bool(self.key) and not self.lost

    @property
    def lost(self) -> bool:
        """The lease under the lock expired or could not be renewed: not held any more."""
        lease = getattr(self, "lease", None)
        return lease is not None and lease.lost

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    def __repr__(self) -> str:
        state = f"held token={self.token}" if self.held else ("lost" if self.lost else "free")
        return f"<{type(self).__name__} {self.name!r} {state}>"


class Lock(_LockBase):
    """A lock on ``name``; ``acquire()``/``release()`` or ``with``. Uses ``lease`` if given
    (several locks can share one, as an etcd session), else its own lease of ``ttl``
    seconds, revoked on release."""

    def __init__(self, driver: SyncDriver, name: KeyLike, *, ttl: int = DEFAULT_LOCK_TTL,
                 lease: Lease | None = None, on_lost: LostCallback | None = None) -> None:
        super().__init__(name, ttl, on_lost)
        self._driver = driver
        self.lease = lease

    def acquire(self, timeout: float | None = None) -> Lock:
        """Block until the lock is ours (``timeout``: at most that long, then LockTimeout,
        with nothing left held). Returns self; ``token`` is then the fencing token."""
        if self.key:
            raise RuntimeError(f"lock {self.name!r} is already held by this object")
        if self.lease is None:
            self.lease = Lease(self._driver.face, self.ttl, on_lost=self.on_lost)
            self._own_lease = True
        self.lease.grant()
        try:
            self.key, self.token = self._driver.run(
                lock(self.prefix, self.lease.id, self._deadline(timeout)))
        except BaseException:
            self._drop_lease()
            raise
        return self

    def release(self) -> None:
        """Give the lock up: delete the key (and revoke the lock's own lease)."""
        key, self.key = self.key, b""
        try:
            if key and not self.lost:
                self._driver.run(unlock(key))
        finally:
            self._drop_lease()

    def _drop_lease(self) -> None:
        if self._own_lease and self.lease is not None:
            lease, self.lease, self._own_lease = self.lease, None, False
            lease.revoke()

    def __enter__(self) -> Lock:
        # ``with lock.acquire(timeout=5):`` enters an acquired lock: keep it.
        return self if self.key else self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class AsyncLock(_LockBase):
    """The asyncio lock: ``async with client.lock("name") as lock``."""

    def __init__(self, driver: AsyncDriver, name: KeyLike, *, ttl: int = DEFAULT_LOCK_TTL,
                 lease: AsyncLease | None = None, on_lost: LostCallback | None = None) -> None:
        super().__init__(name, ttl, on_lost)
        self._driver = driver
        self.lease = lease

    async def acquire(self, timeout: float | None = None) -> AsyncLock:
        if self.key:
            raise RuntimeError(f"lock {self.name!r} is already held by this object")
        if self.lease is None:
            self.lease = AsyncLease(self._driver.face, self.ttl, on_lost=self.on_lost)
            self._own_lease = True
        await self.lease.grant()
        try:
            self.key, self.token = await self._driver.run(
                lock(self.prefix, self.lease.id, self._deadline(timeout)))
        except BaseException:
            await self._drop_lease()
            raise
        return self

    async def release(self) -> None:
        key, self.key = self.key, b""
        try:
            if key and not self.lost:
                await self._driver.run(unlock(key))
        finally:
            await self._drop_lease()

    async def _drop_lease(self) -> None:
        if self._own_lease and self.lease is not None:
            lease, self.lease, self._own_lease = self.lease, None, False
            await lease.revoke()

    async def __aenter__(self) -> AsyncLock:
        return self if self.key else await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.release()


__all__ = ["DEFAULT_LOCK_TTL", "AsyncLock", "Lock", "lock_prefix"]
