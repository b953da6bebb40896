"""etcd's membership calls: Cluster.MemberAdd/Remove/Update/Promote and
Maintenance.MoveLeader, over kvstore's single-server membership changes.

Each runs on the leader (a follower forwards it over the peer port, like a write) and
answers once the change is applied there. etcd names members by uint64 ids and its
MemberAdd carries no name; kvstore names members by node id. A MemberAdd from kvstore's
own CLI carries the node id in an extension field (`name`, field 100, which etcd
ignores); one from etcdctl gets a fresh id from the cluster (``node-`` and 8 hex digits),
and the new node finds it with `kvstore serve --join` by its peer address, as an etcd
member finds its entry by its peer URLs.

Refusals carry etcd's error texts where etcd has one, so etcdctl prints what an etcd
operator knows.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kvstore.client import parse_endpoint
from kvstore.etcdapi.common import EtcdNode
from kvstore.etcdapi.forward import Forwarder, client_handler
from kvstore.etcdapi.members import member_id
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.raft.errors import NotLeader
from kvstore.raft.types import Role
from kvstore.server.outcomes import LeadershipLost
from kvstore.server.reconfig import MembershipRefused
from kvstore.server.request_error import RequestError
from kvstore.state.membership import CT, Member
from kvstore.v1 import raft_pb2

MOVE_LEADER_SECONDS = 5.0

# (fragment of kvstore's refusal, gRPC code, etcd's error text)
_ETCD_ERRORS = (
    ("would lose its quorum", grpc.StatusCode.UNAVAILABLE, "etcdserver: unhealthy cluster"),
    ("is not ready", grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: can only promote a learner member which is in sync with leader"),
    ("is not a learner", grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: can only promote a learner member"),
    ("is not a member", grpc.StatusCode.NOT_FOUND, "etcdserver: member not found"),
    ("is already used by", grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: Peer URLs already exists"),
    ("is already a member", grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: member ID already exist"),
    ("was removed from the cluster", grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: the member has been permanently removed from the cluster"),
)


def refusal_error(err: MembershipRefused) -> RequestError:
    """etcd's status for a refused change: etcd's text first, then kvstore's reason."""
    text = str(err)
    for fragment, code, etcd_text in _ETCD_ERRORS:
        if fragment in text:
            return RequestError(code, f"{etcd_text} ({text})")
    code = grpc.StatusCode.UNAVAILABLE if err.retryable else grpc.StatusCode.FAILED_PRECONDITION
    return RequestError(code, f"etcdserver: {text}")


def peer_address(urls: list[str]) -> str:
    """HOST:PORT of the first peer URL; RequestError for none or a malformed one."""
    if not urls:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "etcdserver: member peer URLs are required")
    text = urls[0]
    scheme, sep, rest = text.partition("://")
    if sep and scheme not in ("http", "https"):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"etcdserver: peer URL {text!r} must be http:// or https://")
    try:
        return parse_endpoint((rest if sep else text).rstrip("/"))
    except ValueError as err:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"etcdserver: bad peer URL {text!r}: {err}") from None


class EtcdMembershipService:
    def __init__(self, node: EtcdNode, forwarder: Forwarder | None) -> None:
        self.node = node
        self.forwarder = forwarder

    @property
    def local(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        """Methods run on the leader (also what a follower's forwarded call runs)."""
        return {"MemberAdd": self.member_add, "MemberRemove": self.member_remove,
                "MemberUpdate": self.member_update, "MemberPromote": self.member_promote,
                "MoveLeader": self.move_leader}

    def cluster_handlers(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        return {m: client_handler(self.node.member_id, self.forwarder, m, fn)
                for m, fn in self.local.items() if m != "MoveLeader"}

    def maintenance_handlers(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        return {"MoveLeader": client_handler(self.node.member_id, self.forwarder,
                                             "MoveLeader", self.move_leader)}

    def _header(self) -> pb.ResponseHeader:
        return self.node.header(0)

    def _on_the_leader(self) -> None:
        """Membership calls run on the leader: a follower forwards them (NotLeader) before
        looking anything up, since its own view of the members may lag the leader's (a
        member just added is found on the leader first)."""
        driver = self.node.driver
        if driver.role != Role.LEADER:
            raise NotLeader(driver.leader)

    def _node_of(self, mid: int) -> str:
        self._on_the_leader()
        node = self.node.book.node_of(mid)
        if node is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
        return node

    async def _change(self, kind: int, node_id: str, address: str = "") -> list[Member]:
        change = raft_pb2.ConfChange(type=kind, node_id=node_id, peer_address=address)
        try:
            return await self.node.driver.change_membership(change)
        except MembershipRefused as err:
            raise refusal_error(err) from None
        except LeadershipLost:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               "etcdserver: leader changed (the membership change may or may "
                               "not have been applied: list the members)") from None

    def _members(self) -> list[pb.Member]:
        return self.node.book.members()

    async def member_add(self, req: pb.MemberAddRequest,
                         context: grpc.aio.ServicerContext) -> pb.MemberAddResponse:
        self._on_the_leader()
        address = peer_address(list(req.peerURLs))
        node_id = req.name or f"node-{secrets.token_hex(4)}"
        kind = CT.CONF_ADD_LEARNER if req.isLearner else CT.CONF_ADD_VOTER
        await self._change(kind, node_id, address)
        return pb.MemberAddResponse(header=self._header(),
                                    member=self.node.book.member(node_id),
                                    members=self._members())

    async def member_remove(self, req: pb.MemberRemoveRequest,
                            context: grpc.aio.ServicerContext) -> pb.MemberRemoveResponse:
        await self._change(CT.CONF_REMOVE, self._node_of(req.ID))
        return pb.MemberRemoveResponse(header=self._header(), members=self._members())

    async def member_update(self, req: pb.MemberUpdateRequest,
                            context: grpc.aio.ServicerContext) -> pb.MemberUpdateResponse:
        node = self._node_of(req.ID)
        await self._change(CT.CONF_UPDATE, node, peer_address(list(req.peerURLs)))
        return pb.MemberUpdateResponse(header=self._header(), members=self._members())

    async def member_promote(self, req: pb.MemberPromoteRequest,
                             context: grpc.aio.ServicerContext) -> pb.MemberPromoteResponse:
        await self._change(CT.CONF_PROMOTE, self._node_of(req.ID))
        return pb.MemberPromoteResponse(header=self._header(), members=self._members())

    async def move_leader(self, req: pb.MoveLeaderRequest,
                          context: grpc.aio.ServicerContext) -> pb.MoveLeaderResponse:
        self._on_the_leader()
        target = self.node.book.node_of(req.targetID)
        if target is None or target in self.node.book.learners:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               "etcdserver: bad leader transferee")
        left = context.time_remaining()
        timeout = MOVE_LEADER_SECONDS if left is None else max(min(left, MOVE_LEADER_SECONDS),
                                                                0.1)
        try:
            await self.node.driver.transfer_leadership(target, timeout)
        except MembershipRefused as err:
            if "not a voter" in str(err):
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   "etcdserver: bad leader transferee") from None
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "etcdserver: request timed out, leader transfer took too long "
                               f"({err})") from None
        except LeadershipLost as err:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"etcdserver: {err}") from None
        return pb.MoveLeaderResponse(header=self._header())


__all__ = ["EtcdMembershipService", "member_id", "refusal_error"]
