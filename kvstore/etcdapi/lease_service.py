"""etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive (stream), LeaseTimeToLive,
LeaseLeases.

Which member does what, and why:
- Grants and revokes change the replicated state, so they are proposals (leader only).
  The leader picks a grant's id when the client gives none (Lessor.new_id) and raises
  its TTL to the minimum (Lessor.ttl_for; etcd's minLeaseTTL, above an election).
- Renewals and the remaining TTL are the leader's clock (kvstore.server.lessor): a
  keep-alive renews only after a ReadIndex round confirmed the leadership
  (NodeDriver.lease_keepalive), and TimeToLive asks the lessor after one.
- LeaseLeases and TimeToLive's keys read the leader's applied state after a ReadIndex
  round, so a lease just granted through any member is listed.
A follower forwards all of these to the leader over the peer port (forward.py). A
follower's LeaseKeepAlive stream stays with the follower and sends each keep-alive as
one LeaseKeepAliveOnce call, retrying across a leader change within etcd's request
timeout, as etcd's followers renew over HTTP one request at a time.

etcd's answers (checked against a real etcd): TTL 0 to a keep-alive of a missing lease
(the stream goes on), TTL -1 from TimeToLive for a missing lease, "lease already exists"
(FAILED_PRECONDITION), "requested lease not found" (NOT_FOUND), "too large lease TTL"
(OUT_OF_RANGE); a grant answers the header revision of the store (a grant takes no
revision). The stream ends OK when the client half-closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc

from kvstore.etcdapi.common import (
    DEFAULT_WAIT_SECONDS,
    ERR_LEADER_CHANGED,
    ERR_NO_LEADER,
    EtcdNode,
    abort,
    catch_up,
    failure,
    mvcc_failure,
    unavailable,
)
from kvstore.etcdapi.forward import Forwarder, Local, client_handler
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.raft.errors import NotLeader
from kvstore.server.kv_rules import KVRules
from kvstore.server.lessor import LeaseNotFound
from kvstore.server.request_error import RequestError
from kvstore.state import commands
from kvstore.state.leases import ERR_LEASE_TTL_TOO_LARGE, MAX_LEASE_TTL

T = TypeVar("T")

# How long one keep-alive may take on a follower, leader changes included (etcd's
# ReqTimeout: 5 s plus two election timeouts).
KEEPALIVE_TIMEOUT_SECONDS = 7.0
RETRY_PAUSE_SECONDS = 0.05

def lease_failure(message: str) -> RequestError:
    """etcd's status for a refused lease operation (mvcc_requests maps them all)."""
    return mvcc_failure(message)


