"""etcd's concurrency recipes (Mutex, Election) written once, run by a sync or an async
driver.

Each algorithm is a generator that yields *steps* (a Range, a Txn, open a watch, wait for
its next event, emit a value to the caller) and receives their results; it never does I/O
itself. :class:`SyncDriver` and :class:`AsyncDriver` perform the steps over the etcd face.
So the lock and election logic exists once, like the client core's retry logic, and the
sync and async classes cannot drift apart.

The algorithms and key layout are those of etcd's ``clientv3/concurrency`` package (3.4,
plus 3.5's check that the lock key still exists after the wait), so kvstore's locks and
elections interoperate with ``etcdctl lock`` and ``etcdctl elect`` and with etcd's Go
clients: a contender's key is ``NAME/<lease id in hex>``, put under its lease with a Txn on
``create_revision == 0``; the owner is the key with the lowest create revision under
``NAME/``; a contender waits for the deletion of the key with the highest create revision
below its own (one watch at a time, no thundering herd). The owner's create revision is a
fencing token: it strictly increases from one owner to the next.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

from kvstore.client.errors import KVError, LeaseExpired, NotElected, Timeout
from kvstore.client.etcd_face import AsyncFace, SyncFace, range_op, txn_op
from kvstore.client.ranges import KeyValue, prefix_end
from kvstore.client.watch import AsyncWatch, Watch, WatchEvent, create_request
from kvstore.etcdpb import rpc_pb2 as pb

# -------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class RangeStep:
    request: pb.RangeRequest


@dataclass(frozen=True, slots=True)
class TxnStep:
    request: pb.TxnRequest


@dataclass(frozen=True, slots=True)
class OpenWatch:
    key: bytes
    start_revision: int
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class NextEvent:
    """The next event of a watch; None once ``deadline`` (monotonic seconds) passes."""

    watch: Any
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class CloseWatch:
    watch: Any


@dataclass(frozen=True, slots=True)
class Emit:
    value: Any


Step = RangeStep | TxnStep | OpenWatch | NextEvent | CloseWatch | Emit
Steps = Generator[Step, Any, Any]


class LockTimeout(Timeout):
    """acquire(timeout=...) or campaign(timeout=...) gave up waiting; the contender's key
    was deleted again, so nothing is held."""


# -------------------------------------------------------------------------- requests


def contender_key(prefix: bytes, lease_id: int) -> bytes:
    """etcd's key of a contender: ``NAME/`` + the lease id in lowercase hex."""
    return prefix + f"{lease_id:x}".encode()


def _first_create(prefix: bytes) -> pb.RangeRequest:
    """The owner: the key under ``prefix`` with the lowest create revision."""
    return pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                           sort_order=pb.RangeRequest.ASCEND,
                           sort_target=pb.RangeRequest.CREATE)


def _last_create_below(prefix: bytes, max_create_revision: int) -> pb.RangeRequest:
    """The contender just ahead: the highest create revision <= ``max_create_revision``."""
    return pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                           sort_order=pb.RangeRequest.DESCEND,
                           sort_target=pb.RangeRequest.CREATE,
                           max_create_revision=max_create_revision)


def _created_at(key: bytes, revision: int) -> pb.Compare:
    return pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.CREATE, key=key,
                      create_revision=revision)


def _put(key: bytes, value: bytes, lease_id: int) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease_id))


def _get(request: pb.RangeRequest) -> pb.RequestOp:
    return pb.RequestOp(request_range=request)


