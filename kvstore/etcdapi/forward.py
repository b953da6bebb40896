"""A follower forwards to its leader what it cannot do itself.

Why forward at all: etcd clients (etcdctl, clientv3, aetcd) do not follow kvstore's
not-leader hints (trailing metadata), and etcd serves every request on every member. In
kvstore only the leader may propose or answer a ReadIndex (NodeRuntime.propose and
read_index fail at once with NotLeader on a follower; Raft-level proposal forwarding does
not exist), so a follower that gets a write, a linearizable Range, a Compact or an Alarm
sends the same request to the leader and relays the answer (with its own member id in
the header, as etcd's member that served the client).

Why over the PEER port, and not the leader's client port: a node always knows its peers'
peer addresses (--peers), while their client addresses are only learned at run time;
and with TLS the two ports have different CAs (cluster/certs.py): a node holds a peer
certificate the leader's peer port trusts, but nothing the client port (with
--client-cert-auth) would accept. The peer port checks the caller as for Raft streams
(mutual peer TLS, allowed CN, then the PeerGate: cluster id and member id), so only
members can use it. One grpc.aio channel is kept per peer and reused.

A forwarded request is executed by the leader locally; it is never forwarded again
(no loops): if the leader lost its leadership meanwhile the client gets etcd's
"etcdserver: leader changed" (UNAVAILABLE), which clientv3 retries for reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from kvstore.etcdapi.common import (
    DEFAULT_WAIT_SECONDS,
    ERR_LEADER_CHANGED,
    ERR_NO_LEADER,
    ERR_TIMEOUT,
    abort,
    unavailable,
)
from kvstore.etcdapi.methods import FORWARD_SERVICE, SERVICES, generic_handler, path
from kvstore.raft.errors import NotLeader
from kvstore.server.identity import PeerGate, Refused
from kvstore.server.request_error import RequestError
from kvstore.server.transport import open_channel

# A method run for a forwarded request: raises RequestError or NotLeader.
Local = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


# A forwarded call ends this much before the client's deadline, so that the client gets
# etcd's "request timed out" from us rather than its own DEADLINE_EXCEEDED.
DEADLINE_MARGIN_SECONDS = 0.1


def forward_timeout(remaining: float | None) -> float:
    if remaining is None:
        return DEFAULT_WAIT_SECONDS
    return max(remaining - DEADLINE_MARGIN_SECONDS, remaining / 2, 0.0)


class Forwarder:
    """Sends requests to another member's FORWARD_SERVICE (on its peer port)."""

    def __init__(self, peers: Mapping[str, str], credentials: grpc.ChannelCredentials | None,
                 metadata: tuple[tuple[str, str], ...]) -> None:
        self.peers = dict(peers)  # node id -> peer address
        self.credentials = credentials
        self.metadata = metadata
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], Any] = {}

    def _call(self, node_id: str, method: str) -> Any:
        key = (node_id, method)
        fn = self._calls.get(key)
        if fn is None:
            channel = self._channels.get(node_id)
            if channel is None:
                channel = open_channel(self.peers[node_id], self.credentials)
                self._channels[node_id] = channel
            req, resp = SERVICES[FORWARD_SERVICE][method]
            fn = channel.unary_unary(path(FORWARD_SERVICE, method),
                                     request_serializer=req.SerializeToString,
                                     response_deserializer=resp.FromString)
            self._calls[key] = fn
        return fn

    async def call(self, node_id: str, method: str, request: Any,
                   timeout: float | None) -> Any:
        """``method`` run by ``node_id``; raises RequestError with etcd's status."""
        if not node_id or node_id not in self.peers:
            raise unavailable(ERR_NO_LEADER)
        try:
            # wait_for_ready: a channel still (re)connecting to the leader waits within the
            # deadline instead of failing at once; nothing is sent twice.
            return await self._call(node_id, method)(
                request, timeout=forward_timeout(timeout), metadata=self.metadata,
                wait_for_ready=True)
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise unavailable(ERR_TIMEOUT) from None
            if code == grpc.StatusCode.UNAVAILABLE and not details.startswith("etcdserver:"):
                # The leader cannot be reached (down, or partitioned from us).
                raise unavailable(ERR_TIMEOUT) from None
            raise RequestError(code, details) from None

    async def to_leader(self, err: NotLeader, method: str, request: Any,
                        context: grpc.aio.ServicerContext) -> Any:
        """The answer of the leader ``err`` names (our member id in its header)."""
        return await self.call(err.leader, method, request, context.time_remaining())

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._calls.clear()


def forward_handler(gate: PeerGate, local: Mapping[str, Local]) -> grpc.GenericRpcHandler:
    """FORWARD_SERVICE for the peer port: admit the caller as a member (PeerGate), then
    run the method locally; a NotLeader is an answer, never a further hop."""

    def make(method: str, fn: Local) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                gate.admit(context.invocation_metadata(), f"forwarded etcd {method}",
                           context.peer())
            except Refused as refusal:
                await context.abort(getattr(grpc.StatusCode, refusal.code), str(refusal))
            try:
                return await fn(request, context)
            except NotLeader as err:
                await abort(context, unavailable(ERR_LEADER_CHANGED if err.leader
                                                 else ERR_NO_LEADER))
            except RequestError as err:
                await abort(context, err)

        return handle

    return generic_handler(FORWARD_SERVICE, {m: make(m, fn) for m, fn in local.items()})


# How long a relayed answer waits at most for this member to apply it when the call has
# no deadline (the answer is relayed anyway then: the write is committed).
CATCH_UP_SECONDS = 5.0
# (method, request, relayed response, timeout): wait until this member applied it.
CatchUp = Callable[[str, Any, Any, float], Awaitable[None]]


def client_handler(member_id: int, forwarder: Forwarder | None, method: str,
                   fn: Local, catch_up: CatchUp | None = None
                   ) -> Callable[..., Awaitable[Any]]:
    """A client-port handler: run ``fn`` here; if the runtime says this node is not the
    leader, forward the request to the leader and relay its answer (our member id in the
    header, as the member that served the client).

    With ``catch_up`` (see common.catch_up), a forwarded answer is relayed only
    once this member has applied up to the answer's revision, as etcd answers a request
    once the member that received it applied it: a client that then reads or watches on
    this member (serializable) sees its own write, or its own compaction."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            try:
                return await fn(request, context)
            except NotLeader as err:
                if forwarder is None:
                    raise unavailable(ERR_LEADER_CHANGED if err.leader
                                      else ERR_NO_LEADER) from None
                response = await forwarder.to_leader(err, method, request, context)
                if response.HasField("header"):
                    response.header.member_id = member_id
                    if catch_up is not None:
                        left = context.time_remaining()
                        await catch_up(method, request, response,
                                       CATCH_UP_SECONDS if left is None else max(left, 0.0))
                return response
        except RequestError as err:
            await abort(context, err)

    return handle
