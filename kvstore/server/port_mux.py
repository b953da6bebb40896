"""One client port for gRPC and etcd's JSON gateway, as etcd serves both on one port.

Clients such as Patroni replace their configured endpoints with the client URLs the
members report, and then speak HTTP/1.1 JSON to them, while etcdctl and the gRPC clients
speak HTTP/2 to the same URLs. Python's gRPC server cannot answer HTTP/1.1, so the node's
gRPC server listens on an internal loopback port and this multiplexer owns the public one.
It looks at the first bytes of each connection without consuming them (MSG_PEEK):

* plaintext: the HTTP/2 connection preface ("PRI * HTTP/2.0") means gRPC; anything else is
  HTTP/1.1 for the gateway;
* TLS: the ClientHello is in the clear; its ALPN list decides. gRPC clients offer "h2"
  only, HTTP clients (curl, urllib3) offer "http/1.1" (curl also "h2", so "http/1.1" wins)
  or nothing. For gRPC the encrypted bytes are passed through untouched, so gRPC itself
  still does TLS and the client-certificate check; for HTTP/1.1 Python's ssl terminates
  TLS with the same certificate, key and client-CA settings, then the gateway answers.

A gRPC connection is spliced to the internal port on the event loop: a protocol on each
side writes what it reads to the other, with flow control both ways. Two threads per
connection doing blocking send/recv did this before; profiling the write path (issue 15)
showed their wake-ups and GIL hand-overs costing more CPU per message than the two
callbacks, and tail latency. The cost on the gRPC path is one loopback hop per message;
`python -m bench.mux` measures it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

log = logging.getLogger("kvstore.server.mux")

H2_PREFACE = b"PRI * HTTP/2.0"
PEEK_TIMEOUT_SECONDS = 10.0  # a connection that says nothing this long is dropped
MAX_CLIENT_HELLO = 16 * 1024

Gateway = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def client_hello_alpn(data: bytes) -> list[str] | None:
    """The ALPN protocols a TLS ClientHello offers ([] if none); None while `data` does not
    yet hold the whole first record (or is not a handshake)."""
    if len(data) < 5 or data[0] != 0x16:
        return None
    (length,) = struct.unpack_from(">H", data, 3)
    if len(data) < 5 + length:
        return None
    body = data[5:5 + length]
    try:
        if body[0] != 1:  # ClientHello
            return []
        off = 4 + 2 + 32  # handshake header, version, random
        off += 1 + body[off]  # session id
        (n,) = struct.unpack_from(">H", body, off)
        off += 2 + n  # cipher suites
        off += 1 + body[off]  # compression methods
        (ext_len,) = struct.unpack_from(">H", body, off)
        off += 2
        end = off + ext_len
        while off + 4 <= end:
            etype, elen = struct.unpack_from(">HH", body, off)
            off += 4
            if etype == 16:  # application_layer_protocol_negotiation
                protos: list[str] = []
                p = off + 2
                while p < off + elen:
                    plen = body[p]
                    protos.append(body[p + 1:p + 1 + plen].decode("ascii", "replace"))
                    p += 1 + plen
                return protos
            off += elen
    except (IndexError, struct.error):
        return []
    return []


class PortMux:
    """Accepts on a public address and routes each connection (see above). The peer
    port has one too: there the non-gRPC connections are Raft frame streams
    (peer_frames.py), whose TLS is terminated here with the peer certificate and CA."""

    def __init__(self, address: str, grpc_port: int, gateway: Gateway | None,
                 tls: ssl.SSLContext | None, *, name: str = "client-port-mux") -> None:
        self.address = address
        self.name = name
        self.grpc_port = grpc_port
        self.gateway = gateway
        self.tls = tls
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._spliced: set[asyncio.Transport] = set()  # both sides of gRPC connections
        self._routes: set[asyncio.Task[None]] = set()  # connections being routed or served

    def bind(self) -> None:
        """Listen now (raises OSError), so a busy port fails the node at start."""
        host, port = split_address(self.address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "0.0.0.0", port))
            sock.listen(512)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock

    @property
    def port(self) -> int:
        """The port bound (useful when bound to port 0)."""
        assert self._sock is not None, "bind() first"
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        assert self._sock is not None, "bind() first"
        self._task = asyncio.create_task(self._accept_loop(), name=self.name)

    async def stop(self) -> None:
        """Stop accepting, end the gateway connections (a watch stream may be open), and
        close the spliced ones."""
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close()
        for task in list(self._routes):
            task.cancel()
        if self._routes:
            await asyncio.wait(list(self._routes), timeout=2.0)
        for transport in list(self._spliced):
            transport.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as err:
                log.warning("accept failed on %s: %s", self.address, err)
                await asyncio.sleep(0.05)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._route(conn))
            self._routes.add(task)
            task.add_done_callback(self._routes.discard)

    async def _route(self, conn: socket.socket) -> None:
        try:
            head = await self._peek(conn)
        except (OSError, TimeoutError):
            _close(conn)
            return
        if self.tls is None:
            grpc_conn = head.startswith(H2_PREFACE[:3])
        else:
            alpn = client_hello_alpn(head) or []
            grpc_conn = "h2" in alpn and "http/1.1" not in alpn
        if grpc_conn:
            await self._splice(conn)
        elif self.gateway is None:
            _close(conn)
        else:
            await self._serve_http(conn)

    async def _peek(self, conn: socket.socket) -> bytes:
        """The first bytes of a connection, left in the socket: enough to tell HTTP/2 from
        HTTP/1.1, or the whole TLS ClientHello."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PEEK_TIMEOUT_SECONDS
        want = len(H2_PREFACE[:3]) if self.tls is None else 5
        while True:
            ready = loop.create_future()
            loop.add_reader(conn.fileno(), _set_once, ready)
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
            finally:
                loop.remove_reader(conn.fileno())
            data = conn.recv(MAX_CLIENT_HELLO, socket.MSG_PEEK)
            if not data:
                raise OSError("closed before it said anything")
            if self.tls is not None and len(data) >= 5:
                want = 5 + struct.unpack_from(">H", data, 3)[0] if data[0] == 0x16 else 5
            if len(data) >= min(want, MAX_CLIENT_HELLO):
                return data
            await asyncio.sleep(0.001)  # the rest of the hello is on its way

    async def _serve_http(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self.tls)
        except (OSError, ssl.SSLError) as err:
            log.info("client on %s failed its TLS handshake: %s", self.address, err)
            _close(conn)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            assert self.gateway is not None
            await self.gateway(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:  # noqa: BLE001 - one connection's failure never stops the port
            log.exception("gateway connection failed")
        finally:
            writer.close()

    async def _splice(self, conn: socket.socket) -> None:
        """Pass the connection's bytes to and from the internal gRPC port, on the event
        loop: each chunk is one read and one write in a protocol callback, with no thread
        to wake and no GIL to hand over (threads doing this cost more per message)."""
        loop = asyncio.get_running_loop()
        try:
            up_transport, up = await loop.create_connection(
                _Splice, "127.0.0.1", self.grpc_port)
        except OSError as err:
            log.warning("cannot reach the internal gRPC port %d: %s", self.grpc_port, err)
            _close(conn)
            return
        try:
            down_transport, down = await loop.connect_accepted_socket(_Splice, conn)
        except OSError:
            up_transport.close()
            _close(conn)
            return
        up.link(down_transport)
        down.link(up_transport)
        self._spliced.update((up_transport, down_transport))
        up.on_lost = down.on_lost = self._spliced.discard


class _Splice(asyncio.Protocol):
    """One side of a spliced connection: what it reads is written to the other side; a
    full write buffer on one side pauses reading on the other; the end of either closes
    both."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.on_lost: Callable[[asyncio.Transport], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no subclass)

    def link(self, other: asyncio.Transport) -> None:
        self.other = other
        if self.pending:
            other.write(b"".join(self.pending))
            self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.other is not None:
            self.other.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        if self.other is not None and self.other.can_write_eof():
            self.other.write_eof()
        return True  # half-closed: the other direction may still carry data

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None:
            self.other.close()
        if self.on_lost is not None and self.transport is not None:
            self.on_lost(self.transport)

    def pause_writing(self) -> None:
        if self.other is not None:
            self.other.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.resume_reading()


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
