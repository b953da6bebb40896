"""kvstore clients: leader discovery, retries with stable write ids, one overall deadline.

    from kvstore.client import KVClient
    with KVClient(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"], timeout=10.0) as c:
        c.put("k", "v")
        assert c.get("k") == b"v"

Over TLS: ``KVClient(endpoints, tls=TLSConfig(ca="ca.crt", cert="client.crt",
key="client.key"))`` (see :mod:`kvstore.client.tls`).

:class:`KVClient` (blocking) and :class:`AsyncKVClient` (asyncio) are thin shells
over one sans-I/O core (``kvstore.client._core``), so they behave identically.

Ranges, revisions and transactions (etcd's data model)::

    c.range("config/", prefix=True, sort_order="descend", sort_target="modify")
    c.txn(compare=[Compare.mod_revision("k") == 5], success=[Op.put("k", "v")])
    c.compact(revision)
"""

from kvstore.client._core import (
    DEFAULT_TIMEOUT,
    GetResult,
    NodeStatus,
    WriteId,
    parse_endpoint,
    parse_endpoints,
)
from kvstore.client.aio import AsyncKVClient
from kvstore.client.errors import (
    Compacted,
    CorruptCluster,
    FutureRevision,
    InvalidArgument,
    KVError,
    NoSpace,
    NotLeader,
    SessionExpired,
    StaleWrite,
    Timeout,
    Unavailable,
)
from kvstore.client.ranges import KeyValue, RangeResult, prefix_end
from kvstore.client.sync import KVClient
from kvstore.client.tls import TLSConfig, TLSConfigError
from kvstore.client.txn import Compare, DeleteResult, Op, PutResult, TxnResult

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncKVClient",
    "Compacted",
    "Compare",
    "CorruptCluster",
    "DeleteResult",
    "FutureRevision",
    "GetResult",
    "InvalidArgument",
    "KVClient",
    "KVError",
    "KeyValue",
    "NoSpace",
    "NodeStatus",
    "NotLeader",
    "Op",
    "PutResult",
    "RangeResult",
    "SessionExpired",
    "StaleWrite",
    "TLSConfig",
    "TLSConfigError",
    "Timeout",
    "TxnResult",
    "Unavailable",
    "WriteId",
    "parse_endpoint",
    "parse_endpoints",
    "prefix_end",
]
