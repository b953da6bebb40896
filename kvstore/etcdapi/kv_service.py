"""etcd's KV service (Range, Put, DeleteRange, Txn, Compact) over kvstore's MVCC state.

A thin translation: validation and etcd's errors come from kvstore.server.mvcc_requests
(shared with kvstore's own service), writes are the same Txn/Compaction commands the
native API proposes, and reads the same two paths: a serializable Range reads this
member's local state (refused while it is being rebuilt, as a stale native read), any
other waits for a ReadIndex point first. Put and DeleteRange are proposed as a Txn of
one operation, so there is one write path to get right.

etcd clients send no write ids, so their writes carry no session (client id b""): as
with etcd itself they are at-least-once when a client retries.

Followers: proposals and ReadIndex work only on the leader here (NotLeader at once on a
follower), so a follower forwards writes and linearizable reads to the leader over the
peer port (see forward.py for why that port). Serializable reads are always local.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kvstore.etcdapi.common import EtcdNode, catch_up, mvcc_failure
from kvstore.etcdapi.forward import Forwarder, Local, client_handler
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.server import mvcc_requests as mr
from kvstore.server.kv_rules import KVRules
from kvstore.state import commands
from kvstore.state.kv_ops import has_put
from kvstore.state.mvcc import MvccError


class EtcdKVService:
    def __init__(self, node: EtcdNode, forwarder: Forwarder | None) -> None:
        self.node = node
        self.forwarder = forwarder
        self.local: dict[str, Local] = {
            "Range": self.range,
            "Put": self.put,
            "DeleteRange": self.delete_range,
            "Txn": self.txn,
            "Compact": self.compact,
        }

    async def _catch_up(self, method: str, request: Any, response: Any,
                        timeout: float) -> None:
        await catch_up(self.node, method, request, response, timeout)

    def handlers(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        """Client-port handlers (forwarding to the leader where needed)."""
        return {m: client_handler(self.node.member_id, self.forwarder, m, fn,
                                 catch_up=self._catch_up)
                for m, fn in self.local.items()}

    # -- reads --------------------------------------------------------------------------

    async def range(self, req: pb.RangeRequest,
                    context: grpc.aio.ServicerContext) -> pb.RangeResponse:
        node = self.node
        mr.check_range(req, node.max_key_bytes)
        if req.serializable:
            node.check_local_read()
            await node.driver.settled()
        else:
            await node.wait(node.driver.read_index(), context)
        try:
            resp, revision, _applied = await node.read(node.store.range, req)
        except MvccError as err:
            raise mvcc_failure(err.message) from None
        resp.header.CopyFrom(node.header(revision))
        return resp

    # -- writes -------------------------------------------------------------------------

    async def put(self, req: pb.PutRequest,
                  context: grpc.aio.ServicerContext) -> pb.PutResponse:
        mr.check_put(req, self.node.max_key_bytes, self.node.max_value_bytes)
        txn_resp = await self._propose_txn(mr.txn_of_put(req), context)
        resp = mr.put_response(txn_resp)
        resp.header.CopyFrom(txn_resp.header)
        return resp

    async def delete_range(self, req: pb.DeleteRangeRequest,
                           context: grpc.aio.ServicerContext) -> pb.DeleteRangeResponse:
        mr.check_delete_range(req, self.node.max_key_bytes)
        txn_resp = await self._propose_txn(mr.txn_of_delete_range(req), context)
        resp = mr.delete_range_response(txn_resp)
        resp.header.CopyFrom(txn_resp.header)
        return resp

    async def txn(self, req: pb.TxnRequest,
                  context: grpc.aio.ServicerContext) -> pb.TxnResponse:
        mr.check_txn(req, self.node.max_key_bytes, self.node.max_value_bytes)
        return await self._propose_txn(req, context)

    async def compact(self, req: pb.CompactionRequest,
                      context: grpc.aio.ServicerContext) -> pb.CompactionResponse:
        node = self.node
        mr.check_compact(req)
        result = await node.wait(
            node.driver.propose(commands.encode_compact(req.revision, req.physical)), context)
        if result.error:
            raise mvcc_failure(result.error)
        return pb.CompactionResponse(header=node.header(result.revision))

    async def _propose_txn(self, txn: pb.TxnRequest,
                           context: grpc.aio.ServicerContext) -> pb.TxnResponse:
        node = self.node
        alarms = node.store.alarms()
        if alarms and has_put(txn):
            raise KVRules.alarm_refusal(alarms[0].type)
        result = await node.wait(
            node.driver.propose(commands.encode_txn(b"", 0, 0, txn), answer_early=True),
            context)
        if result.error:
            raise mvcc_failure(result.error)
        resp = pb.TxnResponse()
        if result.response is not None:
            resp.CopyFrom(result.response)
        resp.succeeded = result.ok
        resp.header.CopyFrom(node.header(result.revision))
        return resp
