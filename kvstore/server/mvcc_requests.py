"""Checks and translations of etcd's KV requests, shared by the etcd API and kvstore's own.

Both services validate with these functions (so a bad request gets the same gRPC code and
etcd's message from either), send Put and DeleteRange as a Txn of one operation (the one
write path of the state machine, kvstore.state.kv_ops), and map the data model's refusals
to etcd's status codes. Pure functions: no I/O.
"""

from __future__ import annotations

from typing import TypeVar

import grpc

from kvstore.etcdpb import rpc_pb2
from kvstore.server.request_error import RequestError
from kvstore.state.leases import ERR_LEASE_EXISTS, ERR_LEASE_TTL_TOO_LARGE
from kvstore.state.mvcc import (
    ERR_COMPACTED,
    ERR_FUTURE_REV,
    ERR_KEY_NOT_FOUND,
    ERR_LEASE_NOT_FOUND,
    in_range,
)

T = TypeVar("T", rpc_pb2.PutResponse, rpc_pb2.DeleteRangeResponse)
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default

ERR_EMPTY_KEY = "etcdserver: key is not provided"
ERR_TOO_MANY_OPS = "etcdserver: too many operations in txn request"
ERR_DUPLICATE_KEY = "etcdserver: duplicate key given in txn request"
ERR_VALUE_PROVIDED = "etcdserver: value is provided"
ERR_LEASE_PROVIDED = "etcdserver: lease is provided"
ERR_TOO_LARGE = "etcdserver: request is too large"
ERR_INVALID_SORT = "etcdserver: invalid sort option"

_MVCC_CODES = {
    ERR_COMPACTED: grpc.StatusCode.OUT_OF_RANGE,
    ERR_FUTURE_REV: grpc.StatusCode.OUT_OF_RANGE,
    ERR_KEY_NOT_FOUND: grpc.StatusCode.INVALID_ARGUMENT,
    ERR_LEASE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ERR_LEASE_EXISTS: grpc.StatusCode.FAILED_PRECONDITION,
    ERR_LEASE_TTL_TOO_LARGE: grpc.StatusCode.OUT_OF_RANGE,
}


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def mvcc_status(message: str) -> RequestError:
    """The status etcd answers a data-model or lease refusal (MvccError, ApplyResult.error)
    with, in etcd's wire form: its mvcc errors get the "etcdserver: " prefix ("etcdserver:
    mvcc: required revision has been compacted"), which etcd clients match (clientv3's
    rpctypes.ErrCompacted). Both APIs answer the same text."""
    code = _MVCC_CODES.get(message, grpc.StatusCode.UNKNOWN)
    if message.startswith("mvcc: "):
        message = f"etcdserver: {message}"
    return RequestError(code, message)


def _check_key(key: bytes, max_key_bytes: int) -> None:
    if not key:
        raise _invalid(ERR_EMPTY_KEY)
    if len(key) > max_key_bytes:
        raise _invalid(f"etcdserver: key is too long ({len(key)} bytes; at most "
                       f"{max_key_bytes})")


def check_range(req: rpc_pb2.RangeRequest, max_key_bytes: int) -> None:
    _check_key(req.key, max_key_bytes)
    if req.sort_order not in rpc_pb2.RangeRequest.SortOrder.values():
        raise _invalid(ERR_INVALID_SORT)
    if req.sort_target not in rpc_pb2.RangeRequest.SortTarget.values():
        raise _invalid(ERR_INVALID_SORT)
    if req.limit < 0:
        raise _invalid("etcdserver: limit must not be negative")


def check_put(req: rpc_pb2.PutRequest, max_key_bytes: int, max_value_bytes: int) -> None:
    _check_key(req.key, max_key_bytes)
    if req.ignore_value and req.value:
        raise _invalid(ERR_VALUE_PROVIDED)
    if req.ignore_lease and req.lease:
        raise _invalid(ERR_LEASE_PROVIDED)
    if len(req.value) > max_value_bytes:
        raise _invalid(ERR_TOO_LARGE)


def check_delete_range(req: rpc_pb2.DeleteRangeRequest, max_key_bytes: int) -> None:
    _check_key(req.key, max_key_bytes)


