"""Both clients against in-process fake KV servers (grpc.aio on 127.0.0.1, port 0).

The fakes run on their own event loop in a background thread, so the blocking
KVClient (driven through asyncio.to_thread) and the AsyncKVClient see exactly the
same servers. Every test runs once per client kind.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

from kvstore.client import (
    AsyncKVClient,
    InvalidArgument,
    KVClient,
    NoSpace,
    NotLeader,
    SessionExpired,
    StaleWrite,
    Timeout,
    Unavailable,
)
from kvstore.v1 import kv_pb2, kv_pb2_grpc

pytestmark = pytest.mark.timeout(60)


class _OpAbort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, metadata: dict[str, str]) -> None:
        super().__init__(details)
        self.code, self.details, self.metadata = code, details, metadata


class _OpContext:
    """Stands in for the gRPC context while one op of a Batch runs."""

    async def abort(self, code: grpc.StatusCode, details: str,
                    trailing_metadata: Any = ()) -> None:
        raise _OpAbort(code, details, dict(trailing_metadata))


@dataclass
class FakeNode(kv_pb2_grpc.KVServicer):
    """A scriptable KV node.

    ``redirect_to`` set: answers every linearizable request with FAILED_PRECONDITION
    and the leader hint (stale gets are served locally). ``fail_next`` > 0: the
    next that many requests fail with UNAVAILABLE. ``hang``: never answers.
    """

    name: str
    address: str = ""
    redirect_to: tuple[str, str] | None = None
    fail_next: int = 0
    hang: bool = False
    refuse_stale: bool = False  # unlike the real server, redirect stale gets too
    forgot_write_ids: bool = False  # answer writes as if their session moved past them
    data: dict[bytes, bytes] = field(default_factory=dict)
    # Sessions registered here; a write naming another one is refused with NOT_FOUND, as
    # the real state machine refuses a write whose session was evicted.
    sessions: set[bytes] = field(default_factory=set)
    requests: list[tuple[str, Any]] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    # Raised alarms as (type, member); while NOSPACE is raised puts are refused, as the real
    # node refuses them.
    alarms: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str) -> list[Any]:
        with self.lock:
            return [r for m, r in self.requests if m == method]

    async def _enter(self, method: str, request: Any, context: Any, linearizable: bool) -> None:
        with self.lock:
            self.requests.append((method, request))
            fail = self.fail_next > 0
            if fail:
                self.fail_next -= 1
        if self.hang:
            await asyncio.Event().wait()
        if fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "fake: no quorum")
        if self.redirect_to is not None and (linearizable or self.refuse_stale):
            leader_id, leader_address = self.redirect_to
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"fake: not leader; try {leader_id}",
                trailing_metadata=(
                    ("kvstore-leader-id", leader_id),
                    ("kvstore-leader-address", leader_address),
                ),
            )
        is_write = "write_id" in request.DESCRIPTOR.fields_by_name
        if self.forgot_write_ids and is_write:
            await context.abort(grpc.StatusCode.ABORTED,
                                "write id older than its session remembers")
        if is_write and request.write_id.client_id not in self.sessions:
            await context.abort(grpc.StatusCode.NOT_FOUND, "fake: client session not found")
        key = getattr(request, "key", b"x")
        if not key or len(key) > 4096:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fake: key must be 1..4096 bytes")

    def _header(self) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(node_id=self.name, applied_index=len(self.requests))

    async def RegisterSession(  # noqa: N802
        self, request: Any, context: Any
    ) -> kv_pb2.RegisterSessionResponse:
        await self._enter("RegisterSession", request, context, True)
        client_id = b"s" + len(self.requests).to_bytes(8, "big")
        self.sessions.add(client_id)
        return kv_pb2.RegisterSessionResponse(header=self._header(), client_id=client_id)

    async def Put(self, request: Any, context: Any) -> kv_pb2.PutResponse:  # noqa: N802
        await self._enter("Put", request, context, True)
        if any(t == "NOSPACE" for t, _ in self.alarms):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "etcdserver: mvcc: database space exceeded")
        self.data[request.key] = request.value
        return kv_pb2.PutResponse(header=self._header())

    async def Get(self, request: Any, context: Any) -> kv_pb2.GetResponse:  # noqa: N802
        await self._enter("Get", request, context, not request.stale)
        value = self.data.get(request.key)
        return kv_pb2.GetResponse(
            header=self._header(), found=value is not None, value=value or b""
        )

    async def Delete(self, request: Any, context: Any) -> kv_pb2.DeleteResponse:  # noqa: N802
        await self._enter("Delete", request, context, True)
        existed = self.data.pop(request.key, None) is not None
        return kv_pb2.DeleteResponse(header=self._header(), existed=existed)

    async def CompareAndSwap(self, request: Any, context: Any) -> kv_pb2.CompareAndSwapResponse:  # noqa: N802
        await self._enter("CompareAndSwap", request, context, True)
        current = self.data.get(request.key)
        ok = current is None if request.expect_absent else current == request.expected
        if ok:
            self.data[request.key] = request.value
        return kv_pb2.CompareAndSwapResponse(header=self._header(), succeeded=ok)

    async def Alarm(self, request: Any, context: Any) -> kv_pb2.AlarmResponse:  # noqa: N802
        await self._enter("Alarm", request, context, True)
        if request.action == kv_pb2.AlarmRequest.DEACTIVATE:
            self.alarms = [(t, m) for t, m in self.alarms
                           if (request.type and t != request.type)
                           or (request.member and m != request.member)]
        return kv_pb2.AlarmResponse(header=self._header(), alarms=[
            kv_pb2.AlarmMember(type=t, member=m) for t, m in self.alarms])

    async def Batch(self, request: Any, context: Any) -> kv_pb2.BatchResponse:  # noqa: N802
        """Like the real node: each op gets the outcome its unary call would have had."""
        self.batch_sizes.append(len(request.ops))
        results = []
        for op in request.ops:
            kind = op.WhichOneof("op")
            method = {"put": self.Put, "get": self.Get, "delete": self.Delete,
                      "cas": self.CompareAndSwap}[kind]
            try:
                response = await method(getattr(op, kind), _OpContext())
            except _OpAbort as a:
                results.append(kv_pb2.OpResult(
                    code=a.code.value[0], message=a.details,
                    leader_id=a.metadata.get("kvstore-leader-id", ""),
                    leader_address=a.metadata.get("kvstore-leader-address", "")))
                continue
            result = kv_pb2.OpResult()
            getattr(result, kind).CopyFrom(response)
            results.append(result)
        return kv_pb2.BatchResponse(results=results)

    async def Status(self, request: Any, context: Any) -> kv_pb2.StatusResponse:  # noqa: N802
        await self._enter("Status", request, context, False)
        leader = self.redirect_to[0] if self.redirect_to else self.name
        role = "follower" if self.redirect_to else "leader"
        return kv_pb2.StatusResponse(
            id=self.name, address=self.address, role=role, leader_id=leader
        )


class FakeCluster:
    """Fake nodes served by grpc.aio on a private event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[grpc.aio.Server] = []

    def __enter__(self) -> FakeCluster:
        self.thread.start()
        return self

    def add(self, node: FakeNode) -> FakeNode:
        async def start() -> None:
            server = grpc.aio.server()
            kv_pb2_grpc.add_KVServicer_to_server(node, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            node.address = f"127.0.0.1:{port}"
            self.servers.append(server)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)
        return node

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for server in self.servers:
                await server.stop(grace=None)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


