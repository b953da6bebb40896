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
from typing import Any

import grpc

from kvstore.client._core import RpcFailure, failure_from_rpc_error
from kvstore.v1 import kv_pb2, kv_pb2_grpc

_OP_FIELD = {"Put": "put", "Get": "get", "Delete": "delete", "CompareAndSwap": "cas"}
_STATUS_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}

MAX_OPS_PER_BATCH = 1000


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
        self._max_inflight = max_inflight
        self._inflight = 0
        self._queue: list[_Pending] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, method: str, request: Any, timeout: float) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(to_op(method, request), fut, timeout))
        if self._inflight < self._max_inflight:
            self._launch()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise BatchFailure(RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                          "deadline exceeded")) from None

    def _launch(self) -> None:
        batch, self._queue = self._queue[:MAX_OPS_PER_BATCH], self._queue[MAX_OPS_PER_BATCH:]
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            request = kv_pb2.BatchRequest(ops=[p.op for p in batch])
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
            self._inflight -= 1
            if self._queue:
                self._launch()
