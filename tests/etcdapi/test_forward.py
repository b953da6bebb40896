"""A follower's forwarding to its leader, with in-process gRPC servers and stand-in
handlers (no Raft): the answer is relayed with the follower's member id; the peer port
admits members only; a lost leader, no leader, or an unreachable one give etcd's errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from kvstore.etcdapi.forward import Forwarder, client_handler, forward_handler
from kvstore.etcdapi.methods import KV, generic_handler, stub
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.raft.errors import NotLeader
from kvstore.server.identity import PeerGate
from kvstore.server.request_error import RequestError

CLUSTER = "c1"


async def _server(*handlers: grpc.GenericRpcHandler) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


class Setup:
    def __init__(self) -> None:
        self.leader_is = "n1"  # what the "leader" n1 thinks: itself, or another node
        self.servers: list[grpc.aio.Server] = []
        self.forwarder: Forwarder | None = None
        self.follower = ""
        self.leader_peer = ""

    async def put_on_leader(self, req: pb.PutRequest, context: Any) -> pb.PutResponse:
        if self.leader_is != "n1":
            raise NotLeader(self.leader_is)
        return pb.PutResponse(header=pb.ResponseHeader(member_id=1, revision=5),
                              prev_kv={"key": req.key, "value": b"old"})

    @staticmethod
    async def put_on_follower(req: pb.PutRequest, context: Any) -> pb.PutResponse:
        raise NotLeader("n1")

    @staticmethod
    async def range_without_leader(req: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        raise NotLeader("")


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    s = Setup()
    leader_gate = PeerGate("n1", CLUSTER, frozenset({"n2"}), "127.0.0.1:1")
    server, s.leader_peer = await _server(forward_handler(leader_gate, {"Put": s.put_on_leader}))
    s.servers.append(server)
    follower_gate = PeerGate("n2", CLUSTER, frozenset({"n1"}), "127.0.0.1:2")
    s.forwarder = Forwarder({"n1": s.leader_peer}, None, follower_gate.outgoing())
    server, s.follower = await _server(generic_handler(KV, {
        "Put": client_handler(2, s.forwarder, "Put", s.put_on_follower),
        "Range": client_handler(2, s.forwarder, "Range", s.range_without_leader),
    }))
    s.servers.append(server)
    try:
        yield s
    finally:
        await s.forwarder.close()
        for server in s.servers:
            await server.stop(0)


async def test_follower_relays_the_leaders_answer_as_its_own(setup: Setup) -> None:
    async with grpc.aio.insecure_channel(setup.follower) as channel:
        resp = await stub(channel, KV).Put(pb.PutRequest(key=b"k", value=b"v", prev_kv=True),
                                           timeout=5)
    assert resp.header.member_id == 2 and resp.header.revision == 5
    assert resp.prev_kv.value == b"old"


async def _error(address: str, method: str, request: Any) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub(channel, KV), method)(request, timeout=2)
    return err.value


async def test_leader_that_lost_leadership_answers_leader_changed(setup: Setup) -> None:
    setup.leader_is = "n3"  # never a second hop
    err = await _error(setup.follower, "Put", pb.PutRequest(key=b"k"))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE,
                                           "etcdserver: leader changed")


async def test_no_leader(setup: Setup) -> None:
    err = await _error(setup.follower, "Range", pb.RangeRequest(key=b"k"))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")


async def test_unreachable_leader_times_out(setup: Setup) -> None:
    """The forward waits for the leader within the client's deadline (a leader restarting
    may be back in time), then answers etcd's timeout before the client's own."""
    await setup.servers[0].stop(0)
    err = await _error(setup.follower, "Put", pb.PutRequest(key=b"k"))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE,
                                           "etcdserver: request timed out")


async def test_forward_service_admits_members_only(setup: Setup) -> None:
    stranger = Forwarder({"n1": setup.leader_peer}, None,
                         PeerGate("n2", "other-cluster", frozenset(), "").outgoing())
    outsider = Forwarder({"n1": setup.leader_peer}, None,
                         PeerGate("n9", CLUSTER, frozenset(), "").outgoing())
    try:
        with pytest.raises(RequestError) as err:
            await stranger.call("n1", "Put", pb.PutRequest(key=b"k"), 5)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(RequestError) as err:
            await outsider.call("n1", "Put", pb.PutRequest(key=b"k"), 5)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await stranger.close()
        await outsider.close()
