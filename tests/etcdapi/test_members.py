"""etcd identities and the service tables, without a cluster."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kvstore.etcdapi import methods
from kvstore.etcdapi.members import MemberBook, cluster_id_of, member_id, url
from kvstore.etcdpb import rpc_pb2 as pb


def test_member_ids_are_stable_nonzero_uint64_and_distinct() -> None:
    ids = [member_id(f"n{i}") for i in range(1, 200)]
    assert len(set(ids)) == len(ids)
    assert all(0 < i < 2**64 for i in ids)
    # Fixed values: the same on every node, in every process, across releases.
    assert member_id("n1") == member_id("n1")
    assert member_id("n1") != cluster_id_of("n1")
    assert member_id("") == 0


def test_member_book_lists_urls_and_learns_addresses() -> None:
    learned = {"n2": "127.0.0.1:7002"}
    book = MemberBook("n1", "127.0.0.1:7001", "127.0.0.1:7101",
                      {"n2": "127.0.0.1:7102", "n3": "127.0.0.1:7103"},
                      lambda n: learned.get(n, ""), client_tls=True, peer_tls=False)
    assert book.unknown_client_addresses() == ["n3"]
    members = {m.name: m for m in book.members()}
    assert list(members["n1"].clientURLs) == ["https://127.0.0.1:7001"]
    assert list(members["n2"].peerURLs) == ["http://127.0.0.1:7102"]
    assert list(members["n3"].clientURLs) == []
    assert [m.ID for m in book.members()] == sorted(m.ID for m in book.members())
    book.learned["n3"] = "127.0.0.1:7003"
    assert book.unknown_client_addresses() == []
    assert book.node_of(member_id("n3")) == "n3"
    assert book.node_of(12345) is None
    assert url("", True) == ""


def test_every_service_method_has_etcd_path_and_types() -> None:
    assert methods.path(methods.KV, "Range") == "/etcdserverpb.KV/Range"
    assert set(methods.SERVICES[methods.KV]) == {"Range", "Put", "DeleteRange", "Txn",
                                                 "Compact"}
    assert methods.SERVICES[methods.MAINTENANCE]["Status"] == (pb.StatusRequest,
                                                               pb.StatusResponse)
    with pytest.raises(ValueError):
        methods.generic_handler(methods.KV, {"Watch": lambda r, c: None})  # type: ignore


async def test_generic_handler_serves_under_etcd_names() -> None:
    """A hand-registered service answers at etcd's path; an unregistered method of it is
    UNIMPLEMENTED (as any unknown path)."""

    async def status(request: pb.StatusRequest, context: object) -> pb.StatusResponse:
        return pb.StatusResponse(version="3.5.0", raftIndex=7)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (methods.generic_handler(methods.MAINTENANCE, {"Status": status}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = methods.stub(channel, methods.MAINTENANCE)
            resp = await stub.Status(pb.StatusRequest(), timeout=5)
            assert (resp.version, resp.raftIndex) == ("3.5.0", 7)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Hash(pb.HashRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)
        await asyncio.sleep(0)
