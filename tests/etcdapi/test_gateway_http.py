"""The JSON gateway's HTTP layer in one process: serve_http on an asyncio server, proxying
to an in-process gRPC server with scripted etcd handlers, spoken to in raw HTTP/1.1.
No cluster: these pin the HTTP details (keep-alive, bodies, limits, error answers, stream
framing, a watch ending when its client goes away) that the cluster tests take for granted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from kvstore.etcdapi import gateway, gateway_json
from kvstore.etcdapi.gateway import GatewayBackend, serve_http
from kvstore.etcdapi.methods import KV, LEASE, WATCH, generic_handler
from kvstore.etcdpb import kv_pb2
from kvstore.etcdpb import rpc_pb2 as pb

DEADLINE = 10.0


@dataclass
class Fake:
    """What the scripted gRPC server saw, and the events a watch will send."""

    ranges: list[pb.RangeRequest] = field(default_factory=list)
    watch_events: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    watch_ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def range(self, req: pb.RangeRequest, ctx: grpc.aio.ServicerContext
                    ) -> pb.RangeResponse:
        self.ranges.append(req)
        if req.key == b"missing-lease":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
        if req.key == b"no-leader":
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
        return pb.RangeResponse(header=pb.ResponseHeader(revision=7, cluster_id=2**63 + 5),
                                kvs=[kv_pb2.KeyValue(key=req.key, value=b"v", version=1)],
                                count=1)

    async def put(self, req: pb.PutRequest, ctx: grpc.aio.ServicerContext) -> pb.PutResponse:
        return pb.PutResponse(header=pb.ResponseHeader(revision=len(req.value)))

    async def keepalive(self, requests: AsyncIterator[pb.LeaseKeepAliveRequest],
                        ctx: grpc.aio.ServicerContext
                        ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        async for req in requests:
            yield pb.LeaseKeepAliveResponse(ID=req.ID, TTL=7)

    async def watch(self, requests: AsyncIterator[pb.WatchRequest],
                    ctx: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchResponse]:
        try:
            req = await requests.__anext__()
            if req.create_request.key == b"fail":
                await ctx.abort(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required "
                                "revision has been compacted")
            yield pb.WatchResponse(created=True, watch_id=0)
            while True:
                key = await self.watch_events.get()
                if key == b"end":
                    await ctx.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
                yield pb.WatchResponse(events=[kv_pb2.Event(kv=kv_pb2.KeyValue(key=key))])
        finally:
            self.watch_ended.set()


@pytest.fixture
async def gateway_url() -> AsyncIterator[tuple[str, int, Fake]]:
    fake = Fake()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([
        generic_handler(KV, {"Range": fake.range, "Put": fake.put}),
        generic_handler(LEASE, {"LeaseKeepAlive": fake.keepalive}),
        generic_handler(WATCH, {"Watch": fake.watch}),
    ])
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backend = GatewayBackend(f"127.0.0.1:{grpc_port}")
    http = await asyncio.start_server(lambda r, w: serve_http(r, w, backend), "127.0.0.1", 0)
    try:
        yield "127.0.0.1", http.sockets[0].getsockname()[1], fake
    finally:
        http.close()
        await backend.close()
        await server.stop(None)
        await http.wait_closed()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One HTTP/1.1 response (Content-Length or a complete chunked body)."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b"".join([c async for c in read_chunks(reader)])
    else:
        body = await reader.readexactly(int(headers["content-length"]))
    return Response(status, headers, body)


async def read_chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while size := int(await reader.readuntil(b"\r\n"), 16):
        yield await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"
    assert await reader.readuntil(b"\r\n") == b"\r\n"


def request(method: str, path: str, body: bytes | None = None, *headers: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: x", *headers]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")


async def exchange(addr: tuple[str, int, Fake], *raw: bytes) -> list[Response]:
    """Sends each request on one connection, reading each answer before the next."""
    reader, writer = await asyncio.open_connection(addr[0], addr[1])
    try:
        out = []
        for data in raw:
            writer.write(data)
            out.append(await asyncio.wait_for(read_response(reader), DEADLINE))
        return out
    finally:
        writer.close()


async def test_unary_calls_keep_alive_and_use_etcd_json(gateway_url: Any) -> None:
    version, rng, put = await exchange(
        gateway_url,
        request("GET", "/version"),
        request("POST", "/v3/kv/range", b'{"key": "Zm9v", "limit": "3", "unknown": 1}'),
        request("POST", "/v3beta/kv/put", b'{"key": "YQ==", "value": "YmJi", "lease": 0}'))
    assert version.json() == {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}
    assert rng.status == 200 and rng.headers["content-type"] == "application/json"
    assert rng.json() == {"header": {"cluster_id": str(2**63 + 5), "revision": "7"},
                          "kvs": [{"key": "Zm9v", "value": "dg==", "version": "1"}],
                          "count": "1"}
    assert gateway_url[2].ranges[0].limit == 3  # a string integer, an unknown field ignored
    assert put.json() == {"header": {"revision": "3"}}


async def test_errors_map_grpc_codes_to_etcd_answers(gateway_url: Any) -> None:
    lease, leader, bad_json, bad_enum, not_found, method = await exchange(
        gateway_url,
        request("POST", "/v3/kv/range", b'{"key": "bWlzc2luZy1sZWFzZQ=="}'),
        request("POST", "/v3/kv/range", b'{"key": "bm8tbGVhZGVy"}'),
        request("POST", "/v3/kv/range", b"{not json"),
        request("POST", "/v3/kv/range", b'{"key": "YQ==", "sort_order": "SIDEWAYS"}'),
        request("POST", "/v3/kv/nothing", b"{}"),
        request("GET", "/v3/kv/range"))
    msg = "etcdserver: requested lease not found"
    assert (lease.status, lease.json()) == (404, {"error": msg, "message": msg, "code": 5})
    assert (leader.status, leader.json()["code"]) == (503, 14)
    assert (bad_json.status, bad_json.json()["code"]) == (400, 3)
    assert (bad_enum.status, bad_enum.json()["code"]) == (400, 3)
    assert (not_found.status, not_found.body) == (404, b"Not Found\n")
    assert (method.status, method.headers["allow"]) == (405, "POST")


async def test_request_bodies_chunked_expect_and_limits(gateway_url: Any, monkeypatch: Any
                                                        ) -> None:
    body = b'{"key": "Zm9v"}'
    chunked = (b"POST /v3/kv/range HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%X\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    reader, writer = await asyncio.open_connection(gateway_url[0], gateway_url[1])
    try:
        writer.write(request("POST", "/v3/kv/range", None, "Expect: 100-continue",
                             f"Content-Length: {len(body)}"))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE) == (
            b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(body)
        assert (await asyncio.wait_for(read_response(reader), DEADLINE)).status == 200
    finally:
        writer.close()
    (resp,) = await exchange(gateway_url, chunked)
    assert resp.json()["kvs"][0]["key"] == "Zm9v"
    monkeypatch.setattr(gateway, "MAX_BODY", 10)
    too_big, = await exchange(gateway_url, request("POST", "/v3/kv/range", body))
    assert too_big.status == 413 and too_big.headers["connection"] == "close"
    huge_header, = await exchange(gateway_url, request("GET", "/version", None,
                                                       "X-Big: " + "a" * 70000))
    assert huge_header.status == 431
    garbage, = await exchange(gateway_url, b"\x16\x03\x01 hello\r\n\r\n")
    assert garbage.status == 400


async def test_keepalive_answers_once_and_the_connection_goes_on(gateway_url: Any) -> None:
    keepalive, version = await exchange(
        gateway_url, request("POST", "/v3/lease/keepalive", b'{"ID": "1234"}'),
        request("GET", "/version"))
    assert keepalive.headers["transfer-encoding"] == "chunked"
    assert keepalive.body == b'{"result":{"ID":"1234","TTL":"7"}}\n'
    assert version.status == 200


async def test_watch_streams_one_object_per_chunk_until_the_client_closes(
        gateway_url: Any) -> None:
    fake: Fake = gateway_url[2]
    reader, writer = await asyncio.open_connection(gateway_url[0], gateway_url[1])
    try:
        writer.write(request("POST", "/v3/watch", b'{"create_request": {"key": "YQ=="}}'))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
        chunks = read_chunks(reader)
        first = await asyncio.wait_for(chunks.__anext__(), DEADLINE)
        assert first == b'{"result":{"created":true}}\n'
        for key in (b"a", b"b"):
            fake.watch_events.put_nowait(key)
            chunk = await asyncio.wait_for(chunks.__anext__(), DEADLINE)
            assert json.loads(chunk) == {"result": {"events": [
                {"kv": {"key": gateway_json.message_dict(kv_pb2.KeyValue(key=key))["key"]}}]}}
        assert not fake.watch_ended.is_set()
    finally:
        writer.close()
    await asyncio.wait_for(fake.watch_ended.wait(), DEADLINE)  # the gRPC watch is cancelled


async def test_watch_errors_before_and_after_the_first_answer(gateway_url: Any) -> None:
    fake: Fake = gateway_url[2]
    compacted, bad = await exchange(
        gateway_url, request("POST", "/v3/watch", b'{"create_request": {"key": "ZmFpbA=="}}'),
        request("POST", "/v3/watch", b"[1]"))
    assert (compacted.status, compacted.json()["code"]) == (400, 11)
    assert (bad.status, bad.json()["code"]) == (500, 2)  # etcd: UNKNOWN for stream bodies
    fake.watch_events.put_nowait(b"end")
    streamed, = await exchange(
        gateway_url, request("POST", "/v3/watch", b'{"create_request": {"key": "YQ=="}}'))
    lines = [json.loads(line) for line in streamed.body.splitlines()]
    assert lines == [{"result": {"created": True}},
                     {"error": {"grpc_code": 14, "http_code": 503,
                                "message": "etcdserver: no leader",
                                "http_status": "Service Unavailable"}}]


async def test_a_gateway_failure_answers_500_without_a_traceback(
        gateway_url: Any, monkeypatch: Any) -> None:
    def broken(message: Any) -> bytes:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(gateway_json, "message_body", broken)
    resp, = await exchange(gateway_url, request("POST", "/v3/kv/range", b'{"key": "YQ=="}'))
    assert resp.status == 500
    assert resp.json() == {"error": "gateway internal error",
                           "message": "gateway internal error", "code": 13}
    monkeypatch.undo()
    again, = await exchange(gateway_url, request("GET", "/version"))  # still serving
    assert again.status == 200
