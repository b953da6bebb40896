"""Operator and drill API: state digests, and fault injection behind a test-only flag."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from kvstore.server.transport import PeerTransport
from kvstore.v1 import admin_pb2, admin_pb2_grpc


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, node_id: str, store, transport: PeerTransport,
                 fault_injection: bool,
                 hash_at: Callable[[int], str | None] = lambda _index: None) -> None:
        self.node_id = node_id
        self.hash_at = hash_at
        self.store = store
        self.transport = transport
        self.fault_injection = fault_injection

    async def Digest(self, request, context):  # noqa: N802
        # Hashing every shard is CPU work proportional to the data; keep it off the loop.
        applied, digests = await asyncio.to_thread(self.store.digest)
        return admin_pb2.DigestResponse(node_id=self.node_id, applied_index=applied,
                                        shard_digests=digests)

    async def HashCheck(self, request, context):  # noqa: N802
        digest = self.hash_at(request.index)
        return admin_pb2.HashCheckResponse(found=digest is not None, digest=digest or "")

    async def SetFaults(self, request, context):  # noqa: N802
        if not self.fault_injection:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "fault injection is off; start the node with --fault-injection")
        unknown = sorted({*request.drop_to, *request.drop_from} - set(self.transport.senders))
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown peer ids: {', '.join(unknown)}")
        self.transport.set_faults(set(request.drop_to), set(request.drop_from))
        return admin_pb2.SetFaultsResponse()
