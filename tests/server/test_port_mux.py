"""The client-port multiplexer: HTTP/2 (gRPC) connections are passed through byte for byte
to the internal port, HTTP/1.1 ones go to the gateway; with TLS, the ClientHello's ALPN
decides and gRPC's TLS passes through untouched."""

from __future__ import annotations

import asyncio
import socket
import ssl

from kvstore.server.port_mux import H2_PREFACE, PortMux, client_hello_alpn


def _client_hello(alpn: list[str] | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="x")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_alpn_is_read_from_the_client_hello() -> None:
    assert client_hello_alpn(_client_hello(["h2"])) == ["h2"]
    assert client_hello_alpn(_client_hello(["h2", "http/1.1"])) == ["h2", "http/1.1"]
    assert client_hello_alpn(_client_hello(None)) == []
    hello = _client_hello(["h2"])
    assert client_hello_alpn(hello[:20]) is None  # not all there yet
    assert client_hello_alpn(b"GET / HTTP/1.1\r\n") is None


async def _upstream_echo() -> tuple[asyncio.AbstractServer, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(b"grpc:" + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_plaintext_routing() -> None:
    async def main() -> None:
        upstream, port = await _upstream_echo()
        seen: list[bytes] = []

        async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readline())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

        mux = PortMux("127.0.0.1:0", port, gateway, None)
        mux.bind()
        assert mux._sock is not None
        public = mux._sock.getsockname()[1]
        mux.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", public)
            w.write(H2_PREFACE + b"\r\n\r\nSM\r\n\r\n")
            await w.drain()
            got = await asyncio.wait_for(r.readexactly(5 + 24), 5)
            assert got.startswith(b"grpc:PRI * HTTP/2.0")
            w.close()
            r, w = await asyncio.open_connection("127.0.0.1", public)
            w.write(b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n")
            await w.drain()
            assert (await asyncio.wait_for(r.read(), 5)).endswith(b"ok")
            assert seen == [b"POST /v3/kv/range HTTP/1.1\r\n"]
        finally:
            await mux.stop()
            upstream.close()

    asyncio.run(main())


def test_tls_passes_h2_through_and_sends_http11_to_the_gateway() -> None:
    async def main() -> None:
        upstream, port = await _upstream_echo()
        routed: list[str] = []

        async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            routed.append("gateway")

        # No certificate needed: the h2 hello is passed through without a handshake here,
        # and the gateway side's failing handshake (no cert loaded) still shows the route.
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        mux = PortMux("127.0.0.1:0", port, gateway, server_ctx)
        mux.bind()
        assert mux._sock is not None
        public = mux._sock.getsockname()[1]
        mux.start()
        try:
            hello = _client_hello(["h2"])

            def client() -> bytes:
                with socket.create_connection(("127.0.0.1", public), timeout=5) as s:
                    s.sendall(hello)
                    got = b""
                    while len(got) < 5 + len(hello):
                        got += s.recv(65536)
                    return got

            got = await asyncio.to_thread(client)
            assert got == b"grpc:" + hello  # the encrypted bytes, untouched
        finally:
            await mux.stop()
            upstream.close()

    asyncio.run(main())
