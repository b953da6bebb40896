"""etcd's JSON gateway (HTTP/1.1) on one client connection.

etcd serves its v3 API twice on the client port: gRPC, and grpc-gateway's JSON
translation of it for HTTP-only clients (curl, etcd3gw, Patroni). The gateway here is
the same design: a proxy to the node's own gRPC server over a grpc.aio channel, so every
answer (revisions, errors, forwarding to the leader, watch semantics) is exactly what a
gRPC client gets; only the encoding differs (gateway_json.py). Being a client of the
gRPC server costs a loopback hop, but keeps one implementation of every method.

The port multiplexer (kvstore/server/port_mux.py) hands each HTTP/1.1 connection to
``serve_http``, which answers requests one after another until the client closes
(keep-alive; a request is read whole, Content-Length or chunked, within bounded sizes).
Unary calls answer one JSON object; /v3/lease/keepalive and /v3/watch answer chunked
streams of {"result": ...} objects, one object per chunk as etcd writes them: a
keep-alive ends after its answers, a watch stays open until the client closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from kvstore.etcdapi import gateway_json as gj
from kvstore.etcdapi.methods import CLUSTER, KV, LEASE, MAINTENANCE, WATCH, stub
from kvstore.etcdpb import rpc_pb2 as pb

log = logging.getLogger(__name__)

MAX_LINE = 8 * 1024          # request line, one header line, one chunk-size line
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
# The largest request body: etcd's gRPC server takes requests up to 1.5 MiB, and base64
# makes bytes a third larger; a Txn of many puts can be larger still.
MAX_BODY = 8 * 1024 * 1024
# A unary call that takes longer answers 504 (kvstore's own deadlines are shorter).
CALL_TIMEOUT = 60.0


class GatewayBackend:
    """The node's gRPC server as the gateway sees it: one channel, etcd's stubs.

    ``grpc_target`` is the internal gRPC address; ``credentials`` its channel credentials
    when it serves TLS (``options`` e.g. a target name override for the certificate)."""

    def __init__(self, grpc_target: str, credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        opts = [("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", MAX_BODY), *options]
        self.target = grpc_target
        self.channel = (grpc.aio.insecure_channel(grpc_target, options=opts)
                        if credentials is None
                        else grpc.aio.secure_channel(grpc_target, credentials, options=opts))
        self.stubs = {svc: stub(self.channel, svc)
                      for svc in (KV, LEASE, WATCH, CLUSTER, MAINTENANCE)}

    def method(self, route: gj.Route) -> Any:
        return getattr(self.stubs[route.service], route.method)

    async def close(self) -> None:
        await self.channel.close()


class HttpError(Exception):
    """A request refused at the HTTP level (before any gRPC call); the connection is
    closed afterwards when what follows on it cannot be trusted (``close``)."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class Connection:
    """One client connection: reads requests, writes answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 backend: GatewayBackend) -> None:
        self.reader = reader
        self.writer = writer
        self.backend = backend
        self.written = False  # has anything of the current answer gone out?

    # -- reading --------------------------------------------------------------------

    async def _line(self, budget: int = MAX_LINE) -> bytes:
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, "request line or header too long", close=True) from None
        except asyncio.IncompleteReadError as err:
            if err.partial:
                raise HttpError(400, "connection closed inside a request", close=True) from None
            raise EOFError from None
        if len(line) > budget:
            raise HttpError(431, "request line or header too long", close=True)
        return line.rstrip(b"\r\n")

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed between requests."""
        try:
            line = await self._line()
            while not line:  # RFC 9112 2.2: ignore empty lines before a request
                line = await self._line()
        except EOFError:
            return None
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line", close=True)
        req = Request(parts[0].upper(), parts[1], parts[2])
        total = 0
        while True:
            try:
                hline = await self._line()
            except EOFError:
                raise HttpError(400, "connection closed inside a request", close=True) from None
            if not hline:
                break
            total += len(hline)
            if total > MAX_HEADER_BYTES or len(req.headers) >= MAX_HEADERS:
                raise HttpError(431, "request headers too large", close=True)
            name, sep, value = hline.decode("latin-1").partition(":")
            if not sep or not name.strip():
                raise HttpError(400, "malformed header line", close=True)
            key = name.strip().lower()
            value = value.strip()
            req.headers[key] = f"{req.headers[key]}, {value}" if key in req.headers else value
        req.body = await self._read_body(req)
        return req

    async def _read_body(self, req: Request) -> bytes:
        te = req.headers.get("transfer-encoding", "").strip().lower()
        length_header = req.headers.get("content-length")
        if te and te != "chunked":
            raise HttpError(501, f"transfer encoding {te!r} is not supported", close=True)
        if not te and length_header is None:
            return b""
        length = 0
        if not te:
            try:
                length = int(length_header or "")
            except ValueError:
                raise HttpError(400, "bad Content-Length", close=True) from None
            if length < 0:
                raise HttpError(400, "bad Content-Length", close=True)
            if length > MAX_BODY:
                raise HttpError(413, f"request body larger than {MAX_BODY} bytes", close=True)
        if "100-continue" in req.headers.get("expect", "").lower():
            await self._write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it
        try:
            if not te:
                return await self.reader.readexactly(length)
            return await self._read_chunked()
        except asyncio.IncompleteReadError:
            raise HttpError(400, "connection closed inside a request body", close=True) from None

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            try:
                size = int((await self._line()).split(b";", 1)[0].strip() or b"x", 16)
            except (ValueError, EOFError):
                raise HttpError(400, "bad chunked request body", close=True) from None
            if size == 0:
                break
            if len(body) + size > MAX_BODY:
                raise HttpError(413, f"request body larger than {MAX_BODY} bytes", close=True)
            body += await self.reader.readexactly(size)
            if await self.reader.readexactly(2) != b"\r\n":
                raise HttpError(400, "bad chunked request body", close=True)
        with contextlib.suppress(EOFError):  # trailers, up to the empty line
            while await self._line():
                pass
        return bytes(body)

    # -- writing --------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self.written = True
        self.writer.write(data)
        await self.writer.drain()

    async def respond(self, status: int, body: bytes, *, close: bool,
                      content_type: str = "application/json",
                      extra: Sequence[tuple[str, str]] = ()) -> None:
        head = [f"HTTP/1.1 {status} {gj.reason(status)}", f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in extra)]
        if close:
            head.append("Connection: close")
        await self._write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    async def start_stream(self) -> None:
        await self._write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")

    async def chunk(self, data: bytes) -> None:
        await self._write(b"%X\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n")

    # -- serving --------------------------------------------------------------------

    async def serve(self) -> None:
        while True:
            try:
                req = await self.read_request()
            except HttpError as err:
                await self.respond(err.status, gj.error_body(
                    grpc.StatusCode.INVALID_ARGUMENT, err.message), close=True)
                return
            if req is None:
                return
            keep = req.keep_alive
            self.written = False
            try:
                keep = await self.handle(req) and keep
            except HttpError as err:
                await self.respond(err.status, gj.error_body(
                    grpc.StatusCode.INVALID_ARGUMENT, err.message), close=True)
                return
            if not keep:
                return

    async def handle(self, req: Request) -> bool:
        """Answers one request; False when the connection must close afterwards."""
        keep = req.keep_alive
        path = req.path
        if path in ("/version", "/health"):
            if req.method != "GET":
                return await self._plain(405, "Method Not Allowed", keep, allow="GET")
            if path == "/version":
                await self.respond(200, gj.version_body(), close=not keep)
            else:
                await self._health(keep)
            return True
        route = gj.route(path)
        if route is None:
            return await self._plain(404, "Not Found", keep)
        if req.method != "POST":
            return await self._plain(405, "Method Not Allowed", keep, allow="POST")
        try:
            requests = gj.parse_requests(req.body, route.request_class,
                                         stream=route.kind != gj.UNARY)
        except gj.RequestError as err:
            # etcd answers a body it cannot decode with INVALID_ARGUMENT (400) on unary
            # calls, and with UNKNOWN (500) on the two streams.
            code = err.code if route.kind == gj.UNARY else grpc.StatusCode.UNKNOWN
            await self.respond(gj.HTTP_STATUS[code], gj.error_body(code, err.message),
                               close=not keep)
            return True
        if route.kind == gj.UNARY:
            await self._unary(route, requests[0], keep)
            return True
        return await self._stream(route, requests, keep)

    async def _plain(self, status: int, text: str, keep: bool, allow: str = "") -> bool:
        await self.respond(status, f"{text}\n".encode(), close=not keep,
                           content_type="text/plain; charset=utf-8",
                           extra=[("Allow", allow)] if allow else ())
        return True

    async def _grpc_error(self, err: grpc.aio.AioRpcError, keep: bool) -> None:
        code = err.code()
        await self.respond(gj.HTTP_STATUS.get(code, 500),
                           gj.error_body(code, err.details() or ""), close=not keep)

    async def _unary(self, route: gj.Route, request: Message, keep: bool) -> None:
        try:
            resp = await self.backend.method(route)(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            await self._grpc_error(err, keep)
            return
        await self.respond(200, gj.message_body(resp), close=not keep)

    async def _health(self, keep: bool) -> None:
        """etcd's /health: healthy when a linearizable read succeeds (it needs a leader
        and a quorum)."""
        try:
            await self.backend.stubs[KV].Range(
                pb.RangeRequest(key=b"health", limit=1), timeout=5.0)
        except grpc.aio.AioRpcError as err:
            body = {"health": "false", "reason": err.details() or err.code().name}
            await self.respond(503, json.dumps(body).encode(), close=not keep)
            return
        await self.respond(200, b'{"health":"true","reason":""}', close=not keep)

    async def _stream(self, route: gj.Route, requests: list[Message], keep: bool) -> bool:
        """A keep-alive or watch: the body's requests go up the gRPC stream; the answers
        come back as chunks. The 200 goes out with the first answer, so an error before
        it is an ordinary error answer (as grpc-gateway does)."""
        call = self.backend.method(route)()
        watch = route.kind == gj.WATCH_STREAM
        client_gone = asyncio.ensure_future(self._wait_client_close()) if watch else None
        started = False
        try:
            for request in requests:
                await call.write(request)
            if not watch:
                await call.done_writing()
            responses = call.__aiter__()
            while True:
                step = asyncio.ensure_future(responses.__anext__())
                if client_gone is not None:
                    await asyncio.wait({step, client_gone}, return_when=asyncio.FIRST_COMPLETED)
                    if not step.done():
                        step.cancel()
                        return False
                try:
                    resp = await step
                except StopAsyncIteration:
                    break
                if not started:
                    await self.start_stream()
                    started = True
                await self.chunk(gj.stream_chunk(resp))
        except grpc.aio.AioRpcError as err:
            if not started:
                await self._grpc_error(err, keep)
                return True
            await self.chunk(gj.stream_error_chunk(err.code(), err.details() or ""))
            await self.chunk(b"")
            return False
        finally:
            call.cancel()
            if client_gone is not None:  # done reading before the next request is read
                client_gone.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client_gone
        if not started:
            await self.start_stream()
        await self.chunk(b"")
        return not watch

    async def _wait_client_close(self) -> None:
        """Returns when the client closes its end (a watch lasts until then); anything
        it sends meanwhile is not a request (no pipelining behind a watch) and is dropped."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     backend: GatewayBackend) -> None:
    """Serves etcd's JSON gateway on one HTTP/1.1 connection until it closes, then closes
    it. Never raises: a failure is logged, answered with a 500 if nothing of an answer was
    written yet, and ends this connection only."""
    conn = Connection(reader, writer, backend)
    try:
        await conn.serve()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("JSON gateway: request failed")
        with contextlib.suppress(Exception):
            if not conn.written:
                await conn.respond(500, gj.error_body(grpc.StatusCode.INTERNAL,
                                                      "gateway internal error"), close=True)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
