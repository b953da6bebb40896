"""Leases that keep themselves alive, and say so when they could not.

    with client.lease(10) as lease:          # granted; renewed every TTL/3 in the background
        client.put("service/worker-1", "up", lease=lease.id)
        ...                                  # the key lives while this block runs
    # revoked: the key is gone at once (not after 10 s)

A lease is etcd's (kvstore serves etcd's Lease service; see
:mod:`kvstore.client.etcd_face`): keys put under it are deleted, in one revision, when it
expires or is revoked. The holder renews it with a keep-alive every TTL/3 (etcd's clients
do the same), so two keep-alives can fail in a row without the lease expiring.

Why "lost" is reported rather than hidden: a lock or an election key lives exactly as long
as its lease. When a keep-alive answers TTL 0 (the cluster expired or revoked the lease), or
no keep-alive has been answered for a whole TTL (the holder cannot know whether the cluster
still counts it alive, so it must assume not), the keys are gone or about to be, and the
holder must stop acting as the owner. The lease then sets ``lost`` (``lost_reason`` says
why), fires the ``on_lost`` callback once, and stops renewing. The expiry is counted from
when the last answered keep-alive was *sent*, so the holder gives up no later than the
cluster can.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from kvstore.client.errors import KVError, LeaseNotFound
from kvstore.client.etcd_face import (
    AsyncFace,
    LeaseGrant,
    LeaseInfo,
    SyncFace,
    keepalive_once_op,
    lease_grant_op,
    lease_revoke_op,
    time_to_live_op,
)

LostCallback = Callable[[Any], None]
RETRY_SECONDS = 0.5  # after a failed keep-alive, try again this soon (or sooner)


class KeepAliveSchedule:
    """Sans-I/O timing of a lease's keep-alives: when to send the next one, and until when
    the lease is known to live. Both shells (thread and task) follow it."""

    def __init__(self, ttl: int, granted_at: float) -> None:
        self.ttl = ttl
        self.expires_at = granted_at + ttl
        self.next_at = granted_at + ttl / 3

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def answered(self, ttl: int, sent_at: float) -> None:
        self.ttl = ttl
        self.expires_at = sent_at + ttl
        self.next_at = sent_at + ttl / 3

    def failed(self, now: float) -> None:
        self.next_at = now + min(RETRY_SECONDS, max(0.0, self.remaining(now)) / 3)


class _LeaseBase:
    def __init__(self, ttl: int, lease_id: int, on_lost: LostCallback | None,
                 keepalive: bool) -> None:
        if ttl <= 0:
            raise ValueError("a lease TTL must be a positive number of seconds")
        self.requested_ttl = ttl
        self.granted_ttl = 0
        self._wanted_id = lease_id
        self._id = 0
        self.on_lost = on_lost
        self.keepalive = keepalive
        self.lost_reason = ""
        self.renewals = 0  # keep-alives answered with a live TTL (diagnostics, tests)
        self._revoked = False
        self._schedule: KeepAliveSchedule | None = None

    @property
    def id(self) -> int:
        """The lease id (0 until granted); ``f"{id:016x}"`` is how etcdctl prints it."""
        return self._id

    @property
    def lost(self) -> bool:
        """True once the lease expired, was revoked by someone else, or could not be
        renewed for a whole TTL (see the module docstring)."""
        return bool(self.lost_reason)

    def _granted(self, grant: LeaseGrant, now: float) -> None:
        self._id, self.granted_ttl = grant.id, grant.ttl
        self._schedule = KeepAliveSchedule(grant.ttl, now)

    def _mark_lost(self, reason: str) -> bool:
        """Record the loss once; True if this call recorded it (and should notify)."""
        if self.lost_reason or self._revoked:
            return False
        self.lost_reason = reason
        return True

    def _notify(self) -> None:
        if self.on_lost is not None:
            self.on_lost(self)

    def __repr__(self) -> str:
        state = "lost" if self.lost else ("revoked" if self._revoked else "live")
        return f"<{type(self).__name__} {self._id:016x} ttl={self.granted_ttl} {state}>"


def _expired_reason(lease_id: int) -> str:
    return f"lease {lease_id:016x} expired or was revoked (keep-alive answered TTL 0)"


def _silent_reason(lease_id: int) -> str:
    return (f"lease {lease_id:016x}: no keep-alive answered within its TTL; the cluster "
            "may have expired it")


class Lease(_LeaseBase):
    """A lease kept alive by a background thread; a context manager (grant on enter,
    revoke on exit). ``ttl()`` asks the cluster for the time left; ``wait_lost()`` blocks
    until the lease is lost."""

    def __init__(self, face: SyncFace, ttl: int, *, lease_id: int = 0,
                 on_lost: LostCallback | None = None, keepalive: bool = True) -> None:
        super().__init__(ttl, lease_id, on_lost, keepalive)
        self._face = face
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def grant(self) -> Lease:
        """Grant the lease and start keeping it alive (idempotent)."""
        if self._id:
            return self
        sent = time.monotonic()
        self._granted(self._face.run(lease_grant_op(self.requested_ttl, self._wanted_id)),
                      sent)
        if self.keepalive:
            self._thread = threading.Thread(target=self._keep_alive, daemon=True,
                                            name=f"kvstore-lease-{self._id:x}")
            self._thread.start()
        return self

    def ttl(self) -> int:
        """Seconds the cluster still gives the lease (-1: it no longer exists)."""
        return self.info().ttl

    def info(self, keys: bool = False) -> LeaseInfo:
        """LeaseTimeToLive: time left, granted TTL, and with ``keys`` the attached keys."""
        return self._face.run(time_to_live_op(self._id, keys))

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the lease is lost (True) or ``timeout`` passes (False)."""
        return self._lost.wait(timeout)

    def stop_keepalive(self) -> None:
        """Stop renewing without revoking (the lease then expires after its TTL)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def revoke(self) -> None:
        """Stop renewing and revoke: the lease's keys are deleted now. A lease that is
        already gone is not an error."""
        self.stop_keepalive()
        if self._id and not self._revoked:
            self._revoked = True
            try:
                self._face.run(lease_revoke_op(self._id))
            except LeaseNotFound:
                pass

    def __enter__(self) -> Lease:
        return self.grant()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.revoke()

    def _lose(self, reason: str) -> None:
        if self._mark_lost(reason):
            self._lost.set()
            self._notify()

    def _keep_alive(self) -> None:
        schedule = self._schedule
        assert schedule is not None
        while not self._stop.wait(max(0.0, schedule.next_at - time.monotonic())):
            sent = time.monotonic()
            left = schedule.remaining(sent)
            if left <= 0:
                self._lose(_silent_reason(self._id))
                return
            try:
                ttl = self._face.run(keepalive_once_op(
                    self._id, timeout=min(left, self._face.core.policy.timeout)))
            except KVError:
                schedule.failed(time.monotonic())
                continue
            except RuntimeError:  # the client was closed under the lease: stop renewing
                return
            if self._stop.is_set():
                return
            if ttl <= 0:
                self._lose(_expired_reason(self._id))
                return
            schedule.answered(ttl, sent)
            self.renewals += 1


class AsyncLease(_LeaseBase):
    """The asyncio lease: ``async with client.lease(10) as lease``; kept alive by a task."""

    def __init__(self, face: AsyncFace, ttl: int, *, lease_id: int = 0,
                 on_lost: LostCallback | None = None, keepalive: bool = True) -> None:
        super().__init__(ttl, lease_id, on_lost, keepalive)
        self._face = face
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def grant(self) -> AsyncLease:
        if self._id:
            return self
        sent = time.monotonic()
        self._granted(await self._face.run(lease_grant_op(self.requested_ttl,
                                                          self._wanted_id)), sent)
        if self.keepalive:
            self._task = asyncio.get_running_loop().create_task(self._keep_alive())
        return self

    async def ttl(self) -> int:
        return (await self.info()).ttl

    async def info(self, keys: bool = False) -> LeaseInfo:
        return await self._face.run(time_to_live_op(self._id, keys))

    async def wait_lost(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._lost.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop_keepalive(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def revoke(self) -> None:
        await self.stop_keepalive()
        if self._id and not self._revoked:
            self._revoked = True
            try:
                await self._face.run(lease_revoke_op(self._id))
            except LeaseNotFound:
                pass

    async def __aenter__(self) -> AsyncLease:
        return await self.grant()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.revoke()

    def _lose(self, reason: str) -> None:
        if self._mark_lost(reason):
            self._lost.set()
            self._notify()

    async def _keep_alive(self) -> None:
        schedule = self._schedule
        assert schedule is not None
        while True:
            await asyncio.sleep(max(0.0, schedule.next_at - time.monotonic()))
            sent = time.monotonic()
            left = schedule.remaining(sent)
            if left <= 0:
                self._lose(_silent_reason(self._id))
                return
            try:
                ttl = await self._face.run(keepalive_once_op(
                    self._id, timeout=min(left, self._face.core.policy.timeout)))
            except KVError:
                schedule.failed(time.monotonic())
                continue
            except RuntimeError:  # the client was closed under the lease: stop renewing
                return
            if ttl <= 0:
                self._lose(_expired_reason(self._id))
                return
            schedule.answered(ttl, sent)
            self.renewals += 1


__all__ = ["AsyncLease", "KeepAliveSchedule", "Lease", "LeaseGrant", "LeaseInfo"]
