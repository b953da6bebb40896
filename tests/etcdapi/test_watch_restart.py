"""A watch on a follower across the follower's kill -9 and restart: the client re-watches
on the same member from its last seen revision + 1 and, over the three watch streams,
sees every write to its prefix exactly once, in order (the keys' history)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from kvstore.etcdapi.methods import KV, WATCH, stub
from kvstore.etcdpb import rpc_pb2 as pb
from tests.etcdapi.etcdctl_util import ETCDCTL, NO_ETCDCTL
from tests.integration.cluster_util import wait_until

pytestmark = pytest.mark.integration

PREFIX = b"wr/"


async def _requests(start: int, stop: asyncio.Event) -> AsyncIterator[pb.WatchRequest]:
    yield pb.WatchRequest(create_request=pb.WatchCreateRequest(
        key=PREFIX, range_end=b"wr0", start_revision=start))
    await stop.wait()


async def _collect(address: str, start: int, seen: list[tuple[bytes, bytes, int]],
                   want: int) -> None:
    """Watch from ``start`` on ``address`` until ``seen`` holds ``want`` events or the
    stream breaks."""
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(address) as channel:
        call = stub(channel, WATCH).Watch(_requests(start, stop), wait_for_ready=True)
        try:
            async for resp in call:
                assert not resp.canceled, resp
                seen += [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in resp.events]
                if len(seen) >= want:
                    return
        except grpc.aio.AioRpcError:
            return  # the member died under the stream
        finally:
            stop.set()
            call.cancel()


async def test_watch_on_a_follower_across_its_restart(start_cluster: Any) -> None:
    if ETCDCTL is None:
        pytest.skip(NO_ETCDCTL)
    cluster = start_cluster(3)
    leader = cluster.leader()
    victim = next(n for n in cluster.ids if n != leader)
    written: list[tuple[bytes, bytes, int]] = []
    seen: list[tuple[bytes, bytes, int]] = []
    async with grpc.aio.insecure_channel(cluster.address(leader)) as channel:
        kv = stub(channel, KV)

        async def put(i: int) -> None:
            key, value = PREFIX + str(i % 3).encode(), f"v{i}".encode()
            resp = await kv.Put(pb.PutRequest(key=key, value=value), timeout=30)
            written.append((key, value, resp.header.revision))

        start = (await kv.Range(pb.RangeRequest(key=b"x"), timeout=30)).header.revision + 1
        first = asyncio.create_task(_collect(cluster.address(victim), start, seen, 1 << 30))
        for i in range(10):
            await put(i)
        await asyncio.to_thread(wait_until, lambda: len(seen) >= 10, 30.0,
                                "the first ten events on the follower")
        await asyncio.to_thread(cluster.ok, "cluster", "stop", victim, "--kill")
        await asyncio.wait_for(first, 30)
        for i in range(10, 20):  # while the follower is down
            await put(i)
        await asyncio.to_thread(cluster.ok, "cluster", "start", victim)
        for i in range(20, 25):
            await put(i)
        resume = seen[-1][2] + 1
        second = asyncio.create_task(_collect(cluster.address(victim), resume, seen, 30))
        for i in range(25, 30):
            await put(i)
        await asyncio.wait_for(second, 60)  # ends once all 30 came (or the stream broke)
    assert resume <= written[10][2]  # the restarted member replayed what it missed
    assert seen == written
