"""Coalescing of concurrent asyncio calls into Batch RPCs.

A Python gRPC call costs far more CPU than the work a node does for one small write, so a
client with many operations in flight would make the RPC layer the bottleneck. The batcher
sends a call at once when no batch to that endpoint is in flight, and sends every call that
arrives meanwhile together, in one Batch RPC, as soon as the batch in flight returns (the
adaptive scheme of Nagle's algorithm). A lone caller pays no added latency; a busy client
pays one RPC per batch. Each operation keeps its own outcome, deadline and retries (the
retry core sees exactly what a unary call would have produced).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

from kvstore.client._core import RpcFailure, failure_from_rpc_error
from kvstore.v1 import kv_pb2, kv_pb2_grpc

_OP_FIELD = {"Put": "put", "Get": "get", "Delete": "delete", "CompareAndSwap": "cas",
             "Range": "range", "Txn": "txn"}
_STATUS_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}

MAX_OPS_PER_BATCH = 1000
T = TypeVar("T")


class BatchFailure(Exception):
    """One operation of a batch failed as its unary call would have."""

    def __init__(self, failure: RpcFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


def batchable(method: str) -> bool:
    return method in _OP_FIELD


def to_op(method: str, request: Any) -> kv_pb2.Op:
    op = kv_pb2.Op()
    getattr(op, _OP_FIELD[method]).CopyFrom(request)
    return op


def from_result(result: kv_pb2.OpResult) -> Any:
    """The operation's response, or BatchFailure raised with its status."""
    if result.code == 0:
        kind = result.WhichOneof("result")
        if kind is None:
            raise BatchFailure(RpcFailure(grpc.StatusCode.INTERNAL, "empty result"))
        return getattr(result, kind)
    code = _STATUS_BY_VALUE.get(result.code, grpc.StatusCode.UNKNOWN)
    raise BatchFailure(RpcFailure(code, result.message, result.leader_id,
                                  result.leader_address))


class Coalescer(Generic[T]):
    """The batching policy with no I/O, shared by EndpointBatcher and the simulator's
    clients: a call goes out at once while fewer than `max_inflight` batches are in flight;
    calls that arrive meanwhile wait and leave together when one returns."""

    def __init__(self, max_inflight: int = 1, max_ops: int = MAX_OPS_PER_BATCH,
                 is_done: Callable[[T], bool] = lambda _item: False) -> None:
        self._max_inflight = max_inflight
        self._max_ops = max_ops
        self._is_done = is_done
        self.inflight = 0
        self._queue: list[T] = []

    def add(self, item: T) -> list[T] | None:
        """Queue a call; returns a batch to send now, if one may go."""
        self._queue.append(item)
        return self._take() if self.inflight < self._max_inflight else None

    def finished(self) -> list[T] | None:
        """A batch in flight returned (or failed); returns the next batch to send, if any."""
        self.inflight -= 1
        return self._take()

    def _take(self) -> list[T] | None:
        while self._queue:
            batch = self._queue[: self._max_ops]
            self._queue = self._queue[self._max_ops:]
            batch = [item for item in batch if not self._is_done(item)]  # gave up meanwhile
            if batch:
                self.inflight += 1
                return batch
        return None


def batch_request(ops: list[kv_pb2.Op]) -> kv_pb2.BatchRequest:
    return kv_pb2.BatchRequest(ops=ops)


class _Pending:
    __slots__ = ("op", "future", "timeout")

    def __init__(self, op: kv_pb2.Op, future: asyncio.Future[Any], timeout: float) -> None:
        self.op = op
        self.future = future
        self.timeout = timeout


class EndpointBatcher:
    """Batches the calls to one endpoint; at most `max_inflight` Batch RPCs at a time."""

    def __init__(self, stub: kv_pb2_grpc.KVStub, max_inflight: int = 1) -> None:
        self._stub = stub
        self._policy: Coalescer[_Pending] = Coalescer(
            max_inflight, is_done=lambda p: p.future.done())
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, method: str, request: Any, timeout: float) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._launch(self._policy.add(_Pending(to_op(method, request), fut, timeout)))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise BatchFailure(RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                          "deadline exceeded")) from None

    def _launch(self, batch: list[_Pending] | None) -> None:
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            request = batch_request([p.op for p in batch])
            timeout = max(p.timeout for p in batch)
            try:
                response = await self._stub.Batch(request, timeout=timeout)
            except grpc.RpcError as exc:
                failure = BatchFailure(failure_from_rpc_error(exc))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(failure)
                return
            for p, result in zip(batch, response.results, strict=False):
                if p.future.done():
                    continue
                try:
                    p.future.set_result(from_result(result))
                except BatchFailure as err:
                    p.future.set_exception(err)
        finally:
            self._launch(self._policy.finished())
