"""Building transactions for ``KVClient.txn`` and reading their results.

A transaction is etcd's: if every compare holds, the ``success`` operations run, else the
``failure`` ones; all of it atomically, at one new store revision::

    from kvstore.client.txn import Compare, Op

    result = client.txn(
        compare=[Compare.mod_revision("config") == 7, Compare.value("lock") != b"held"],
        success=[Op.put("config", b"v2"), Op.get("config/", prefix=True)],
        failure=[Op.get("config")],
    )
    result.succeeded, result.responses, result.revision

Compares are written with Python's comparison operators on a target (``==``, ``!=``,
``<``, ``>``, as etcd's EQUAL, NOT_EQUAL, LESS, GREATER), which reads like etcdctl's
``mod("config") = "7"`` and cannot be mistaken for a bool: a target is not hashable and
is never truthy by accident (it builds a :class:`Compare`). Every helper produces the etcd
proto (kvstore.etcdpb), so raw ``rpc_pb2.Compare``/``RequestOp`` messages are accepted too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kvstore.client.ranges import (
    KeyLike,
    KeyValue,
    key_range,
    range_request,
    range_result,
    to_bytes,
)
from kvstore.etcdpb import rpc_pb2

_C = rpc_pb2.Compare


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction (an etcd Compare); build it with the class methods,
    e.g. ``Compare.version("k") > 0``."""

    proto: rpc_pb2.Compare

    @staticmethod
    def value(key: KeyLike, range_end: KeyLike | None = None, *,
              prefix: bool = False) -> _Target:
        """The key's value (bytes or str), e.g. ``Compare.value("k") == "v"``."""
        return _Target(_C.VALUE, "value", key, range_end, prefix)

    @staticmethod
    def version(key: KeyLike, range_end: KeyLike | None = None, *,
                prefix: bool = False) -> _Target:
        """Writes since the key's creation; 0 for a missing key (``== 0``: absent)."""
        return _Target(_C.VERSION, "version", key, range_end, prefix)

    @staticmethod
    def create_revision(key: KeyLike, range_end: KeyLike | None = None, *,
                        prefix: bool = False) -> _Target:
        """The revision that created the key; 0 for a missing key."""
        return _Target(_C.CREATE, "create_revision", key, range_end, prefix)

    @staticmethod
    def mod_revision(key: KeyLike, range_end: KeyLike | None = None, *,
                     prefix: bool = False) -> _Target:
        """The revision of the key's last change; 0 for a missing key."""
        return _Target(_C.MOD, "mod_revision", key, range_end, prefix)

    @staticmethod
    def lease(key: KeyLike, range_end: KeyLike | None = None, *,
              prefix: bool = False) -> _Target:
        """The key's lease id (0: none)."""
        return _Target(_C.LEASE, "lease", key, range_end, prefix)


