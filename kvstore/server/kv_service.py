"""The client-facing gRPC service: the asyncio shell around the KV rules (kv_rules).

Validation, command encoding, answers and the status-code mapping live in KVRules, which
the simulator's service uses too; this shell only waits: for a write's future, or for a
ReadIndex point before reading the store. Every read (Get, Range) is a store.range, the
read path of etcd's KV service too, so both faces answer from the same snapshot logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from kvstore.server import trace
from kvstore.server.config import NodeConfig
from kvstore.server.kv_rules import KVRules, Operation, RequestError
from kvstore.server.node import NodeDriver
from kvstore.state.mvcc import MvccError
from kvstore.v1 import kv_pb2, kv_pb2_grpc

T = TypeVar("T")

# A request without a deadline still gets an answer within this bound.
DEFAULT_WAIT_SECONDS = 30.0


class KVService(kv_pb2_grpc.KVServicer):
    """Served on the client port only.

    ``client_address_of(node_id)`` is where clients reach a node (what leader hints name):
    this node's advertised client address, or what a peer said about itself on its
    stream ("" until it has). Peers' --peers addresses are their peer ports, useless to
    a client.
    """

    def __init__(self, config: NodeConfig, driver: NodeDriver, store,
                 client_address_of: Callable[[str], str] | None = None,
                 cluster_id: str = "") -> None:
        self.cfg = config
        self.cluster_id = cluster_id or config.cluster_id or ""
        self.driver = driver
        self.store = store
        self.address_of = client_address_of or self._own_address_only
        self.rules = KVRules(config.node_id, config.max_key_bytes, config.max_value_bytes,
                             self.address_of)

    def _own_address_only(self, node_id: str) -> str:
        return self.cfg.client_address if node_id == self.cfg.node_id else ""

    def _header(self, applied: int | None = None, revision: int = 0) -> kv_pb2.ResponseHeader:
        rt = self.driver.runtime
        return KVRules.header(self.cfg.node_id, rt.applied_index if applied is None else applied,
                              rt.leader, rt.term, revision)

    async def _wait(self, fut: Awaitable[T], context: grpc.aio.ServicerContext) -> T:
        remaining = context.time_remaining()
        timeout = DEFAULT_WAIT_SECONDS if remaining is None else max(remaining, 0.0)
        try:
            async with asyncio.timeout(timeout):  # no task per request, as wait_for makes
                return await fut
        except Exception as err:  # noqa: BLE001 - mapped to a status, or re-raised
            raise self.rules.failure(err) from None

    async def _execute(self, method: str, request: Any, context) -> Any:
        """One operation, start to answer; raises RequestError."""
        op: Operation = self.rules.prepare(method, request)
        if method == "Alarm":
            return await self._alarm(op, context)
        if op.write is not None:
            self.rules.check_alarms(method, self.store.alarms(), op)
            result = await self._wait(self.driver.propose(op.write, answer_early=True),
                                      context)
            applied = max(self.driver.runtime.applied_index, result.index)
            return self.rules.write_response(method, result, self._header(applied))
        if op.linearizable:
            await self._wait(self.driver.read_index(), context)
        else:
            self.rules.check_local_read(self.driver.runtime.resyncing)
            await self.driver.settled()
        assert op.range is not None
        try:
            if method == "Get":
                # One key: cheap enough for the event loop (and most calls are these).
                result, revision, applied = self.store.range(op.range)
            else:
                # A range may cover many keys (it counts them all even with a limit): read
                # in a worker thread so the loop keeps serving Raft. LMDB read transactions
                # are per thread.
                result, revision, applied = await asyncio.to_thread(self.store.range,
                                                                    op.range)
        except MvccError as err:
            raise self.rules.mvcc_failure(err.message) from None
        return self.rules.range_response(method, result, self._header(applied, revision))

    async def _alarm(self, op: Operation, context) -> Any:
        """A disarm goes through the log like a write (only the leader proposes); a GET
        waits for a ReadIndex point, so it never misses an alarm raised before it."""
        for entry in op.disarm:
            await self._wait(self.driver.propose(entry), context)
        if not op.disarm:
            await self._wait(self.driver.read_index(), context)
        return self.rules.alarm_response(self.store.alarms(), self._header())

    async def _unary(self, method: str, request: Any, context) -> Any:
        if trace.ON:
            trace.event("rpc-in")
        try:
            response = await self._execute(method, request, context)
            if trace.ON:
                trace.event("rpc-out")
            return response
        except RequestError as a:
            if a.metadata:
                context.set_trailing_metadata(a.metadata)
            await context.abort(a.code, a.message)
            raise  # unreachable: abort raises

    # -- RPCs ---------------------------------------------------------------------------

    async def Put(self, request, context):  # noqa: N802
        return await self._unary("Put", request, context)

    async def Delete(self, request, context):  # noqa: N802
        return await self._unary("Delete", request, context)

    async def CompareAndSwap(self, request, context):  # noqa: N802
        return await self._unary("CompareAndSwap", request, context)

    async def Get(self, request, context):  # noqa: N802
        return await self._unary("Get", request, context)

    async def RegisterSession(self, request, context):  # noqa: N802
        return await self._unary("RegisterSession", request, context)

    async def Alarm(self, request, context):  # noqa: N802
        return await self._unary("Alarm", request, context)

    async def Range(self, request, context):  # noqa: N802
        return await self._unary("Range", request, context)

    async def Txn(self, request, context):  # noqa: N802
        return await self._unary("Txn", request, context)

    async def Compact(self, request, context):  # noqa: N802
        return await self._unary("Compact", request, context)

    async def Batch(self, request, context):  # noqa: N802
        try:
            ops = self.rules.batch_ops(request)
        except RequestError as a:
            await context.abort(a.code, a.message)
        results = await asyncio.gather(*(self._one(op, context) for op in ops))
        return kv_pb2.BatchResponse(results=results)

    async def _one(self, op: tuple[str, Any] | None, context) -> kv_pb2.OpResult:
        if op is None:
            return KVRules.op_result(None, None)
        method, request = op
        try:
            response = await self._execute(method, request, context)
        except RequestError as a:
            return KVRules.op_result(method, a)
        return KVRules.op_result(method, response)

    async def Status(self, request, context):  # noqa: N802
        s = self.driver.status()
        peers = [
            kv_pb2.PeerProgress(id=p, address=self.address_of(p), match_index=pr.match,
                                next_index=pr.next)
            for p, pr in sorted(s.progress.items())
        ]
        leader = s.leader
        return kv_pb2.StatusResponse(
            id=self.cfg.node_id,
            address=self.cfg.client_address,
            role=s.role.label,
            term=s.term,
            commit_index=s.commit,
            applied_index=self.driver.applied_index,
            leader_id=leader,
            leader_address=self.address_of(leader) if leader else "",
            first_log_index=s.first_index,
            last_log_index=s.last_index,
            shards=self.cfg.shards,
            peers=peers,
            snapshot_index=s.first_index - 1,
            log_bytes=self.store.log_bytes(),
            cluster_id=self.cluster_id,
            voters=list(s.voters),
            learners=list(s.learners),
        )
