"""Watch, leases and locks as methods of KVClient and AsyncKVClient.

Mixins rather than code in sync.py/aio.py: the clients stay about the native KV service,
and these methods only build the objects of :mod:`kvstore.client.watch`,
:mod:`kvstore.client.leases` and :mod:`kvstore.client.locks` on the client's etcd face
(``self._face``, made by the client over its own channels).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from kvstore.client._recipes import AsyncDriver, SyncDriver
from kvstore.client.etcd_face import (
    LeaseGrant,
    LeaseInfo,
    keepalive_once_op,
    lease_grant_op,
    lease_revoke_op,
    leases_op,
    time_to_live_op,
)
from kvstore.client.leases import AsyncLease, Lease, LostCallback
from kvstore.client.locks import DEFAULT_LOCK_TTL, AsyncLock, Lock
from kvstore.client.ranges import KeyLike
from kvstore.client.watch import AsyncWatch, Watch, create_request

if TYPE_CHECKING:
    from kvstore.client.etcd_face import AsyncFace, SyncFace


class SyncCoordination:
    """KVClient's watch, lease and lock methods."""

    _face: SyncFace

    def watch(
        self, key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None,
        start_revision: int = 0, prev_kv: bool = False, filters: Iterable[str | int] = (),
    ) -> Watch:
        """Watch ``key`` (or ``prefix``/``range_end``'s range) from ``start_revision`` (0:
        changes after now); returns once the watch exists, as an iterator of WatchEvent
        (close it, or use ``with``). Resumes across broken streams and failed members
        without losing or repeating events; raises Compacted if history it needs is gone.
        ``filters``: "noput", "nodelete"."""
        spec = create_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv,
                              filters=filters)
        return Watch(self._face, spec, start_revision)

    def lease(self, ttl: int, *, lease_id: int = 0, on_lost: LostCallback | None = None,
              keepalive: bool = True) -> Lease:
        """A lease of ``ttl`` seconds as a context manager: granted on enter, kept alive in
        the background every TTL/3, revoked on exit; ``lost``/``on_lost`` report a loss.
        (``lease.grant()`` and ``lease.revoke()`` without ``with``.)"""
        return Lease(self._face, ttl, lease_id=lease_id, on_lost=on_lost,
                     keepalive=keepalive)

    def lock(self, name: KeyLike, *, ttl: int = DEFAULT_LOCK_TTL, lease: Lease | None = None,
             on_lost: LostCallback | None = None) -> Lock:
        """etcd's mutex on ``name`` (interoperates with ``etcdctl lock``): ``with
        client.lock(name) as lock:`` holds it; ``lock.token`` is the fencing token."""
        return Lock(SyncDriver(self._face), name, ttl=ttl, lease=lease, on_lost=on_lost)

    def lease_grant(self, ttl: int, lease_id: int = 0, *,
                    timeout: float | None = None) -> LeaseGrant:
        """Grant a lease (no keep-alive): its id and the TTL the cluster gave it."""
        return self._face.run(lease_grant_op(ttl, lease_id, timeout))

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke a lease, deleting its keys; LeaseNotFound if it does not exist."""
        self._face.run(lease_revoke_op(lease_id, timeout))

    def lease_keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew a lease once; the TTL it now has (0: it expired or was revoked)."""
        return self._face.run(keepalive_once_op(lease_id, timeout))

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                           timeout: float | None = None) -> LeaseInfo:
        """Seconds left (-1: no such lease), the granted TTL, and with ``keys`` its keys."""
        return self._face.run(time_to_live_op(lease_id, keys, timeout))

    def leases(self, *, timeout: float | None = None) -> list[int]:
        """The ids of every live lease."""
        return self._face.run(leases_op(timeout))


class AsyncCoordination:
    """AsyncKVClient's watch, lease and lock methods (the same, awaited)."""

    _face: AsyncFace

    def watch(
        self, key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None,
        start_revision: int = 0, prev_kv: bool = False, filters: Iterable[str | int] = (),
    ) -> AsyncWatch:
        """As KVClient.watch; the watch is created on ``async with`` (or ``await
        w.start()``, or the first iteration)."""
        spec = create_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv,
                              filters=filters)
        return AsyncWatch(self._face, spec, start_revision)

    def lease(self, ttl: int, *, lease_id: int = 0, on_lost: LostCallback | None = None,
              keepalive: bool = True) -> AsyncLease:
        """``async with client.lease(ttl) as lease``: kept alive by a task."""
        return AsyncLease(self._face, ttl, lease_id=lease_id, on_lost=on_lost,
                          keepalive=keepalive)

    def lock(self, name: KeyLike, *, ttl: int = DEFAULT_LOCK_TTL,
             lease: AsyncLease | None = None,
             on_lost: LostCallback | None = None) -> AsyncLock:
        """``async with client.lock(name) as lock``; ``lock.token``: the fencing token."""
        return AsyncLock(AsyncDriver(self._face), name, ttl=ttl, lease=lease,
                         on_lost=on_lost)

    async def lease_grant(self, ttl: int, lease_id: int = 0, *,
                          timeout: float | None = None) -> LeaseGrant:
        return await self._face.run(lease_grant_op(ttl, lease_id, timeout))

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        await self._face.run(lease_revoke_op(lease_id, timeout))

    async def lease_keepalive_once(self, lease_id: int, *,
                                   timeout: float | None = None) -> int:
        return await self._face.run(keepalive_once_op(lease_id, timeout))

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                                 timeout: float | None = None) -> LeaseInfo:
        return await self._face.run(time_to_live_op(lease_id, keys, timeout))

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        return await self._face.run(leases_op(timeout))


__all__ = ["AsyncCoordination", "SyncCoordination"]
