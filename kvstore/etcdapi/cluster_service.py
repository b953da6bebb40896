"""etcd's Cluster service: MemberList (the changes are in membership_service.py).

Members are the applied membership (kvstore.state.membership), named by node id, with
stable member ids (members.member_id), peer URLs from the membership and client URLs as
the nodes advertise them. A node learns a peer's client address from that peer's Raft
stream (every node opens one to every peer at start), so it is normally known; if not
(the peer has not reached us since we started), the peer is asked over its peer port
(the forward service's MemberList) and the answer remembered. A peer that is down and
never told us lists no client URL, as etcd lists an unstarted member.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kvstore.client import parse_endpoint
from kvstore.etcdapi.common import EtcdNode
from kvstore.etcdapi.forward import Forwarder, client_handler
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.server.request_error import RequestError

ASK_PEER_SECONDS = 1.0


class EtcdClusterService:
    def __init__(self, node: EtcdNode, forwarder: Forwarder | None) -> None:
        self.node = node
        self.forwarder = forwarder

    def handlers(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        return {"MemberList": client_handler(self.node.member_id, self.forwarder,
                                             "MemberList", self.member_list)}

    def header(self) -> pb.ResponseHeader:
        # etcd's Cluster responses carry no revision (ClusterServer.header()).
        header = self.node.header(0)
        return header

    async def member_list(self, req: pb.MemberListRequest,
                          context: grpc.aio.ServicerContext) -> pb.MemberListResponse:
        book = self.node.book
        missing = book.unknown_client_addresses()
        if missing and self.forwarder is not None:
            await asyncio.gather(*(self._ask(peer) for peer in missing))
        return pb.MemberListResponse(header=self.header(), members=book.members())

    async def local_member_list(self, req: pb.MemberListRequest,
                                context: grpc.aio.ServicerContext) -> pb.MemberListResponse:
        """What a peer asking us gets: our view, without asking anyone in turn."""
        return pb.MemberListResponse(header=self.header(), members=self.node.book.members())

    async def _ask(self, peer: str) -> None:
        """Learn ``peer``'s client address from the peer itself (best effort)."""
        assert self.forwarder is not None
        try:
            resp = await self.forwarder.call(peer, "MemberList", pb.MemberListRequest(),
                                             ASK_PEER_SECONDS)
        except RequestError:
            return
        for m in resp.members:
            if m.name == peer and m.clientURLs:
                address = m.clientURLs[0].partition("://")[2]
                try:
                    self.node.book.learned[peer] = parse_endpoint(address)
                except ValueError:
                    pass
