"""The floor server (bench/floor.py) answers the real kvstore clients, in process: no
cluster, one grpc.aio server on a loopback port. Why: when the client learned a new RPC
(RegisterSession) the no-op server did not, and every bench run lost its floor."""

from __future__ import annotations

import asyncio

import grpc.aio

from bench.floor import READ_VALUE, FloorKV, add_floor_services
from kvstore.client import AsyncKVClient, KVClient
from kvstore.client.membership import MEMBER_LIST_PATH
from kvstore.etcdpb import rpc_pb2 as etcd_pb
from kvstore.v1 import kv_pb2


def test_floor_implements_every_method_of_the_kv_service() -> None:
    service = kv_pb2.DESCRIPTOR.services_by_name["KV"]
    missing = [m.name for m in service.methods if m.name not in FloorKV.__dict__]
    assert missing == []


def _sync_calls(address: str) -> tuple[bytes | None, bytes | None]:
    with KVClient([address], timeout=5.0) as client:
        client.put(b"k", b"v")  # registers a session first
        client.put(b"k", b"v")
        return client.get(b"k"), client.get(b"k", stale=True)


async def test_real_clients_get_answers_from_the_floor() -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    add_floor_services(server, address)
    await server.start()
    try:
        # The blocking client in a thread: the server runs on this event loop.
        assert await asyncio.to_thread(_sync_calls, address) == (READ_VALUE, READ_VALUE)
        client = AsyncKVClient([address], timeout=5.0)
        try:
            await asyncio.gather(*(client.put(b"k%d" % i, b"v") for i in range(20)))
            assert await client.get(b"k") == READ_VALUE
        finally:
            await client.close()
        async with grpc.aio.insecure_channel(address) as channel:
            member_list = channel.unary_unary(
                MEMBER_LIST_PATH,
                request_serializer=etcd_pb.MemberListRequest.SerializeToString,
                response_deserializer=etcd_pb.MemberListResponse.FromString)
            members = (await member_list(etcd_pb.MemberListRequest(), timeout=5.0)).members
            assert [list(m.clientURLs) for m in members] == [[f"http://{address}"]]
    finally:
        await server.stop(grace=None)
