"""The aetcd drivers (bench/aetcd_drivers.py) against two in-process fake etcd KV
services, a leader and a follower: what goes where, and the timed series. No cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from bench.drivers import TargetSpec, async_driver, sync_driver
from kvstore.etcdpb import kv_pb2 as mvcc_pb
from kvstore.etcdpb import rpc_pb2 as pb

pytest.importorskip("aetcd", reason="aetcd is not installed (pip install -e '.[bench]')")


class FakeKV:
    """etcdserverpb.KV Put and Range on a loopback port; records (method, key, serializable)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, bool]] = []
        self.server = grpc.aio.server()
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"

        async def put(request: pb.PutRequest, context: Any) -> pb.PutResponse:
            self.calls.append(("Put", request.key, False))
            return pb.PutResponse()

        async def range_(request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
            self.calls.append(("Range", request.key, request.serializable))
            kv = mvcc_pb.KeyValue(key=request.key, value=b"v")
            return pb.RangeResponse(kvs=[kv], count=1)

        def unary(fn: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request.FromString,
                response_serializer=response.SerializeToString)

        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "etcdserverpb.KV", {"Put": unary(put, pb.PutRequest, pb.PutResponse),
                                "Range": unary(range_, pb.RangeRequest, pb.RangeResponse)}),))


@pytest.fixture
async def fake_etcd() -> AsyncIterator[tuple[FakeKV, FakeKV, TargetSpec]]:
    leader, follower = FakeKV(), FakeKV()
    for kv in (leader, follower):
        await kv.server.start()
    spec = TargetSpec(name="etcd-2-aetcd", kind="etcd", nodes=2, leader=leader.address,
                      endpoints=(leader.address, follower.address),
                      followers=(follower.address,), client="aetcd")
    yield leader, follower, spec
    for kv in (leader, follower):
        await kv.server.stop(grace=None)


def _blocking_calls(spec: TargetSpec) -> list[float]:
    driver = sync_driver(spec)
    try:
        driver.put(b"a", b"1")
        driver.get(b"a")
        driver.stale_get(b"a", 0)
        return driver.timed("put", 3, lambda i: b"t%d" % i, b"v", lambda done: None)
    finally:
        driver.close()


async def test_blocking_driver_routes_like_the_raw_etcd_driver(fake_etcd) -> None:  # noqa: ANN001
    leader, follower, spec = fake_etcd
    latencies = await asyncio.to_thread(_blocking_calls, spec)
    assert len(latencies) == 3 and all(x >= 0 for x in latencies)
    assert leader.calls == [("Put", b"a", False), ("Range", b"a", False),
                            ("Put", b"t0", False), ("Put", b"t1", False), ("Put", b"t2", False)]
    assert follower.calls == [("Range", b"a", True)]  # a serializable get, on the follower


async def test_asyncio_driver_in_the_running_loop(fake_etcd) -> None:  # noqa: ANN001
    leader, follower, spec = fake_etcd
    driver = async_driver(spec)
    try:
        await asyncio.gather(*(driver.put(b"k%d" % i, b"v") for i in range(5)))
        await driver.stale_get(b"k0", 7)
    finally:
        await driver.close()
    assert sorted(c[1] for c in leader.calls) == [b"k%d" % i for i in range(5)]
    assert follower.calls == [("Range", b"k0", True)]
