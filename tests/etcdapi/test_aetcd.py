"""aetcd (a maintained asyncio etcd v3 client from PyPI) against kvstore.

aetcd registers its own copy of etcd's protos (package etcdserverpb); kvstore.etcdpb is
in package kvstore.etcdpb, so both load in one process (checked here too)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.cluster_util import Cluster

aetcd = pytest.importorskip("aetcd", reason="aetcd is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.integration


def test_both_proto_sets_load_in_one_process() -> None:
    from aetcd import rpc

    from kvstore.etcdpb import rpc_pb2

    assert rpc.RangeRequest.DESCRIPTOR.full_name == "etcdserverpb.RangeRequest"
    assert rpc_pb2.RangeRequest.DESCRIPTOR.full_name == "kvstore.etcdpb.RangeRequest"
    wire = rpc.PutRequest(key=b"k", value=b"v", prev_kv=True).SerializeToString()
    assert rpc_pb2.PutRequest.FromString(wire).prev_kv


async def test_aetcd_put_get_range_delete_txn(shared_cluster: Cluster) -> None:
    leader = shared_cluster.leader()
    # Every endpoint, the followers included (they forward writes to the leader).
    for node in shared_cluster.ids:
        host, port = shared_cluster.address(node).rsplit(":", 1)
        async with aetcd.Client(host=host, port=int(port), timeout=10) as client:
            p = f"aetcd/{node}/".encode()
            put = await client.put(p + b"a", b"1")
            rev = put.header.revision
            assert (await client.put(p + b"b", b"2")).header.revision == rev + 1
            got = await client.get(p + b"a")
            assert got is not None and got.value == b"1"
            assert (got.create_revision, got.mod_revision, got.version) == (rev, rev, 1)
            prev = await client.put(p + b"a", b"1b", prev_kv=True)
            assert prev.prev_kv is not None and prev.prev_kv.value == b"1"
            assert [kv.key for kv in await client.get_prefix(p)] == [p + b"a", p + b"b"]
            desc = await client.get_prefix(p, sort_order="descend", sort_target="value")
            assert [kv.value for kv in desc] == [b"2", b"1b"]
            ranged = await client.get_range(p + b"a", p + b"b")
            assert [kv.key for kv in ranged] == [p + b"a"]
            t = client.transactions
            ok, responses = await client.transaction(
                compare=[t.value(p + b"a") == b"1b", t.version(p + b"a") == 2],
                success=[t.put(p + b"c", b"3"), t.get(p + b"c")],
                failure=[t.delete(p + b"a")])
            assert ok
            assert [value for value, _kv in responses[1]] == [b"3"]
            ok, _ = await client.transaction(compare=[t.create(p + b"a") == 1],
                                             success=[], failure=[t.put(p + b"d", b"4")])
            assert not ok and (await client.get(p + b"d")).value == b"4"
            deleted = await client.delete(p + b"d", prev_kv=True)
            assert deleted is not None and deleted.deleted == 1
            assert (await client.delete_prefix(p)).deleted == 3
            assert await client.get(p + b"a") is None
            status = await client.status()
            assert status.version.startswith("3.5.")
            members = [m async for m in client.members()]
            assert sorted(m.name for m in members) == shared_cluster.ids
    assert leader


async def _next_events(watch: Any, count: int) -> list[Any]:
    out: list[Any] = []
    iterator = watch.__aiter__()
    while len(out) < count:
        out.append(await asyncio.wait_for(iterator.__anext__(), 30))
    return out


async def test_aetcd_watch_prefix_from_a_revision_on_every_member(
        shared_cluster: Cluster) -> None:
    for node in shared_cluster.ids:
        host, port = shared_cluster.address(node).rsplit(":", 1)
        async with aetcd.Client(host=host, port=int(port), timeout=10) as client:
            p = f"aw/{node}/".encode()
            first = (await client.put(p + b"a", b"1")).header.revision
            await client.put(p + b"b", b"2")
            await client.delete(p + b"a")
            watch = await client.watch_prefix(p, start_revision=first, prev_kv=True)
            try:
                replay = await _next_events(watch, 3)
                await client.put(p + b"c", b"3")
                live = await _next_events(watch, 1)
            finally:
                await watch.cancel()
            evs = replay + live
            assert [(e.kind, e.kv.key, e.kv.mod_revision) for e in evs] == [
                ("PUT", p + b"a", first), ("PUT", p + b"b", first + 1),
                ("DELETE", p + b"a", first + 2), ("PUT", p + b"c", first + 3)]
            assert evs[2].prev_kv is not None and evs[2].prev_kv.value == b"1"


async def test_aetcd_lease_grant_refresh_revoke_through_a_follower(
        shared_cluster: Cluster) -> None:
    leader = shared_cluster.leader()
    follower = next(n for n in shared_cluster.ids if n != leader)
    host, port = shared_cluster.address(follower).rsplit(":", 1)
    async with aetcd.Client(host=host, port=int(port), timeout=10) as client:
        lease = await client.lease(600)
        assert lease.id > 0 and lease.ttl == 600
        fixed = await client.lease(600, lease_id=0x5EED)
        assert fixed.id == 0x5EED
        with pytest.raises(aetcd.exceptions.ClientError):  # etcd: lease already exists
            await client.lease(600, lease_id=0x5EED)
        await client.put(b"al/k", b"v", lease=lease.id)
        refreshed = await lease.refresh()  # one LeaseKeepAlive stream, one request
        assert (refreshed.ID, refreshed.TTL) == (lease.id, 600)
        assert 0 < await lease.remaining_ttl() <= 600
        assert await lease.granted_ttl() == 600
        assert await lease.keys() == [b"al/k"]
        await lease.revoke()
        await fixed.revoke()
        assert await client.get(b"al/k") is None
        assert await lease.remaining_ttl() == -1