class _Target:
    """The left side of a compare; a comparison operator turns it into a Compare."""

    __hash__ = None  # type: ignore[assignment]  # == builds a Compare, so no hashing

    def __init__(self, target: int, field: str, key: KeyLike, range_end: KeyLike | None,
                 prefix: bool) -> None:
        self._target = target
        self._field = field
        self._key, self._end = key_range(key, range_end, prefix=prefix)

    def _cmp(self, result: int, operand: Any) -> Compare:
        proto = _C(result=result, target=self._target, key=self._key, range_end=self._end)
        if self._field == "value":
            proto.value = to_bytes(operand, "compared value")
        elif isinstance(operand, bool) or not isinstance(operand, int):
            raise TypeError(f"{self._field} is compared with an int, not "
                            f"{type(operand).__name__}")
        else:
            setattr(proto, self._field, operand)
        return Compare(proto)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._cmp(_C.EQUAL, other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._cmp(_C.NOT_EQUAL, other)

    def __lt__(self, other: object) -> Compare:
        return self._cmp(_C.LESS, other)

    def __gt__(self, other: object) -> Compare:
        return self._cmp(_C.GREATER, other)

    def __bool__(self) -> bool:
        raise TypeError("a compare target is not a condition: compare it, e.g. "
                        "Compare.version(key) > 0")


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction (an etcd RequestOp)."""

    proto: rpc_pb2.RequestOp

    @staticmethod
    def put(key: KeyLike, value: KeyLike, *, prev_kv: bool = False, lease: int = 0) -> Op:
        """Set ``key`` to ``value`` (``prev_kv``: answer with the value it replaced;
        ``lease``: attach the key to that lease)."""
        req = rpc_pb2.PutRequest(key=to_bytes(key, "key"), value=to_bytes(value, "value"),
                                 prev_kv=prev_kv, lease=lease)
        return Op(rpc_pb2.RequestOp(request_put=req))

    @staticmethod
    def get(key: KeyLike, range_end: KeyLike | None = None, **options: Any) -> Op:
        """Read a key or range; takes :func:`kvstore.client.ranges.range_request`'s options
        (prefix, from_key, limit, revision, sort_order, sort_target, keys_only, count_only)."""
        req = range_request(key, range_end, **options)
        return Op(rpc_pb2.RequestOp(request_range=req))

    @staticmethod
    def delete(key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False,
               from_key: bool = False, prev_kv: bool = False) -> Op:
        """Delete a key or range (``prev_kv``: answer with the deleted keys)."""
        k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
        req = rpc_pb2.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)
        return Op(rpc_pb2.RequestOp(request_delete_range=req))

    @staticmethod
    def txn(compare: Iterable[Compare | rpc_pb2.Compare] = (),
            success: Iterable[Op | rpc_pb2.RequestOp] = (),
            failure: Iterable[Op | rpc_pb2.RequestOp] = ()) -> Op:
        """A nested transaction (its keys may not overlap the outer one's writes)."""
        return Op(rpc_pb2.RequestOp(request_txn=txn_request(compare, success, failure)))


def txn_request(compare: Iterable[Compare | rpc_pb2.Compare] = (),
                success: Iterable[Op | rpc_pb2.RequestOp] = (),
                failure: Iterable[Op | rpc_pb2.RequestOp] = ()) -> rpc_pb2.TxnRequest:
    """The etcd TxnRequest of helper objects or raw protos (copied, so the caller's protos
    are never aliased into a request that is retried)."""

    def unwrap(item: Any, kind: type, raw: type) -> Any:
        if isinstance(item, kind):
            return item.proto
        if isinstance(item, raw):
            return item
        raise TypeError(f"expected {kind.__name__} or {raw.__name__}, "
                        f"not {type(item).__name__}")

    return rpc_pb2.TxnRequest(
        compare=[unwrap(c, Compare, rpc_pb2.Compare) for c in compare],
        success=[unwrap(o, Op, rpc_pb2.RequestOp) for o in success],
        failure=[unwrap(o, Op, rpc_pb2.RequestOp) for o in failure],
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class PutResult:
    """A put inside a transaction; ``prev_kv`` when asked for and the key existed."""

    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """A delete inside a transaction: how many keys it removed (and them, with prev_kv)."""

    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome: which branch ran (``succeeded``), one result per operation
    of that branch (RangeResult, PutResult, DeleteResult or TxnResult), and the store
    revision after it (the txn's own revision if it changed anything).

    ``duplicate``: the call was retried after an attempt the cluster had already applied
    (e.g. across a failover). The cluster applies a write id once and remembers which
    branch it took, not what its operations answered, so a duplicate reports the right
    ``succeeded`` with no responses, and ``revision`` is the store's current one; read the
    keys again if the responses matter.
    """

    succeeded: bool
    responses: tuple[Any, ...]
    revision: int
    duplicate: bool = False
    node: str = ""
    applied_index: int = 0


def _prev(kv: Any, present: bool) -> KeyValue | None:
    return KeyValue.from_proto(kv) if present else None


def response_of(op: rpc_pb2.ResponseOp, revision: int) -> Any:
    """The result object of one etcd ResponseOp (ranges inside a txn read at ``revision``)."""
    kind = op.WhichOneof("response")
    if kind == "response_range":
        return range_result(op.response_range, revision)
    if kind == "response_put":
        put = op.response_put
        return PutResult(_prev(put.prev_kv, put.HasField("prev_kv")))
    if kind == "response_delete_range":
        d = op.response_delete_range
        return DeleteResult(int(d.deleted), tuple(KeyValue.from_proto(kv) for kv in d.prev_kvs))
    if kind == "response_txn":
        return txn_result(op.response_txn, revision)
    raise ValueError(f"empty response op in a txn answer: {op!r}")


def txn_result(result: rpc_pb2.TxnResponse, revision: int, *, duplicate: bool = False,
               node: str = "", applied_index: int = 0) -> TxnResult:
    return TxnResult(bool(result.succeeded),
                     tuple(response_of(r, revision) for r in result.responses),
                     revision, duplicate, node, applied_index)


__all__ = ["Compare", "DeleteResult", "Op", "PutResult", "TxnResult", "txn_request",
           "txn_result"]