def check_compact(req: rpc_pb2.CompactionRequest) -> None:
    if req.revision <= 0:
        raise _invalid("etcdserver: compaction revision must be positive")


def check_txn(req: rpc_pb2.TxnRequest, max_key_bytes: int, max_value_bytes: int,
              max_ops: int = MAX_TXN_OPS) -> None:
    """etcd's checks: op counts, every key, every nested request, and no key written twice
    on one branch (puts unique; no put inside a deleted range)."""
    _check_txn_shape(req, max_key_bytes, max_value_bytes, max_ops)
    for branch in (req.success, req.failure):
        _branch_writes(branch)


def _check_txn_shape(req: rpc_pb2.TxnRequest, max_key_bytes: int, max_value_bytes: int,
                     max_ops: int) -> None:
    if max(len(req.compare), len(req.success), len(req.failure)) > max_ops:
        raise _invalid(ERR_TOO_MANY_OPS)
    for cmp in req.compare:
        _check_key(cmp.key, max_key_bytes)
        if cmp.target not in rpc_pb2.Compare.CompareTarget.values() or \
                cmp.result not in rpc_pb2.Compare.CompareResult.values():
            raise _invalid("etcdserver: invalid compare")
    for op in [*req.success, *req.failure]:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            check_range(op.request_range, max_key_bytes)
        elif kind == "request_put":
            check_put(op.request_put, max_key_bytes, max_value_bytes)
        elif kind == "request_delete_range":
            check_delete_range(op.request_delete_range, max_key_bytes)
        elif kind == "request_txn":
            _check_txn_shape(op.request_txn, max_key_bytes, max_value_bytes, max_ops)
        else:
            raise _invalid("etcdserver: a txn operation has no request")


def _branch_writes(ops) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """(keys put, ranges deleted) by one branch, nested Txns included; raises on a key
    written twice."""
    puts: set[bytes] = set()
    dels: list[tuple[bytes, bytes]] = []
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            key = op.request_put.key
            if key in puts:
                raise _invalid(ERR_DUPLICATE_KEY)
            puts.add(key)
        elif kind == "request_delete_range":
            d = op.request_delete_range
            dels.append((d.key, d.range_end))
        elif kind == "request_txn":
            nested_puts: set[bytes] = set()
            for branch in (op.request_txn.success, op.request_txn.failure):
                p, d = _branch_writes(branch)
                if p & puts:
                    raise _invalid(ERR_DUPLICATE_KEY)
                nested_puts |= p
                dels.extend(d)
            puts |= nested_puts
    for key in puts:
        if any(in_range(key, start, end) for start, end in dels):
            raise _invalid(ERR_DUPLICATE_KEY)
    return puts, dels


def txn_of_put(req: rpc_pb2.PutRequest) -> rpc_pb2.TxnRequest:
    """The Txn a Put is applied as."""
    txn = rpc_pb2.TxnRequest()
    txn.success.add().request_put.CopyFrom(req)
    return txn


def txn_of_delete_range(req: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.TxnRequest:
    """The Txn a DeleteRange is applied as."""
    txn = rpc_pb2.TxnRequest()
    txn.success.add().request_delete_range.CopyFrom(req)
    return txn


def _only_response(resp: rpc_pb2.TxnResponse | None, field: str, cls: type[T]) -> T:
    """The answer of a one-operation Txn's operation, header cleared (empty for a
    de-duplicated retry, whose answers are not kept)."""
    out = cls()
    if resp is not None and resp.responses:
        out.CopyFrom(getattr(resp.responses[0], field))
        out.ClearField("header")
    return out


def put_response(resp: rpc_pb2.TxnResponse | None) -> rpc_pb2.PutResponse:
    """A Put's answer from its Txn's."""
    return _only_response(resp, "response_put", rpc_pb2.PutResponse)


def delete_range_response(resp: rpc_pb2.TxnResponse | None) -> rpc_pb2.DeleteRangeResponse:
    """A DeleteRange's answer from its Txn's."""
    return _only_response(resp, "response_delete_range", rpc_pb2.DeleteRangeResponse)
