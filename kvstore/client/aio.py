"""asyncio client: a thin grpc.aio shell over :mod:`kvstore.client._core`.

Mirrors :mod:`kvstore.client.sync` line for line in the I/O loop; every decision
is the core's. Channels are created lazily inside a coroutine because grpc.aio
binds a channel to the running event loop.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc
import grpc.aio

from kvstore.client._core import (
    CHANNEL_OPTIONS,
    CONTINUE,
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_TIMEOUT,
    Backoff,
    ClientCore,
    GetResult,
    KeyLike,
    NodeStatus,
    Operation,
    failure_from_rpc_error,
)
from kvstore.client._mvcc_ops import compact_op, range_op, txn_op
from kvstore.client.batching import BatchFailure, EndpointBatcher, batchable
from kvstore.client.coordination import AsyncCoordination
from kvstore.client.errors import InvalidArgument
from kvstore.client.etcd_face import AsyncFace, refine
from kvstore.client.membership import AsyncMembership, refresh_async
from kvstore.client.ranges import RangeOptions, RangeResult, range_request
from kvstore.client.tls import TLSConfig, security_of
from kvstore.client.txn import Compare, Op, TxnResult
from kvstore.etcdpb import rpc_pb2
from kvstore.v1 import kv_pb2_grpc

R = TypeVar("R")


class AsyncKVClient(AsyncCoordination, AsyncMembership):
    """asyncio kvstore client with the same methods and semantics as :class:`KVClient`.

    Use from one event loop. ``await client.close()`` (or ``async with``) when done.
    Cancelling a call ends it; a cancelled write's outcome is unknown.

    With ``coalesce=True`` (the default) calls to the same node that overlap in time
    travel together in one Batch RPC (see :mod:`kvstore.client.batching`); each keeps
    its own result, deadline and retries.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        rng: random.Random | None = None,
        tls: TLSConfig | None = None,
        coalesce: bool = True,
    ) -> None:
        self._core = ClientCore(
            endpoints,
            timeout=timeout,
            attempt_timeout=attempt_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            rng=rng,
            security=security_of(tls),
        )
        # Read the certificate files now: a bad path is an error here, not on every call.
        self._credentials = None if tls is None else tls.credentials()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, kv_pb2_grpc.KVStub] = {}
        self._batchers: dict[str, EndpointBatcher] | None = {} if coalesce else None
        self._closed = False
        self._face = AsyncFace(self._core, self._channel)

    # -- public API

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._core.endpoints

    @property
    def client_id(self) -> bytes | None:
        """The session the cluster assigned to this client (None before its first write,
        and after the cluster evicted it until the next write registers a new one)."""
        return self._core.write_ids.client_id

    async def put(self, key: KeyLike, value: KeyLike, *, lease: int = 0,
            timeout: float | None = None) -> None:
        """Store ``value`` under ``key``; returns once committed by a majority and applied.
        ``lease``: attach the key to that lease (deleted when it ends); sent as a one-put
        Txn, since the native Put has no lease field."""
        if lease:
            try:
                await self.txn(success=[Op.put(key, value, lease=lease)], timeout=timeout)
            except InvalidArgument as exc:
                raise refine(exc) from None  # LeaseNotFound for a lease that is gone
            return
        await self._run(self._core.put(key, value, timeout))

    async def get(
        self, key: KeyLike, *, stale: bool = False, revision: int = 0,
        timeout: float | None = None,
    ) -> bytes | None:
        """The value of ``key`` (None if absent): a linearizable read, or with
        ``stale=True`` the first endpoint's local state; ``revision``: as it was then."""
        return (await self.get_result(key, stale=stale, revision=revision,
                                       timeout=timeout)).value

    async def get_result(
        self, key: KeyLike, *, stale: bool = False, revision: int = 0,
        timeout: float | None = None,
    ) -> GetResult:
        """Like :meth:`get`, plus the key's revisions and version, the store revision, and
        which node answered at what applied index."""
        return await self._run(self._core.get(key, stale=stale, revision=revision,
                                            timeout=timeout))

    async def range(
        self, key: KeyLike, range_end: KeyLike | None = None, *, stale: bool = False,
        timeout: float | None = None, **options: Unpack[RangeOptions],
    ) -> RangeResult:
        """The keys in [key, range_end) (etcd's Range): ``prefix=True`` for every key
        starting with ``key``, ``from_key=True`` for every key >= ``key``; ``limit``,
        ``revision``, ``sort_order`` ("ascend"/"descend"), ``sort_target`` ("key",
        "version", "create", "modify", "value"), ``keys_only``, ``count_only``.
        Linearizable unless ``stale``."""
        request: rpc_pb2.RangeRequest = range_request(key, range_end, **options)
        return await self._run(range_op(self._core, request, stale=stale, timeout=timeout))

    async def txn(
        self,
        compare: Iterable[Compare | rpc_pb2.Compare] = (),
        success: Iterable[Op | rpc_pb2.RequestOp] = (),
        failure: Iterable[Op | rpc_pb2.RequestOp] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure`` (see
        :mod:`kvstore.client.txn`). Applied at most once, like put; see
        ``TxnResult.duplicate`` for what a retried, already applied txn answers."""
        return await self._run(txn_op(compare, success, failure, timeout))

    async def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> int:
        """Forget the history below ``revision`` (reads at older revisions then raise
        Compacted); returns the store revision. ``physical``: return once the space is
        reclaimed."""
        return await self._run(compact_op(revision, physical=physical, timeout=timeout))

    async def delete(self, key: KeyLike, *, timeout: float | None = None) -> bool:
        """Delete ``key``; True if it existed."""
        return await self._run(self._core.delete(key, timeout))

    async def cas(
        self,
        key: KeyLike,
        expected: KeyLike | None,
        new: KeyLike,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Set ``key`` to ``new`` iff it holds ``expected`` (None: iff it is absent)."""
        return await self._run(self._core.cas(key, expected, new, timeout))

    async def alarms(self, *, timeout: float | None = None) -> list[tuple[str, str]]:
        """The raised cluster alarms as (type, member) pairs, e.g. ("NOSPACE", "n1");
        a linearizable read through the leader."""
        return await self._run(self._core.alarms(timeout))

    async def disarm(
        self, type: str = "", member: str = "", *, timeout: float | None = None  # noqa: A002
    ) -> list[tuple[str, str]]:
        """Clear the alarms of ``type`` ("NOSPACE", "CORRUPT"; "" = every type) raised for
        ``member`` ("" = every member), through the log; returns the alarms left. A
        NOSPACE alarm comes back if the database is still past its quota."""
        return await self._run(self._core.disarm(type, member, timeout))

    async def status(self, *, timeout: float | None = None) -> list[NodeStatus]:
        """Ask every configured endpoint for its status, in parallel, without retries."""
        deadline = self._core.status_timeout(timeout)
        request = self._core.status_request()

        async def one(endpoint: str) -> NodeStatus:
            try:
                response = await self._stub(endpoint).Status(request, timeout=deadline)
            except grpc.RpcError as exc:
                return self._core.unreachable(
                    endpoint, failure_from_rpc_error(exc), self._core.security)
            return self._core.node_status(endpoint, response)

        return list(await asyncio.gather(*(one(ep) for ep in self._core.endpoints)))

    async def close(self) -> None:
        """Close every channel. The client cannot be used afterwards."""
        self._closed = True
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        if self._batchers is not None:
            self._batchers = {}
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> AsyncKVClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the I/O loop

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        """The channel to ``endpoint`` (made on first use, in the running loop); shared by
        the native stub and the etcd face (watch, leases, recipes)."""
        if self._closed:
            raise RuntimeError("AsyncKVClient is closed")
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(endpoint, self._credentials,
                                                  options=CHANNEL_OPTIONS)
            self._channels[endpoint] = channel
        return channel

    def _stub(self, endpoint: str) -> kv_pb2_grpc.KVStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            stub = self._stubs[endpoint] = kv_pb2_grpc.KVStub(self._channel(endpoint))
        return stub

    async def _send(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        stub = self._stub(endpoint)
        if self._batchers is not None and batchable(method):
            batcher = self._batchers.get(endpoint)
            if batcher is None:
                batcher = self._batchers[endpoint] = EndpointBatcher(stub)
            return await batcher.call(method, request, timeout)
        rpc: Any = getattr(stub, method)
        return await rpc(request, timeout=timeout)

    async def _run(self, op: Operation[R]) -> R:
        call = self._core.start(op, time.monotonic())
        try:
            while True:
                if op.pinned is None:  # follow membership changes (membership.py)
                    await refresh_async(self._core, self._face, self._channel)
                step = call.next_step(time.monotonic())
                if isinstance(step, Backoff):
                    await asyncio.sleep(step.seconds)
                    continue
                try:
                    response = await self._send(step.endpoint, call.method, call.request,
                                                step.timeout)
                except grpc.RpcError as exc:
                    failure = failure_from_rpc_error(exc)
                except BatchFailure as exc:
                    failure = exc.failure
                else:
                    result = call.on_success(step.endpoint, response)
                    if result is CONTINUE:  # a session was registered; now the write
                        continue
                    return result
                # Raised outside the except block so the grpc error is not chained.
                error = call.on_failure(step.endpoint, failure, time.monotonic())
                if error is not None:
                    raise error
        finally:
            call.close()