def _delete(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


# -------------------------------------------------------------------------- algorithms


def wait_deletes(prefix: bytes, max_create_revision: int, deadline: float | None) -> Steps:
    """Until no key under ``prefix`` has a create revision <= ``max_create_revision``:
    wait for the deletion of the newest such key, then look again (etcd's waitDeletes)."""
    while True:
        response = yield RangeStep(_last_create_below(prefix, max_create_revision))
        if not response.kvs:
            return response.header.revision
        watch = yield OpenWatch(bytes(response.kvs[0].key), response.header.revision)
        while True:
            event = yield NextEvent(watch, deadline)
            if event is None:
                raise LockTimeout(f"gave up waiting for {prefix.decode(errors='replace')}")
            if event.type == "DELETE":
                break
        yield CloseWatch(watch)


def _still_mine(key: bytes) -> Steps:
    response = yield RangeStep(pb.RangeRequest(key=key))
    if not response.kvs:
        raise LeaseExpired(f"{key.decode(errors='replace')} was deleted while waiting: "
                           "its lease expired or was revoked")


def lock(prefix: bytes, lease_id: int, deadline: float | None = None) -> Steps:
    """etcd's Mutex.Lock; returns (key, create revision = fencing token)."""
    key = contender_key(prefix, lease_id)
    response = yield TxnStep(pb.TxnRequest(
        compare=[_created_at(key, 0)],
        success=[_put(key, b"", lease_id), _get(_first_create(prefix))],
        failure=[_get(pb.RangeRequest(key=key)), _get(_first_create(prefix))]))
    revision = response.header.revision
    if not response.succeeded:  # this lease already has a key here: reuse it
        revision = response.responses[0].response_range.kvs[0].create_revision
    owner = response.responses[1].response_range.kvs
    if not owner or owner[0].create_revision == revision:
        return key, revision
    try:
        yield from wait_deletes(prefix, revision - 1, deadline)
        yield from _still_mine(key)
    except KVError:
        yield TxnStep(pb.TxnRequest(success=[_delete(key)]))  # leave the queue
        raise
    return key, revision


def unlock(key: bytes) -> Steps:
    yield TxnStep(pb.TxnRequest(success=[_delete(key)]))


def campaign(prefix: bytes, lease_id: int, value: bytes, deadline: float | None = None
             ) -> Steps:
    """etcd's Election.Campaign; returns (key, create revision) once elected."""
    key = contender_key(prefix, lease_id)
    response = yield TxnStep(pb.TxnRequest(
        compare=[_created_at(key, 0)], success=[_put(key, value, lease_id)],
        failure=[_get(pb.RangeRequest(key=key))]))
    revision = response.header.revision
    if not response.succeeded:
        kv = response.responses[0].response_range.kvs[0]
        revision = kv.create_revision
        if bytes(kv.value) != value:
            yield from proclaim(key, revision, lease_id, value)
    try:
        yield from wait_deletes(prefix, revision - 1, deadline)
        yield from _still_mine(key)
    except KVError:
        yield from resign(key, revision)
        raise
    return key, revision


def proclaim(key: bytes, revision: int, lease_id: int, value: bytes) -> Steps:
    """Set the leader's value, only while ``key`` is still the one we created."""
    response = yield TxnStep(pb.TxnRequest(compare=[_created_at(key, revision)],
                                           success=[_put(key, value, lease_id)]))
    if not response.succeeded:
        raise NotElected(f"proclaim: {key.decode(errors='replace')} is no longer ours "
                         "(resigned, or its lease expired)")


def resign(key: bytes, revision: int) -> Steps:
    yield TxnStep(pb.TxnRequest(compare=[_created_at(key, revision)],
                                success=[_delete(key)]))


def leader(prefix: bytes) -> Steps:
    response = yield RangeStep(_first_create(prefix))
    return KeyValue.from_proto(response.kvs[0]) if response.kvs else None


def _kv(event: WatchEvent) -> KeyValue:
    return KeyValue(event.key, event.value, event.create_revision, event.mod_revision,
                    event.version, event.lease)


def observe(prefix: bytes) -> Steps:
    """etcd's Election.Observe: emit the leader's key-value, then each new value it
    proclaims, then the next leader's, ... (forever; the caller closes it)."""
    while True:
        response = yield RangeStep(_first_create(prefix))
        if response.kvs:
            current, revision = KeyValue.from_proto(response.kvs[0]), response.header.revision
        else:  # no leader yet: the first key put under the prefix is the leader
            watch = yield OpenWatch(prefix, response.header.revision, True)
            event = yield NextEvent(watch)
            while event.type != "PUT":
                event = yield NextEvent(watch)
            yield CloseWatch(watch)
            current, revision = _kv(event), event.mod_revision
        yield Emit(current)
        watch = yield OpenWatch(current.key, revision + 1)
        while (event := (yield NextEvent(watch))).type != "DELETE":
            yield Emit(_kv(event))
        yield CloseWatch(watch)


# -------------------------------------------------------------------------- drivers


class SyncDriver:
    """Performs an algorithm's steps with a KVClient's etcd face."""

    def __init__(self, face: SyncFace) -> None:
        self.face = face

    def run(self, steps: Steps) -> Any:
        """Run to the end; the algorithm's return value (emits are ignored)."""
        it = self.iterate(steps)
        while True:
            try:
                next(it)
            except StopIteration as stop:
                return stop.value

    def iterate(self, steps: Steps) -> Generator[Any, None, Any]:
        """The values the algorithm emits; its return value as StopIteration's. Errors of a
        step are thrown into the algorithm (so it can clean up); watches it left open are
        closed at the end."""
        watches: list[Watch] = []
        value: Any = None
        error: KVError | None = None
        try:
            while True:
                try:
                    step = steps.throw(error) if error is not None else steps.send(value)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                if isinstance(step, Emit):
                    yield step.value
                    continue
                try:
                    value = self._perform(step, watches)
                except KVError as exc:
                    error = exc
        finally:
            for watch in watches:
                watch.close()
            steps.close()

    def _perform(self, step: Step, watches: list[Watch]) -> Any:
        if isinstance(step, RangeStep):
            return self.face.run(range_op(step.request))
        if isinstance(step, TxnStep):
            return self.face.run(txn_op(step.request))
        if isinstance(step, OpenWatch):
            watch = Watch(self.face, create_request(step.key, prefix=step.prefix),
                          step.start_revision)
            watches.append(watch)
            return watch
        if isinstance(step, NextEvent):
            timeout = None if step.deadline is None else max(0.0,
                                                             step.deadline - time.monotonic())
            try:
                return step.watch.get(timeout)
            except StopIteration:
                raise KVError("watch closed") from None
        if isinstance(step, CloseWatch):
            step.watch.close()
            watches.remove(step.watch)
            return None
        raise TypeError(f"unknown step {step!r}")


class AsyncDriver:
    """Performs an algorithm's steps with an AsyncKVClient's etcd face."""

    def __init__(self, face: AsyncFace) -> None:
        self.face = face

    async def run(self, steps: Steps) -> Any:
        result: list[Any] = []
        async for _ in self.iterate(steps, result):
            pass
        return result[0] if result else None

    async def iterate(self, steps: Steps, result: list[Any] | None = None
                      ) -> AsyncIterator[Any]:
        """As SyncDriver.iterate; the return value is appended to ``result``."""
        watches: list[AsyncWatch] = []
        value: Any = None
        error: KVError | None = None
        try:
            while True:
                try:
                    step = steps.throw(error) if error is not None else steps.send(value)
                except StopIteration as stop:
                    if result is not None:
                        result.append(stop.value)
                    return
                value, error = None, None
                if isinstance(step, Emit):
                    yield step.value
                    continue
                try:
                    value = await self._perform(step, watches)
                except KVError as exc:
                    error = exc
        finally:
            for watch in watches:
                await watch.close()
            steps.close()

    async def _perform(self, step: Step, watches: list[AsyncWatch]) -> Any:
        if isinstance(step, RangeStep):
            return await self.face.run(range_op(step.request))
        if isinstance(step, TxnStep):
            return await self.face.run(txn_op(step.request))
        if isinstance(step, OpenWatch):
            watch = AsyncWatch(self.face, create_request(step.key, prefix=step.prefix),
                               step.start_revision)
            watches.append(watch)
            await watch.start()
            return watch
        if isinstance(step, NextEvent):
            timeout = None if step.deadline is None else max(0.0,
                                                             step.deadline - time.monotonic())
            try:
                return await step.watch.get(timeout)
            except StopIteration:
                raise KVError("watch closed") from None
        if isinstance(step, CloseWatch):
            await step.watch.close()
            watches.remove(step.watch)
            return None
        raise TypeError(f"unknown step {step!r}")


__all__ = ["AsyncDriver", "LockTimeout", "SyncDriver", "campaign", "contender_key", "leader",
           "lock", "observe", "proclaim", "resign", "unlock", "wait_deletes"]
