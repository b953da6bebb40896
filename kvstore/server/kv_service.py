"""The client-facing gRPC service: validate, hand to the driver, map outcomes to status codes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from kvstore.raft.errors import NotLeader
from kvstore.server.config import NodeConfig
from kvstore.server.node import LeadershipLost, NodeDriver, StaleRequest
from kvstore.state import commands
from kvstore.state.commands import ApplyResult
from kvstore.v1 import kv_pb2, kv_pb2_grpc

T = TypeVar("T")

# A request without a deadline still gets an answer within this bound.
DEFAULT_WAIT_SECONDS = 30.0
MAX_BATCH_OPS = 10_000


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(self, config: NodeConfig, driver: NodeDriver, store) -> None:
        self.cfg = config
        self.driver = driver
        self.store = store

    # -- helpers ------------------------------------------------------------------------

    def _header(self, applied: int | None = None) -> kv_pb2.ResponseHeader:
        d = self.driver
        return kv_pb2.ResponseHeader(
            node_id=self.cfg.node_id,
            applied_index=d.applied_index if applied is None else applied,
            leader_id=d.leader,
            term=d.raw.raft.term,
        )

    def _not_leader(self, leader: str) -> _Abort:
        address = self.cfg.address_of(leader) if leader else ""
        where = f"leader is {leader} at {address}" if leader else "leader unknown"
        return _Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"node {self.cfg.node_id} is not the leader; {where}",
            (("kvstore-leader-id", leader), ("kvstore-leader-address", address)),
        )

    def _check_key(self, key: bytes) -> None:
        if not 1 <= len(key) <= self.cfg.max_key_bytes:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"key must be 1..{self.cfg.max_key_bytes} bytes, got {len(key)}")

    def _check_value(self, value: bytes) -> None:
        if len(value) > self.cfg.max_value_bytes:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"value must be at most {self.cfg.max_value_bytes} bytes, "
                         f"got {len(value)}")

    @staticmethod
    def _write_id(req) -> tuple[bytes, int, int]:
        w = req.write_id
        if not w.client_id:
            # A caller without a session gets a one-off id: no retry dedup for it.
            return os.urandom(16), 1, 1
        if w.seq == 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "write_id.seq must be >= 1")
        return w.client_id, w.seq, w.lowest_pending_seq

    async def _wait(self, fut: Awaitable[T], context: grpc.aio.ServicerContext) -> T:
        remaining = context.time_remaining()
        timeout = DEFAULT_WAIT_SECONDS if remaining is None else max(remaining, 0.0)
        try:
            return await asyncio.wait_for(fut, timeout)
        except NotLeader as err:
            raise self._not_leader(err.leader) from None
        except LeadershipLost as err:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, str(err)) from None
        except StaleRequest as err:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, str(err)) from None
        except TimeoutError:
            raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                         "no quorum answered before the deadline; a write may still apply"
                         ) from None

    async def _run(self, context: grpc.aio.ServicerContext, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except _Abort as a:
            if a.metadata:
                context.set_trailing_metadata(a.metadata)
            await context.abort(a.code, a.message)
            raise  # unreachable: abort raises

    async def _propose(self, data: bytes, context) -> ApplyResult:
        return await self._wait(self.driver.propose(data), context)

    # -- operation bodies: raise _Abort on failure -------------------------------------

    async def _put(self, request, context) -> kv_pb2.PutResponse:
        self._check_key(request.key)
        self._check_value(request.value)
        cid, seq, low = self._write_id(request)
        await self._propose(commands.encode_put(cid, seq, low, request.key, request.value),
                            context)
        return kv_pb2.PutResponse(header=self._header())

    async def _delete(self, request, context) -> kv_pb2.DeleteResponse:
        self._check_key(request.key)
        cid, seq, low = self._write_id(request)
        res = await self._propose(commands.encode_delete(cid, seq, low, request.key), context)
        return kv_pb2.DeleteResponse(header=self._header(), existed=res.ok)

    async def _cas(self, request, context) -> kv_pb2.CompareAndSwapResponse:
        self._check_key(request.key)
        self._check_value(request.value)
        self._check_value(request.expected)
        cid, seq, low = self._write_id(request)
        expected = None if request.expect_absent else request.expected
        data = commands.encode_cas(cid, seq, low, request.key, expected, request.value)
        res = await self._propose(data, context)
        return kv_pb2.CompareAndSwapResponse(header=self._header(), succeeded=res.ok)

    async def _get(self, request, context) -> kv_pb2.GetResponse:
        self._check_key(request.key)
        if not request.stale:
            await self._wait(self.driver.read_index(), context)
        found, value, applied = self.store.get(request.key)
        return kv_pb2.GetResponse(header=self._header(applied), found=found, value=value)

    # -- RPCs ---------------------------------------------------------------------------

    async def Put(self, request, context):  # noqa: N802
        return await self._run(context, self._put(request, context))

    async def Delete(self, request, context):  # noqa: N802
        return await self._run(context, self._delete(request, context))

    async def CompareAndSwap(self, request, context):  # noqa: N802
        return await self._run(context, self._cas(request, context))

    async def Get(self, request, context):  # noqa: N802
        return await self._run(context, self._get(request, context))

    async def Batch(self, request, context):  # noqa: N802
        if len(request.ops) > MAX_BATCH_OPS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at most {MAX_BATCH_OPS} operations per batch")
        results = await asyncio.gather(*(self._one(op, context) for op in request.ops))
        return kv_pb2.BatchResponse(results=results)

    async def _one(self, op: kv_pb2.Op, context) -> kv_pb2.OpResult:
        kind = op.WhichOneof("op")
        body = {"put": self._put, "get": self._get, "delete": self._delete,
                "cas": self._cas}.get(kind or "")
        if body is None:
            return kv_pb2.OpResult(code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                   message="empty operation")
        try:
            response = await body(getattr(op, kind), context)
        except _Abort as a:
            meta = dict(a.metadata)
            return kv_pb2.OpResult(code=a.code.value[0], message=a.message,
                                   leader_id=meta.get("kvstore-leader-id", ""),
                                   leader_address=meta.get("kvstore-leader-address", ""))
        result = kv_pb2.OpResult()
        getattr(result, kind).CopyFrom(response)
        return result

    async def Status(self, request, context):  # noqa: N802
        s = self.driver.status()
        peers = [
            kv_pb2.PeerProgress(id=p, address=self.cfg.address_of(p), match_index=m, next_index=n)
            for p, (m, n) in sorted(s["peers"].items())
        ]
        leader = s["leader_id"]
        return kv_pb2.StatusResponse(
            id=self.cfg.node_id,
            address=self.cfg.listen,
            role=s["role"],
            term=s["term"],
            commit_index=s["commit_index"],
            applied_index=s["applied_index"],
            leader_id=leader,
            leader_address=self.cfg.address_of(leader) if leader else "",
            first_log_index=s["first_log_index"],
            last_log_index=s["last_log_index"],
            shards=self.cfg.shards,
            peers=peers,
            snapshot_index=s["snapshot_index"],
            log_bytes=self.store.log_bytes(),
        )
