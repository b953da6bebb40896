"""Operations of etcd's data model (ranges, transactions, compaction) for the client core.

Kept beside kvstore.client._core rather than in it: they only describe requests and how to
read their answers (Operation objects); the core's retry, routing and session logic runs
them exactly as it runs put and get. Both shells call these with their ClientCore.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kvstore.client._core import ClientCore, Operation, _header_fields, _wid
from kvstore.client.ranges import RangeResult, range_result
from kvstore.client.txn import Compare, Op, TxnResult, txn_request, txn_result
from kvstore.etcdpb import rpc_pb2
from kvstore.v1 import kv_pb2


def range_op(
    core: ClientCore, request: rpc_pb2.RangeRequest, *, stale: bool = False,
    timeout: float | None = None,
) -> Operation[RangeResult]:
    """An etcd range read (build ``request`` with ranges.range_request); stale reads go
    to the first endpoint only, as stale gets do."""

    def parse(response: Any) -> RangeResult:
        node, applied = _header_fields(response)
        return range_result(response.result, response.header.revision, node, applied)

    return Operation(
        name="stale range" if stale else "range",
        method="Range",
        build=lambda _wid: kv_pb2.RangeRequest(range=request, stale=stale),
        parse=parse,
        pinned=core.router.configured[0] if stale else None,
        timeout=timeout,
    )


def txn_op(
    compare: Iterable[Compare | rpc_pb2.Compare] = (),
    success: Iterable[Op | rpc_pb2.RequestOp] = (),
    failure: Iterable[Op | rpc_pb2.RequestOp] = (),
    timeout: float | None = None,
) -> Operation[TxnResult]:
    """A transaction: a session write like put, so a retry is applied at most once."""
    request = txn_request(compare, success, failure)

    def parse(response: Any) -> TxnResult:
        node, applied = _header_fields(response)
        return txn_result(response.result, response.header.revision,
                          duplicate=bool(response.duplicate), node=node,
                          applied_index=applied)

    return Operation(
        name="txn",
        method="Txn",
        build=lambda wid: kv_pb2.TxnRequest(write_id=_wid(wid), txn=request),
        parse=parse,
        is_write=True,
        timeout=timeout,
    )


def compact_op(
    revision: int, *, physical: bool = False, timeout: float | None = None
) -> Operation[int]:
    """Forget history below ``revision``; the result is the store revision. Not a
    session write: compacting is idempotent in effect, but a retry of a compaction
    that was applied fails with Compacted (as etcd's clients see it too)."""
    if revision <= 0:
        raise ValueError("revision must be >= 1")
    return Operation(
        name="compact",
        method="Compact",
        build=lambda _wid: kv_pb2.CompactRequest(revision=revision, physical=physical),
        parse=lambda response: int(response.header.revision),
        timeout=timeout,
    )