class EtcdLeaseService:
    def __init__(self, node: EtcdNode, forwarder: Forwarder | None) -> None:
        self.node = node
        self.forwarder = forwarder
        self.local: dict[str, Local] = {
            "LeaseGrant": self.grant,
            "LeaseRevoke": self.revoke,
            "LeaseTimeToLive": self.time_to_live,
            "LeaseLeases": self.leases,
        }

    async def _catch_up(self, method: str, request: Any, response: Any,
                        timeout: float) -> None:
        await catch_up(self.node, method, request, response, timeout)

    def handlers(self) -> dict[str, Any]:
        """Client-port handlers: the unary ones forward to the leader where needed."""
        unary: dict[str, Any] = {m: client_handler(self.node.member_id, self.forwarder, m, fn,
                                 catch_up=self._catch_up)
                                 for m, fn in self.local.items()}
        return {**unary, "LeaseKeepAlive": self.keepalive_stream}

    def forward_local(self) -> dict[str, Local]:
        """What the peer port runs for a follower (the leader's side of forwarding)."""
        return {**self.local, "LeaseKeepAliveOnce": self.keepalive_once}

    # -- unary calls ---------------------------------------------------------------------

    async def grant(self, req: pb.LeaseGrantRequest,
                    context: grpc.aio.ServicerContext) -> pb.LeaseGrantResponse:
        node = self.node
        if req.TTL > MAX_LEASE_TTL:
            raise lease_failure(ERR_LEASE_TTL_TOO_LARGE)
        lessor = node.driver.runtime.lessor
        lease_id = req.ID or lessor.new_id()
        ttl = lessor.ttl_for(req.TTL)
        result = await node.wait(
            node.driver.propose(commands.encode_lease_grant(lease_id, ttl)), context)
        if result.alarm:
            raise KVRules.alarm_refusal(result.alarm)
        if result.error:
            raise lease_failure(result.error)
        return pb.LeaseGrantResponse(header=node.header(result.revision), ID=lease_id,
                                     TTL=ttl)

    async def revoke(self, req: pb.LeaseRevokeRequest,
                     context: grpc.aio.ServicerContext) -> pb.LeaseRevokeResponse:
        node = self.node
        result = await node.wait(
            node.driver.propose(commands.encode_lease_revoke(req.ID)), context)
        if result.error:
            raise lease_failure(result.error)
        return pb.LeaseRevokeResponse(header=node.header(result.revision))

    async def time_to_live(self, req: pb.LeaseTimeToLiveRequest,
                           context: grpc.aio.ServicerContext) -> pb.LeaseTimeToLiveResponse:
        node = self.node
        await node.wait(node.driver.read_index(), context)  # leader, and applied
        lessor = node.driver.runtime.lessor
        try:
            remaining = lessor.time_to_live(req.ID)
            granted = lessor.granted_ttl(req.ID)
        except LeaseNotFound:
            return pb.LeaseTimeToLiveResponse(header=node.header(), ID=req.ID, TTL=-1)
        resp = pb.LeaseTimeToLiveResponse(ID=req.ID, TTL=remaining, grantedTTL=granted)
        if req.keys:
            # etcd lists them in map order; sorted here, so answers are reproducible.
            resp.keys.extend(sorted(await node.read(node.store.lease_keys, req.ID)))
        resp.header.CopyFrom(node.header())
        return resp

    async def leases(self, req: pb.LeaseLeasesRequest,
                     context: grpc.aio.ServicerContext) -> pb.LeaseLeasesResponse:
        node = self.node
        await node.wait(node.driver.read_index(), context)
        leases = await node.read(node.store.leases)
        return pb.LeaseLeasesResponse(header=node.header(),
                                      leases=[pb.LeaseStatus(ID=lid) for lid, _ttl in leases])

    # -- keep-alives ---------------------------------------------------------------------

    async def keepalive_once(self, req: pb.LeaseKeepAliveRequest,
                             context: grpc.aio.ServicerContext) -> pb.LeaseKeepAliveResponse:
        """A forwarded keep-alive (the leader's side of LeaseKeepAliveOnce)."""
        return await self._keepalive_here(req, _remaining(context))

    async def _keepalive_here(self, req: pb.LeaseKeepAliveRequest,
                              timeout: float) -> pb.LeaseKeepAliveResponse:
        """One renewal on this node (the leader; NotLeader elsewhere). The header is
        taken before renewing, as etcd does, so that its revision is never after a
        revoke the renewal raced with."""
        node = self.node
        header = node.header()
        try:
            ttl = await _within(node.driver.lease_keepalive(req.ID), timeout)
        except LeaseNotFound:
            ttl = 0
        return pb.LeaseKeepAliveResponse(header=header, ID=req.ID, TTL=ttl)

    async def renew(self, req: pb.LeaseKeepAliveRequest) -> pb.LeaseKeepAliveResponse:
        """One keep-alive of a client stream, wherever the leader is: here, or (from a
        follower) forwarded; retried across leader changes within etcd's timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KEEPALIVE_TIMEOUT_SECONDS
        while True:
            try:
                return await self._renew_once(req, max(deadline - loop.time(), 0.0))
            except RequestError as err:
                if (err.code != grpc.StatusCode.UNAVAILABLE
                        or loop.time() + RETRY_PAUSE_SECONDS >= deadline):
                    raise
            await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def _renew_once(self, req: pb.LeaseKeepAliveRequest,
                          timeout: float) -> pb.LeaseKeepAliveResponse:
        try:
            return await self._keepalive_here(req, timeout)
        except NotLeader as err:
            if self.forwarder is None or not err.leader:
                raise unavailable(ERR_LEADER_CHANGED if err.leader else ERR_NO_LEADER) from None
            resp = await self.forwarder.call(err.leader, "LeaseKeepAliveOnce", req, timeout)
            resp.header.member_id = self.node.member_id
            return resp

    async def keepalive_stream(self, requests: AsyncIterator[pb.LeaseKeepAliveRequest],
                               context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        """etcd's LeaseKeepAlive: one answer per request, in order; an error ends the
        stream with etcd's status; the client's half-close ends it with OK."""
        async for req in requests:
            try:
                resp = await self.renew(req)
            except RequestError as err:
                await abort(context, err)
                return
            yield resp


def _remaining(context: grpc.aio.ServicerContext | None) -> float:
    remaining = None if context is None else context.time_remaining()
    return DEFAULT_WAIT_SECONDS if remaining is None else max(remaining, 0.0)


async def _within(coro: Awaitable[T], timeout: float) -> T:
    """``coro``'s result within ``timeout``; NotLeader and LeaseNotFound pass through,
    other runtime failures become etcd's errors (common.failure)."""
    try:
        return await asyncio.wait_for(coro, timeout)
    except (NotLeader, LeaseNotFound):
        raise
    except Exception as err:  # noqa: BLE001 - mapped to a status, or re-raised
        raise failure(err) from None

