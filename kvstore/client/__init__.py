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

Watches, leases, locks and elections (etcd's Watch and Lease services and its concurrency
recipes; see :mod:`kvstore.client.watch`, :mod:`~kvstore.client.leases`,
:mod:`~kvstore.client.locks`, :mod:`~kvstore.client.election`)::

    with c.watch("config/", prefix=True) as events:
        for event in events: ...
    with c.lease(10) as lease:
        c.put("service/a", "up", lease=lease.id)
    with c.lock("jobs/nightly") as lock:
        do_work(fencing_token=lock.token)
    Election(c, "workers").campaign("worker-1")
"""

from kvstore.client._core import (
    DEFAULT_TIMEOUT,
    GetResult,
    NodeStatus,
    WriteId,
    parse_endpoint,
    parse_endpoints,
)
from kvstore.client._recipes import LockTimeout
from kvstore.client.aio import AsyncKVClient
from kvstore.client.election import AsyncElection, Election
from kvstore.client.errors import (
    Compacted,
    CorruptCluster,
    FutureRevision,
    InvalidArgument,
    KVError,
    LeaseExpired,
    LeaseNotFound,
    NoSpace,
    NotElected,
    NotLeader,
    SessionExpired,
    StaleWrite,
    Timeout,
    Unavailable,
)
from kvstore.client.etcd_face import LeaseGrant, LeaseInfo
from kvstore.client.leases import AsyncLease, Lease
from kvstore.client.locks import AsyncLock, Lock
from kvstore.client.membership import MemberInfo
from kvstore.client.ranges import KeyValue, RangeResult, prefix_end
from kvstore.client.sync import KVClient
from kvstore.client.tls import TLSConfig, TLSConfigError
from kvstore.client.txn import Compare, DeleteResult, Op, PutResult, TxnResult
from kvstore.client.watch import AsyncWatch, Watch, WatchEvent

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncElection",
    "AsyncKVClient",
    "AsyncLease",
    "AsyncLock",
    "AsyncWatch",
    "Compacted",
    "Compare",
    "CorruptCluster",
    "DeleteResult",
    "Election",
    "FutureRevision",
    "GetResult",
    "InvalidArgument",
    "KVClient",
    "KVError",
    "KeyValue",
    "Lease",
    "LeaseExpired",
    "LeaseGrant",
    "LeaseInfo",
    "LeaseNotFound",
    "Lock",
    "LockTimeout",
    "MemberInfo",
    "NoSpace",
    "NodeStatus",
    "NotElected",
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
    "Watch",
    "WatchEvent",
    "WriteId",
    "parse_endpoint",
    "parse_endpoints",
    "prefix_end",
]
