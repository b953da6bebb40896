"""Unit tests of ranges, transactions and compaction in the sans-I/O client core: request
building, answer parsing and the error mapping; no sockets, a virtual clock."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest

from kvstore.client import (
    Compacted,
    Compare,
    DeleteResult,
    FutureRevision,
    InvalidArgument,
    KeyValue,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    prefix_end,
)
from kvstore.client._core import Attempt, Call, ClientCore, RpcFailure
from kvstore.client._mvcc_ops import compact_op, range_op, txn_op
from kvstore.client.ranges import key_range, range_request
from kvstore.client.txn import txn_request
from kvstore.etcdpb import kv_pb2 as mvccpb
from kvstore.etcdpb import rpc_pb2
from kvstore.v1 import kv_pb2

A, B = "127.0.0.1:7001", "127.0.0.1:7002"
SC = grpc.StatusCode
SESSION = b"s" + (7).to_bytes(8, "big")
R = rpc_pb2.RangeRequest


def core() -> ClientCore:
    c = ClientCore([A, B], rng=random.Random(1))
    c.write_ids.adopt(SESSION)
    return c


def attempt(call: Call[Any]) -> Attempt:
    step = call.next_step(0.0)
    assert isinstance(step, Attempt), step
    return step


def header(revision: int) -> kv_pb2.ResponseHeader:
    return kv_pb2.ResponseHeader(node_id="n1", applied_index=40, revision=revision)


# --------------------------------------------------------------------------- ranges


def test_prefix_end_is_etcds() -> None:
    assert prefix_end(b"abc") == b"abd"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_key_ranges_follow_clientv3() -> None:
    assert key_range("k") == (b"k", b"")
    assert key_range("a", "c") == (b"a", b"c")
    assert key_range("a/", prefix=True) == (b"a/", b"a0")
    assert key_range("", prefix=True) == (b"\0", b"\0")  # every key
    assert key_range("m", from_key=True) == (b"m", b"\0")
    assert key_range("", from_key=True) == (b"\0", b"\0")
    with pytest.raises(ValueError, match="at most one"):
        key_range("a", "b", prefix=True)


def test_range_request_options() -> None:
    req = range_request("a", prefix=True, limit=3, revision=9, sort_order="DESCEND",
                        sort_target="modify", keys_only=True, count_only=True)
    assert (req.key, req.range_end, req.limit, req.revision) == (b"a", b"b", 3, 9)
    assert (req.sort_order, req.sort_target) == (R.DESCEND, R.MOD)
    assert req.keys_only and req.count_only
    assert range_request("k").sort_order == R.NONE
    for bad in ({"limit": -1}, {"revision": -1}, {"sort_order": "up"},
                {"sort_target": "size"}):
        with pytest.raises(ValueError):
            range_request("k", **bad)


def test_range_is_a_leader_read_and_parses_kvs_and_header() -> None:
    c = core()
    call = c.start(range_op(c, range_request("a", prefix=True)), now=0.0)
    assert call.write_id is None
    assert call.method == "Range"
    assert call.request.range.range_end == b"b" and not call.request.stale
    kv = mvccpb.KeyValue(key=b"a1", value=b"x", create_revision=2, mod_revision=5,
                         version=3)
    response = kv_pb2.RangeResponse(
        header=header(12), result=rpc_pb2.RangeResponse(kvs=[kv], more=True, count=4))
    result = call.on_success(attempt(call).endpoint, response)
    assert result == RangeResult((KeyValue(b"a1", b"x", 2, 5, 3),), True, 4, 12, "n1", 40)


def test_stale_range_is_pinned_to_the_first_endpoint() -> None:
    c = core()
    call = c.start(range_op(c, range_request("a"), stale=True), now=0.0)
    assert call.request.stale
    assert attempt(call).endpoint == A


@pytest.mark.parametrize(("details", "error"), [
    ("mvcc: required revision has been compacted", Compacted),
    ("mvcc: required revision is a future revision", FutureRevision),
])
def test_out_of_range_is_raised_at_once(details: str, error: type) -> None:
    c = core()
    call = c.start(range_op(c, range_request("k", revision=3)), now=0.0)
    attempt(call)
    err = call.on_failure(A, RpcFailure(SC.OUT_OF_RANGE, details), 0.0)
    assert isinstance(err, error) and not err.maybe_applied
    assert details in str(err)


def test_get_carries_revision_and_reads_key_revisions() -> None:
    c = core()
    call = c.start(c.get("k", revision=4), now=0.0)
    assert call.request.revision == 4
    response = kv_pb2.GetResponse(header=header(9), found=True, value=b"v",
                                  create_revision=2, mod_revision=4, version=2)
    result = call.on_success(attempt(call).endpoint, response)
    assert (result.value, result.create_revision, result.mod_revision, result.version,
            result.revision) == (b"v", 2, 4, 2, 9)


# --------------------------------------------------------------------------- transactions


def test_compare_helpers_build_etcd_compares() -> None:
    C = rpc_pb2.Compare
    cmp = (Compare.mod_revision("k") < 5).proto
    assert (cmp.target, cmp.result, cmp.mod_revision, cmp.key) == (C.MOD, C.LESS, 5, b"k")
    cmp = (Compare.value("k") == "x").proto
    assert (cmp.target, cmp.result, cmp.value) == (C.VALUE, C.EQUAL, b"x")
    cmp = (Compare.version("p/", prefix=True) > 0).proto
    assert (cmp.key, cmp.range_end, cmp.result) == (b"p/", b"p0", C.GREATER)
    cmp = (Compare.create_revision("k") != 0).proto
    assert (cmp.target, cmp.result) == (C.CREATE, C.NOT_EQUAL)
    assert cmp.WhichOneof("target_union") == "create_revision"
    with pytest.raises(TypeError):
        Compare.version("k") == "1"  # noqa: B015 - the comparison is the test
    with pytest.raises(TypeError):
        bool(Compare.version("k"))


def test_op_helpers_and_raw_protos_build_one_request() -> None:
    raw = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"r", value=b"1"))
    req = txn_request([Compare.value("k") == b"x"],
                      [Op.put("k", "v", prev_kv=True), Op.get("p", prefix=True), raw],
                      [Op.delete("p", prefix=True, prev_kv=True),
                       Op.txn(success=[Op.get("k")])])
    assert [o.WhichOneof("request") for o in req.success] == [
        "request_put", "request_range", "request_put"]
    assert req.success[1].request_range.range_end == b"q"
    d = req.failure[0].request_delete_range
    assert (d.key, d.range_end, d.prev_kv) == (b"p", b"q", True)
    assert req.failure[1].request_txn.success[0].request_range.key == b"k"
    with pytest.raises(TypeError):
        txn_request(success=["put k v"])  # type: ignore[list-item]


def test_txn_is_a_session_write_and_parses_every_response_kind() -> None:
    c = core()
    call = c.start(txn_op([Compare.version("k") == 0], [Op.put("k", "v")]), now=0.0)
    assert call.method == "Txn"
    assert call.write_id is not None and call.write_id.client_id == SESSION
    assert call.request.write_id.seq == call.write_id.seq
    assert len(call.request.txn.compare) == 1
    kv = mvccpb.KeyValue(key=b"k", value=b"old", create_revision=2, mod_revision=3, version=1)
    inner = rpc_pb2.TxnResponse(succeeded=False, responses=[rpc_pb2.ResponseOp(
        response_delete_range=rpc_pb2.DeleteRangeResponse(deleted=0))])
    result_proto = rpc_pb2.TxnResponse(succeeded=True, responses=[
        rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse(prev_kv=kv)),
        rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse()),
        rpc_pb2.ResponseOp(response_range=rpc_pb2.RangeResponse(kvs=[kv], count=1)),
        rpc_pb2.ResponseOp(response_delete_range=rpc_pb2.DeleteRangeResponse(
            deleted=1, prev_kvs=[kv])),
        rpc_pb2.ResponseOp(response_txn=inner),
    ])
    response = kv_pb2.TxnResponse(header=header(8), result=result_proto)
    result = call.on_success(attempt(call).endpoint, response)
    old = KeyValue(b"k", b"old", 2, 3, 1)
    assert result == TxnResult(True, (
        PutResult(old), PutResult(None), RangeResult((old,), False, 1, 8),
        DeleteResult(1, (old,)), TxnResult(False, (DeleteResult(0),), 8),
    ), 8, False, "n1", 40)


def test_retried_txn_keeps_its_write_id_and_reports_a_duplicate() -> None:
    c = core()
    call = c.start(txn_op(success=[Op.put("k", "v")]), now=0.0)
    first = call.request.write_id
    attempt(call)
    assert call.on_failure(A, RpcFailure(SC.UNAVAILABLE, "leadership lost"), 0.0) is None
    while not isinstance(step := call.next_step(0.0), Attempt):
        pass
    assert call.request.write_id == first
    response = kv_pb2.TxnResponse(header=header(8), duplicate=True,
                                  result=rpc_pb2.TxnResponse(succeeded=True))
    result = call.on_success(step.endpoint, response)
    assert result.duplicate and result.succeeded and result.responses == ()


def test_lease_not_found_is_not_a_session_expiry() -> None:
    c = core()
    call = c.start(txn_op(success=[Op.put("k", "v")]), now=0.0)
    attempt(call)
    err = call.on_failure(A, RpcFailure(SC.NOT_FOUND, "etcdserver: requested lease not found"),
                          0.0)
    assert isinstance(err, InvalidArgument) and not err.maybe_applied
    assert c.write_ids.client_id == SESSION  # the session is still good


def test_txn_under_nospace_is_refused_like_put() -> None:
    from kvstore.client import NoSpace

    c = core()
    call = c.start(txn_op(success=[Op.put("k", "v")]), now=0.0)
    attempt(call)
    err = call.on_failure(A, RpcFailure(SC.RESOURCE_EXHAUSTED,
                                        "etcdserver: mvcc: database space exceeded"), 0.0)
    assert isinstance(err, NoSpace)


# --------------------------------------------------------------------------- compaction


def test_compact_is_a_leader_call_without_write_id() -> None:
    c = core()
    call = c.start(compact_op(5, physical=True), now=0.0)
    assert call.write_id is None
    assert (call.request.revision, call.request.physical) == (5, True)
    assert call.on_success(attempt(call).endpoint, kv_pb2.CompactResponse(header=header(9))) == 9
    with pytest.raises(ValueError):
        compact_op(0)
