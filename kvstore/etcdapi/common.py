"""What the etcd services share: this node's etcd identity, response headers, waiting
for the runtime, and the mapping of runtime outcomes to etcd's gRPC errors.

Errors are etcd's (code and message), because etcd clients act on them: clientv3 retries
a read on UNAVAILABLE, and prints the message as is (etcdctl: "Error: etcdserver: no
leader"). A NotLeader from the runtime is NOT mapped here: the services catch it and
forward the request to the leader (forward.py), since etcd clients do not follow
kvstore's leader hints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from kvstore.etcdapi.members import MemberBook, cluster_id_of, member_id
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.raft.errors import NotLeader
from kvstore.server import mvcc_requests
from kvstore.server.kv_rules import KVRules
from kvstore.server.node import NodeDriver
from kvstore.server.outcomes import AlarmRefused, LeadershipLost
from kvstore.server.request_error import RequestError

T = TypeVar("T")

# A request without a deadline still gets an answer within this bound.
DEFAULT_WAIT_SECONDS = 30.0

ERR_NO_LEADER = "etcdserver: no leader"
ERR_LEADER_CHANGED = "etcdserver: leader changed"
ERR_TIMEOUT = "etcdserver: request timed out"


def unavailable(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, message)


class Store(Protocol):
    """The parts of the node store (LmdbNodeStore / MemoryNodeStore) the services use."""

    def range(self, req: pb.RangeRequest) -> tuple[pb.RangeResponse, int, int]: ...

    def revisions(self) -> tuple[int, int]: ...

    def hash_kv(self, revision: int) -> tuple[int, int, int]: ...

    def hash_all(self) -> int: ...

    def defragment(self) -> None: ...

    def size_bytes(self) -> int: ...

    def file_bytes(self) -> int: ...

    def alarms(self) -> list[Any]: ...

    def applied_index(self) -> int: ...


class EtcdNode:
    """One node as etcd's services see it."""

    def __init__(self, driver: NodeDriver, store: Store, cluster_id: str, book: MemberBook,
                 max_key_bytes: int, max_value_bytes: int) -> None:
        self.driver = driver
        self.store = store
        self.book = book
        self.node_id = book.node_id
        self.member_id = member_id(book.node_id)
        self.cluster_id = cluster_id_of(cluster_id)
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes

    def header(self, revision: int | None = None) -> pb.ResponseHeader:
        """etcd's header: ``revision`` is the store revision the answer reflects (default:
        the current one)."""
        if revision is None:
            revision = self.store.revisions()[0]
        return pb.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id,
                                 revision=revision, raft_term=self.driver.runtime.term)

    def check_local_read(self) -> None:
        """A serializable read is refused while this node is being rebuilt from the
        leader (its state is empty or partial), as a stale native read is."""
        if self.driver.runtime.resyncing:
            raise unavailable(f"etcdserver: member {self.node_id} is being rebuilt from "
                              "the leader (resync); ask another member")

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A store read in a worker thread: a Range may cover many keys (it counts every
        key in the range even with a limit), and the event loop must keep serving Raft
        meanwhile. LMDB read transactions are per thread (py-lmdb uses MDB_NOTLS)."""
        return await asyncio.to_thread(fn, *args)

    async def wait(self, fut: Awaitable[T], context: grpc.aio.ServicerContext) -> T:
        """The result of a proposal or ReadIndex future, within the call's deadline.
        NotLeader passes through (the caller forwards); everything else becomes etcd's
        error."""
        remaining = context.time_remaining()
        timeout = DEFAULT_WAIT_SECONDS if remaining is None else max(remaining, 0.0)
        try:
            return await asyncio.wait_for(fut, timeout)
        except NotLeader:
            raise
        except Exception as err:  # noqa: BLE001 - mapped to a status, or re-raised
            raise failure(err) from None


async def catch_up(node: EtcdNode, method: str, request: Any, response: Any,
                   timeout: float) -> None:
    """Wait until this member applied what the leader answered a relayed request with: the
    revision in its header, or for a Compact the compaction itself (it takes no revision).
    After `timeout` the answer is relayed anyway (it is committed)."""
    if method == "Compact":
        await node.driver.wait_for_revision(request.revision, timeout, compacted=True)
    elif response.header.revision:
        await node.driver.wait_for_revision(response.header.revision, timeout)


def failure(err: BaseException) -> RequestError:
    """etcd's status for a request the runtime failed with ``err``."""
    if isinstance(err, RequestError):
        return err
    if isinstance(err, NotLeader):
        return unavailable(ERR_LEADER_CHANGED if err.leader else ERR_NO_LEADER)
    if isinstance(err, LeadershipLost):
        return unavailable(ERR_LEADER_CHANGED)
    if isinstance(err, TimeoutError):
        return unavailable(ERR_TIMEOUT)
    if isinstance(err, AlarmRefused):
        return KVRules.alarm_refusal(err.alarm_type)
    raise err


def mvcc_failure(message: str) -> RequestError:
    """etcd's status for a data-model refusal (MvccError, ApplyResult.error), the same as
    kvstore's own API answers (mvcc_requests.mvcc_status)."""
    return mvcc_requests.mvcc_status(message)


async def abort(context: grpc.aio.ServicerContext, err: RequestError) -> None:
    """End the call with ``err``'s status (raises)."""
    await context.abort(err.code, err.message)
