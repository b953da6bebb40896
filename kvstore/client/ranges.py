"""Ranges and revisions in the client: building etcd RangeRequests, reading their answers.

The native KV service carries etcd's own RangeRequest/RangeResponse (kvstore.etcdpb), so the
key-range conventions are etcd's, and a request built here means exactly what it would mean
to etcd: ``range_end`` empty = the single key ``key``; ``range_end`` = ``prefix_end(key)``
= every key starting with ``key``; ``range_end`` = ``b"\\0"`` = every key >= ``key``. The
helpers mirror clientv3's WithPrefix/WithFromKey (an empty key with a prefix or from-key
means "every key"), so the CLI and Python callers get etcdctl's behaviour without knowing
the byte tricks.

Pure functions and frozen dataclasses only: the sync and async clients, the txn helpers and
the CLI all share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from kvstore.etcdpb import rpc_pb2

KeyLike = bytes | str

_ORDERS = {
    "none": rpc_pb2.RangeRequest.NONE,
    "ascend": rpc_pb2.RangeRequest.ASCEND,
    "descend": rpc_pb2.RangeRequest.DESCEND,
}
# etcdctl's --sort-by names (CREATE, MODIFY, ...) and the proto's names (CREATE, MOD) both.
_TARGETS = {
    "key": rpc_pb2.RangeRequest.KEY,
    "version": rpc_pb2.RangeRequest.VERSION,
    "create": rpc_pb2.RangeRequest.CREATE,
    "create_revision": rpc_pb2.RangeRequest.CREATE,
    "mod": rpc_pb2.RangeRequest.MOD,
    "modify": rpc_pb2.RangeRequest.MOD,
    "mod_revision": rpc_pb2.RangeRequest.MOD,
    "value": rpc_pb2.RangeRequest.VALUE,
}
SORT_ORDERS = tuple(_ORDERS)
SORT_TARGETS = ("key", "version", "create", "modify", "value")


def to_bytes(value: KeyLike, what: str) -> bytes:
    """bytes as they are, str as UTF-8; anything else is the caller's bug (TypeError)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix`` (etcd's
    GetPrefixRangeEnd): the prefix with its last byte below 0xff incremented and the rest
    dropped; ``b"\\0"`` (no upper bound) when every byte is 0xff or the prefix is empty."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def key_range(
    key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False,
    from_key: bool = False,
) -> tuple[bytes, bytes]:
    """(key, range_end) for a single key, an explicit range, a prefix or a from-key scan.

    As clientv3: an empty key with ``prefix`` or ``from_key`` means every key (key
    ``b"\\0"``, range_end ``b"\\0"``). Raises ValueError when the options contradict each
    other, since etcd would silently pick one.
    """
    k = to_bytes(key, "key")
    chosen = sum((range_end is not None, prefix, from_key))
    if chosen > 1:
        raise ValueError("give at most one of range_end, prefix and from_key")
    if prefix:
        return (k, prefix_end(k)) if k else (b"\0", b"\0")
    if from_key:
        return (k or b"\0"), b"\0"
    return k, b"" if range_end is None else to_bytes(range_end, "range_end")


def sort_order_of(order: str | int | None) -> int:
    """etcd's SortOrder from "ascend"/"descend"/"none" (any case) or the enum value."""
    if order is None:
        return rpc_pb2.RangeRequest.NONE
    if isinstance(order, int):
        return order
    try:
        return _ORDERS[order.lower()]
    except KeyError:
        raise ValueError(f"unknown sort order {order!r}; expected one of "
                         f"{', '.join(SORT_ORDERS)}") from None


def sort_target_of(target: str | int | None) -> int:
    """etcd's SortTarget from "key"/"version"/"create"/"modify"/"value" (any case)."""
    if target is None:
        return rpc_pb2.RangeRequest.KEY
    if isinstance(target, int):
        return target
    try:
        return _TARGETS[target.lower()]
    except KeyError:
        raise ValueError(f"unknown sort target {target!r}; expected one of "
                         f"{', '.join(SORT_TARGETS)}") from None


class RangeOptions(TypedDict, total=False):
    """The keyword options of a range read (``KVClient.range``, ``Op.get``)."""

    prefix: bool
    from_key: bool
    limit: int
    revision: int
    sort_order: str | int | None
    sort_target: str | int | None
    keys_only: bool
    count_only: bool


def range_request(
    key: KeyLike,
    range_end: KeyLike | None = None,
    *,
    prefix: bool = False,
    from_key: bool = False,
    limit: int = 0,
    revision: int = 0,
    sort_order: str | int | None = None,
    sort_target: str | int | None = None,
    keys_only: bool = False,
    count_only: bool = False,
) -> rpc_pb2.RangeRequest:
    """An etcd RangeRequest; validated here only where a mistake would otherwise be a
    confusing server answer (negative limit or revision)."""
    if limit < 0:
        raise ValueError("limit must be >= 0 (0: no limit)")
    if revision < 0:
        raise ValueError("revision must be >= 0 (0: the latest)")
    k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
    # (A sort target without an order sorts ascending: the server's rule, as etcd's.)
    return rpc_pb2.RangeRequest(
        key=k, range_end=end, limit=limit, revision=revision,
        sort_order=sort_order_of(sort_order), sort_target=sort_target_of(sort_target),
        keys_only=keys_only, count_only=count_only,
    )


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as the store holds it at the read's revision (etcd's mvccpb.KeyValue)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @classmethod
    def from_proto(cls, kv: Any) -> KeyValue:
        return cls(bytes(kv.key), bytes(kv.value), kv.create_revision, kv.mod_revision,
                   kv.version, kv.lease)


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A range read: the keys (``kvs``, empty with count_only), whether a limit cut it short
    (``more``), how many keys the range holds (``count``, regardless of limit), the store
    revision it was read at, and which node answered at what applied index."""

    kvs: tuple[KeyValue, ...]
    more: bool
    count: int
    revision: int
    node: str = ""
    applied_index: int = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.kvs)

    def __len__(self) -> int:
        return len(self.kvs)


def range_result(response: Any, revision: int, node: str = "",
                 applied_index: int = 0) -> RangeResult:
    """A RangeResult from an etcd RangeResponse and the header's revision and node."""
    return RangeResult(tuple(KeyValue.from_proto(kv) for kv in response.kvs),
                       bool(response.more), int(response.count), revision, node,
                       applied_index)
