"""Ranges, revisions, transactions and compaction through both kvstore clients, against a
real 3-node cluster on 127.0.0.1 (one cluster for the module; always stopped).

Each test works under its own key prefix, so the order the tests run in does not matter;
revisions are compared with each other, never with fixed numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from kvstore.client import (
    AsyncKVClient,
    Compacted,
    Compare,
    DeleteResult,
    FutureRevision,
    KVClient,
    Op,
    PutResult,
    RangeResult,
)
from kvstore.client._core import CHANNEL_OPTIONS
from kvstore.etcdpb import rpc_pb2
from kvstore.v1 import kv_pb2, kv_pb2_grpc
from tests.cli.cli_util import running_cluster
from tests.integration.cluster_util import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("mvcc-client")
    with running_cluster(tmp / "cluster", tmp) as c:
        yield c


@pytest.fixture
def client(cluster: Any) -> Iterator[KVClient]:
    with cluster.client() as c:
        yield c


def keys(result: RangeResult) -> list[bytes]:
    return [kv.key for kv in result.kvs]


def test_ranges_with_every_option(client: KVClient) -> None:
    for k, v in (("r/a", "1"), ("r/b", "22"), ("r/c", "3"), ("r0", "x")):
        client.put(k, v)
    client.put("r/a", "111")  # r/a: version 2, the newest mod_revision
    whole = client.range("r/", prefix=True)
    assert keys(whole) == [b"r/a", b"r/b", b"r/c"]
    assert (whole.count, whole.more) == (3, False)
    a, b, c = whole.kvs
    assert (a.value, a.version, b.version) == (b"111", 2, 1)
    assert b.create_revision < c.create_revision < a.mod_revision <= whole.revision
    assert a.create_revision < b.create_revision
    assert whole.node and whole.applied_index > 0

    limited = client.range("r/", prefix=True, limit=2)
    assert (keys(limited), limited.more, limited.count) == ([b"r/a", b"r/b"], True, 3)
    assert keys(client.range("r/", prefix=True, sort_order="descend")) == [
        b"r/c", b"r/b", b"r/a"]
    assert keys(client.range("r/", prefix=True, sort_target="modify",
                             sort_order="descend")) == [b"r/a", b"r/c", b"r/b"]
    assert keys(client.range("r/", prefix=True, sort_target="value")) == [
        b"r/a", b"r/b", b"r/c"]
    only_keys = client.range("r/", prefix=True, keys_only=True)
    assert keys(only_keys) == keys(whole) and {kv.value for kv in only_keys} == {b""}
    counted = client.range("r/", prefix=True, count_only=True)
    assert (counted.kvs, counted.count) == ((), 3)
    assert keys(client.range("r/b", from_key=True))[:3] == [b"r/b", b"r/c", b"r0"]
    assert keys(client.range("r/a", "r/c")) == [b"r/a", b"r/b"]
    # History: the range as it was before r/a's second write.
    before = client.range("r/", prefix=True, revision=a.mod_revision - 1)
    assert [kv.value for kv in before.kvs] == [b"1", b"22", b"3"]


def test_get_reports_revisions_and_reads_history(client: KVClient) -> None:
    client.put("g/k", "one")
    first = client.get_result("g/k")
    client.put("g/k", "two")
    second = client.get_result("g/k")
    assert (first.version, second.version) == (1, 2)
    assert first.create_revision == second.create_revision == first.mod_revision
    assert second.mod_revision > first.mod_revision and second.revision >= second.mod_revision
    assert client.get("g/k", revision=first.mod_revision) == b"one"
    assert client.get("g/k") == b"two"
    missing = client.get_result("g/missing")
    assert (missing.found, missing.value, missing.mod_revision) == (False, None, 0)


def test_txn_branches_responses_and_one_revision(client: KVClient) -> None:
    client.put("t/k", "v1")
    kv = client.range("t/k").kvs[0]
    result = client.txn(
        compare=[Compare.mod_revision("t/k") == kv.mod_revision, Compare.value("t/k") == "v1"],
        success=[Op.put("t/k", "v2", prev_kv=True), Op.put("t/other", "o"),
                 Op.get("t/", prefix=True)],
        failure=[Op.get("t/k")],
    )
    assert result.succeeded and not result.duplicate
    put, _, got = result.responses
    assert isinstance(put, PutResult) and put.prev_kv is not None
    assert put.prev_kv.value == b"v1"
    assert isinstance(got, RangeResult)
    assert [(k.key, k.value) for k in got.kvs] == [(b"t/k", b"v2"), (b"t/other", b"o")]
    # The whole txn is one revision: both keys carry it.
    assert {k.mod_revision for k in got.kvs} == {result.revision}

    again = client.txn(compare=[Compare.mod_revision("t/k") == kv.mod_revision],
                       success=[Op.put("t/k", "never")], failure=[Op.get("t/k")])
    assert not again.succeeded
    assert [k.value for k in again.responses[0].kvs] == [b"v2"]
    assert again.revision == result.revision  # nothing changed

    deleted = client.txn(success=[Op.delete("t/", prefix=True, prev_kv=True)])
    gone = deleted.responses[0]
    assert isinstance(gone, DeleteResult) and gone.deleted == 2
    assert sorted(k.key for k in gone.prev_kvs) == [b"t/k", b"t/other"]
    assert client.range("t/", prefix=True).count == 0


def test_txn_with_a_reused_write_id_is_applied_once(cluster: Any, client: KVClient) -> None:
    """A retry (same write id) of an applied txn is answered as a duplicate, not applied."""
    client.put("x/n", "0")
    leader = cluster.address(cluster.leader())
    with grpc.insecure_channel(leader, options=CHANNEL_OPTIONS) as channel:
        stub = kv_pb2_grpc.KVStub(channel)
        session = stub.RegisterSession(kv_pb2.RegisterSessionRequest(), timeout=10).client_id
        txn = rpc_pb2.TxnRequest(success=[Op.put("x/n", "1").proto,
                                          Op.get("x/n").proto])
        request = kv_pb2.TxnRequest(
            write_id=kv_pb2.WriteId(client_id=session, seq=1, lowest_pending_seq=1), txn=txn)
        first = stub.Txn(request, timeout=10)
        retry = stub.Txn(request, timeout=10)
    assert first.result.succeeded and not first.duplicate and len(first.result.responses) == 2
    assert retry.duplicate and retry.result.succeeded and not retry.result.responses
    assert client.get_result("x/n").mod_revision == first.header.revision


def test_compaction_and_revision_errors(client: KVClient) -> None:
    client.put("c/k", "old")
    old = client.get_result("c/k").mod_revision
    client.put("c/k", "new")
    current = client.get_result("c/k").revision
    with pytest.raises(FutureRevision):
        client.range("c/k", revision=current + 1000)
    assert client.compact(current) >= current
    with pytest.raises(Compacted) as err:
        client.get("c/k", revision=old)
    assert "compacted" in str(err.value) and not err.value.maybe_applied
    with pytest.raises(Compacted):
        client.compact(old)
    assert client.get("c/k", revision=current) == b"new"


def test_stale_range_on_a_follower_catches_up(cluster: Any) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.ids if n != leader)
    with cluster.client() as c:
        c.put("s/k", "v")
        revision = c.get_result("s/k").mod_revision
    with KVClient([cluster.address(follower)], timeout=5.0, tls=cluster.tls()) as f:
        result = wait_until(lambda: (r := f.range("s/", prefix=True, stale=True)).count and r,
                            10.0, "the follower to apply the put")
        assert result.node == follower and result.kvs[0].mod_revision == revision


async def test_async_client_batches_ranges_and_txns(cluster: Any) -> None:
    """Concurrent calls of an AsyncKVClient travel in Batch RPCs, Range and Txn included."""
    async with AsyncKVClient(cluster.endpoints, timeout=10.0, tls=cluster.tls()) as ac:
        await ac.put("a/seed", "0")
        txns = [ac.txn(compare=[Compare.version(f"a/{i}") == 0],
                       success=[Op.put(f"a/{i}", str(i))]) for i in range(20)]
        results = await asyncio.gather(*txns)
        assert all(r.succeeded for r in results)
        assert len({r.revision for r in results}) == 20  # one revision each
        ranges = await asyncio.gather(*(ac.range(f"a/{i}") for i in range(20)))
        assert [r.kvs[0].value for r in ranges] == [str(i).encode() for i in range(20)]
        everything = await ac.range("a/", prefix=True, count_only=True)
        assert everything.count == 21
        again = await ac.txn(compare=[Compare.version("a/3") == 0], success=[Op.put("a/3", "x")],
                             failure=[Op.get("a/3")])
        assert not again.succeeded and again.responses[0].kvs[0].value == b"3"
        assert (await ac.get_result("a/3")).version == 1
        assert await ac.compact(again.revision) >= again.revision