@pytest.fixture
def fakes() -> Iterator[tuple[FakeNode, FakeNode]]:
    """(follower, leader): the follower points every linearizable request at the leader."""
    with FakeCluster() as cluster:
        leader = cluster.add(FakeNode("n2"))
        follower = cluster.add(FakeNode("n1", redirect_to=("n2", leader.address)))
        yield follower, leader


def closed_port() -> str:
    """An address on 127.0.0.1 with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


class Client:
    """Drive KVClient (in a worker thread) or AsyncKVClient through one async interface."""

    def __init__(self, kind: str, endpoints: list[str], **kw: Any) -> None:
        self.kind = kind
        self.impl: Any = (KVClient if kind == "sync" else AsyncKVClient)(endpoints, **kw)

    async def call(self, method: str, *args: Any, **kw: Any) -> Any:
        fn = getattr(self.impl, method)
        if self.kind == "sync":
            return await asyncio.to_thread(fn, *args, **kw)
        return await fn(*args, **kw)

    async def close(self) -> None:
        if self.kind == "sync":
            self.impl.close()
        else:
            await self.impl.close()


@pytest.fixture(params=["sync", "async"])
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    made: list[Client] = []

    def make(endpoints: list[str], **kw: Any) -> Client:
        kw.setdefault("timeout", 5.0)
        client = Client(request.param, endpoints, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def write_ids(requests: list[Any]) -> set[tuple[bytes, int, int]]:
    return {(r.write_id.client_id, r.write_id.seq, r.write_id.lowest_pending_seq) for r in requests}


async def test_follows_leader_hint_and_retries_with_the_same_write_id(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    follower, leader = fakes
    client = make_client([follower.address])
    await client.call("put", "first", "1")  # opens the session
    leader.fail_next = 1  # the next request to reach the leader fails with UNAVAILABLE
    await client.call("put", "k", "v")
    on_follower = [r for r in follower.calls("Put") if r.key == b"k"]
    on_leader = [r for r in leader.calls("Put") if r.key == b"k"]
    assert len(on_follower) >= 1 and len(on_leader) == 2
    assert write_ids(on_follower + on_leader) == {(client.impl.client_id, 2, 2)}
    assert leader.data == {b"first": b"1", b"k": b"v"}
    # Later calls go straight to the leader it learned.
    before = len(follower.requests)
    assert await client.call("get", "k") == b"v"
    assert len(follower.requests) == before


async def test_first_write_registers_a_session_with_the_leader(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    follower, leader = fakes
    client = make_client([follower.address])
    assert client.impl.client_id is None
    await client.call("put", "k", "v")
    assert len(follower.calls("RegisterSession")) == 1  # redirected to the leader
    assert len(leader.calls("RegisterSession")) == 1
    assert leader.sessions == {client.impl.client_id}
    assert write_ids(leader.calls("Put")) == {(client.impl.client_id, 1, 1)}
    assert await client.call("delete", "k") is True
    assert len(leader.calls("RegisterSession")) == 1  # one session serves every write


async def test_alarms_are_listed_and_disarmed_on_the_leader(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    follower, leader = fakes
    leader.alarms = [("NOSPACE", "n2"), ("CORRUPT", "n3")]
    client = make_client([follower.address])
    assert await client.call("alarms") == [("NOSPACE", "n2"), ("CORRUPT", "n3")]
    with pytest.raises(NoSpace) as info:
        await client.call("put", "k", "v")
    assert not info.value.maybe_applied
    assert "database space exceeded" in str(info.value)
    assert await client.call("disarm", "NOSPACE") == [("CORRUPT", "n3")]
    await client.call("put", "k", "v")  # no NOSPACE alarm left: puts work again
    assert await client.call("disarm") == []
    assert follower.calls("Alarm") and len(leader.calls("Alarm")) == 3


async def test_write_after_eviction_registers_again_and_is_sent_once(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    _, leader = fakes
    client = make_client([leader.address])
    await client.call("put", "a", "1")
    first = client.impl.client_id
    leader.sessions.clear()  # the cluster evicted the session
    await client.call("put", "b", "2")  # refused, nothing applied: sent again transparently
    second = client.impl.client_id
    assert second is not None and second != first
    puts = [(r.key, r.write_id.client_id, r.write_id.seq) for r in leader.calls("Put")]
    assert puts == [(b"a", first, 1), (b"b", first, 2), (b"b", second, 3)]
    assert leader.data == {b"a": b"1", b"b": b"2"}


async def test_eviction_after_an_unsure_attempt_raises_session_expired(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    _, leader = fakes
    client = make_client([leader.address])
    await client.call("put", "a", "1")
    leader.sessions.clear()
    leader.fail_next = 1  # the first attempt may have been applied
    with pytest.raises(SessionExpired) as info:
        await client.call("put", "b", "2")
    assert info.value.maybe_applied
    assert len([r for r in leader.calls("Put") if r.key == b"b"]) == 2  # not retried further
    assert client.impl.client_id is None
    await client.call("put", "c", "3")  # the next write opens a new session
    assert client.impl.client_id in leader.sessions


async def test_write_ids_advance_and_lowest_pending_follows(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    _, leader = fakes
    client = make_client([leader.address])
    await client.call("put", "a", "1")
    assert await client.call("delete", "a") is True
    assert await client.call("delete", "a") is False
    assert await client.call("cas", "a", None, "2") is True
    assert await client.call("cas", "a", "wrong", "3") is False
    ids = [r.write_id for _, r in leader.requests if hasattr(r, "write_id")]
    assert [(w.seq, w.lowest_pending_seq) for w in ids] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]


async def test_invalid_argument_is_raised_without_retry(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    _, leader = fakes
    client = make_client([leader.address])
    with pytest.raises(InvalidArgument) as info:
        await client.call("put", "", "v")
    assert not info.value.maybe_applied
    assert len(leader.calls("Put")) == 1
    await client.call("put", "ok", "v")  # the client keeps working


async def test_stale_write_is_raised_at_once_without_retries(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    _, leader = fakes
    leader.forgot_write_ids = True
    client = make_client([leader.address], timeout=5.0)
    started = time.monotonic()
    with pytest.raises(StaleWrite) as info:
        await client.call("put", "k", "v")
    assert info.value.maybe_applied
    assert time.monotonic() - started < 2.0
    assert len(leader.calls("Put")) == 1
    assert await client.call("get", "k") is None  # reads are unaffected


async def test_unreachable_endpoint_fails_within_the_deadline(make_client: Any) -> None:
    client = make_client([closed_port()], timeout=0.6)
    started = time.monotonic()
    with pytest.raises((Unavailable, Timeout)) as info:
        await client.call("put", "k", "v")
    elapsed = time.monotonic() - started
    assert elapsed < 0.6 + 2.5, elapsed  # generous: the machine may be busy
    assert "127.0.0.1" in str(info.value)
    assert not info.value.maybe_applied  # nothing was ever connected to


async def test_hanging_server_times_out_within_the_deadline(make_client: Any) -> None:
    with FakeCluster() as cluster:
        node = cluster.add(FakeNode("n1", hang=True))
        client = make_client([node.address], timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Timeout) as info:
            await client.call("get", "k")
        assert time.monotonic() - started < 0.5 + 2.5
        assert node.address in str(info.value)
        await client.close()


async def test_stale_get_is_served_by_the_first_endpoint(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    follower, leader = fakes
    follower.data[b"k"] = b"old"
    client = make_client([follower.address, leader.address])
    result = await client.call("get_result", "k", stale=True)
    assert (result.value, result.node) == (b"old", "n1")
    assert leader.calls("Get") == []
    assert await client.call("get", "missing", stale=True) is None


async def test_stale_get_on_a_node_that_refuses_raises_not_leader(make_client: Any) -> None:
    with FakeCluster() as cluster:
        node = cluster.add(FakeNode("n1", redirect_to=("n2", "127.0.0.1:1"), refuse_stale=True))
        client = make_client([node.address])
        with pytest.raises(NotLeader) as info:
            await client.call("get", "k", stale=True)
        assert (info.value.leader_id, info.value.leader_address) == ("n2", "127.0.0.1:1")
        assert len(node.calls("Get")) == 1  # pinned: the hint is reported, not followed
        await client.close()


async def test_status_lists_every_endpoint_and_marks_unreachable_ones(
    fakes: tuple[FakeNode, FakeNode], make_client: Any
) -> None:
    follower, leader = fakes
    dead = closed_port()
    client = make_client([follower.address, leader.address, dead], timeout=2.0)
    nodes = await client.call("status")
    assert [(n.id, n.role, n.reachable) for n in nodes] == [
        ("n1", "follower", True),
        ("n2", "leader", True),
        (None, "down", False),
    ]
    assert nodes[2].address == dead
    assert set(nodes[0].to_json()) >= {
        "id",
        "address",
        "role",
        "term",
        "commit_index",
        "applied_index",
        "leader_id",
        "reachable",
    }


def test_sync_client_context_manager_closes_channels(fakes: tuple[FakeNode, FakeNode]) -> None:
    _, leader = fakes
    with KVClient([leader.address], timeout=5.0) as client:
        client.put(b"k", b"v")
        assert client.get(b"k") == b"v"
    with pytest.raises(RuntimeError):
        client.get("k")


async def test_async_client_coalesces_concurrent_calls_into_batches(
    fakes: tuple[FakeNode, FakeNode],
) -> None:
    _, leader = fakes
    async with AsyncKVClient([leader.address], timeout=5.0) as client:
        await asyncio.gather(*(client.put(f"k{i}", f"v{i}") for i in range(200)))
        values = await asyncio.gather(*(client.get(f"k{i}") for i in range(200)))
    assert values == [f"v{i}".encode() for i in range(200)]
    assert sum(leader.batch_sizes) == 400
    assert len(leader.batch_sizes) < 400  # concurrent calls shared RPCs
    assert max(leader.batch_sizes) > 1


async def test_async_client_without_coalescing_uses_unary_calls(
    fakes: tuple[FakeNode, FakeNode],
) -> None:
    _, leader = fakes
    async with AsyncKVClient([leader.address], timeout=5.0, coalesce=False) as client:
        await asyncio.gather(*(client.put(f"k{i}", "v") for i in range(20)))
    assert leader.batch_sizes == []
    assert len(leader.calls("Put")) == 20
