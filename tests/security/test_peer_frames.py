"""Raft's frame streams on the peer port (peer_frames.py), in process over loopback: who
is admitted, what a stream may carry, a member removed mid-stream, the real sender
against the real receiver (plaintext and mutual TLS, --peer-cert-allowed-cn), and gRPC
calls still reaching the same port through its multiplexer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from kvstore.raft.types import Message, MessageType
from kvstore.server.config import PeerTLS
from kvstore.server.identity import REMOVED_MEMBER, PeerGate
from kvstore.server.peer_frames import (
    ALPN,
    MAGIC,
    PeerFrameServer,
    PeerRefused,
    frame,
    open_peer_stream,
)
from kvstore.server.peer_service import RaftPeerService
from kvstore.server.port_mux import PortMux
from kvstore.server.tls import (
    peer_server_credentials,
    peer_stream_client_context,
    peer_stream_server_context,
)
from kvstore.server.transport import PeerTransport
from kvstore.server.wire import message_to_pb
from kvstore.v1 import raft_pb2, raft_pb2_grpc

pytestmark = pytest.mark.timeout(60)


class PeerPort:
    """Node n1's peer port (cluster c1, peers n2 and n3): frames on the event loop, gRPC
    (InstallSnapshot here) spliced to an internal server, as app.py wires it."""

    def __init__(self, directory: Path, tls: PeerTLS | None = None) -> None:
        self.delivered: list[Message] = []
        self.snapshots: list[tuple[str, int, bytes]] = []
        self.gate = PeerGate("n1", "c1", frozenset({"n2", "n3"}), "127.0.0.1:7001")
        self.server = grpc.aio.server()
        raft_pb2_grpc.add_RaftPeerServicer_to_server(RaftPeerService(
            self.gate, self.delivered.append, None,
            lambda src, term, data: self.snapshots.append((src, term, data)),
            snapshot_dir=str(directory), max_snapshot_bytes=1 << 20), self.server)
        creds = None if tls is None else peer_server_credentials(tls)
        grpc_port = (self.server.add_insecure_port("127.0.0.1:0") if creds is None
                     else self.server.add_secure_port("127.0.0.1:0", creds))
        self.frames = PeerFrameServer(self.gate, self.delivered.append,
                                      allowed_cn=None if tls is None else tls.allowed_cn)
        ctx = None if tls is None else peer_stream_server_context(tls, ALPN)
        self.mux = PortMux("127.0.0.1:0", grpc_port, self.frames.handle, ctx, name="peer")
        self.mux.bind()
        self.port = self.mux.port
        self.address = f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        self.mux.start()

    async def stop(self) -> None:
        await self.mux.stop()
        await self.server.stop(0)


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[PeerPort]:
    p = PeerPort(tmp_path)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def _md(node: str = "n2", cluster: str = "c1") -> tuple[tuple[str, str], ...]:
    return (("kvstore-cluster-id", cluster), ("kvstore-node-id", node))


def _batch(*messages: raft_pb2.Message) -> bytes:
    return frame(raft_pb2.MessageBatch(messages=list(messages)).SerializeToString())


def _heartbeat(src: str, term: int = 1) -> raft_pb2.Message:
    return message_to_pb(Message(MessageType.HEARTBEAT, src=src, dst="n1", term=term))


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """What the receiver says before it closes the connection."""
    return await asyncio.wait_for(reader.read(), 10)


async def test_a_member_stream_is_delivered_in_order(port: PeerPort) -> None:
    reader, writer = await open_peer_stream("127.0.0.1", port.port, _md(), None)
    writer.write(_batch(_heartbeat("n2", 1)) + _batch(_heartbeat("n2", 2), _heartbeat("n2", 3)))
    await _until(lambda: len(port.delivered) == 3)
    assert [(m.src, m.term) for m in port.delivered] == [("n2", 1), ("n2", 2), ("n2", 3)]
    writer.close()


@pytest.mark.parametrize(
    ("md", "code"),
    [
        (_md(cluster="other"), "FAILED_PRECONDITION"),
        ((), "FAILED_PRECONDITION"),
        (_md(node="intruder"), "PERMISSION_DENIED"),
    ],
    ids=["other-cluster", "no-identity", "unknown-sender"],
)
async def test_streams_from_outside_the_cluster_are_refused(
    port: PeerPort, md: tuple[tuple[str, str], ...], code: str
) -> None:
    with pytest.raises(PeerRefused) as info:
        await open_peer_stream("127.0.0.1", port.port, md, None)
    assert info.value.code == code
    assert port.delivered == []


async def test_a_member_cannot_speak_for_another_and_malformed_batches_are_dropped(
    port: PeerPort, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await open_peer_stream("127.0.0.1", port.port, _md("n2"), None)
    bad = _heartbeat("n2")
    bad.type = 99  # no such message type
    with caplog.at_level(logging.WARNING):
        writer.write(_batch(_heartbeat("n3"), _heartbeat("n2", 4)) + frame(b"\xff\xff\xff")
                     + _batch(bad, _heartbeat("n2", 5)))
        await _until(lambda: len(port.delivered) == 2)
    assert [(m.src, m.term) for m in port.delivered] == [("n2", 4), ("n2", 5)]
    assert "claims to be from 'n3'" in caplog.text
    assert "malformed message batch from n2" in caplog.text
    assert "malformed message from n2" in caplog.text
    writer.close()


async def test_an_oversized_frame_ends_the_stream_and_the_port_keeps_serving(
    port: PeerPort,
) -> None:
    reader, writer = await open_peer_stream("127.0.0.1", port.port, _md(), None)
    writer.write((1 << 30).to_bytes(4, "big"))  # 1 GiB announced
    assert await _closed(reader) == b""
    writer.close()
    reader, writer = await open_peer_stream("127.0.0.1", port.port, _md(), None)
    writer.write(_batch(_heartbeat("n2", 7)))
    await _until(lambda: [m.term for m in port.delivered] == [7])
    writer.close()


@pytest.mark.parametrize("opening", [b"GET / HTTP/1.1\r\n\r\n", MAGIC + b"\x00\x00\x10\x01"],
                         ids=["http", "hello-over-limit"])
async def test_what_is_not_a_peer_stream_is_closed(port: PeerPort, opening: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
    writer.write(opening)
    assert await _closed(reader) == b""
    writer.close()
    assert port.delivered == []


async def test_a_member_removed_mid_stream_is_told_so(port: PeerPort) -> None:
    reader, writer = await open_peer_stream("127.0.0.1", port.port, _md(), None)
    port.gate.removed = frozenset({"n2"})
    writer.write(_batch(_heartbeat("n2")))
    said = await _closed(reader)
    assert REMOVED_MEMBER.encode() in said
    assert port.delivered == []
    writer.close()


async def test_the_sender_streams_and_reports_a_removal(port: PeerPort) -> None:
    transport = PeerTransport({"n1": port.address}, metadata=_md("n2"))
    removed = asyncio.Event()
    transport.on_removed = removed.set
    transport.start()
    try:
        transport.send([Message(MessageType.HEARTBEAT, src="n2", dst="n1", term=1)])
        await _until(lambda: len(port.delivered) == 1)
        port.gate.removed = frozenset({"n2"})
        transport.send([Message(MessageType.HEARTBEAT, src="n2", dst="n1", term=2)])
        await asyncio.wait_for(removed.wait(), 10)
    finally:
        await transport.stop()
    assert [m.term for m in port.delivered] == [1]


async def test_the_sender_reports_a_refusal(
    port: PeerPort, caplog: pytest.LogCaptureFixture
) -> None:
    """A node of another cluster dialling n1: n1 refuses, and the sender says so once."""
    transport = PeerTransport({"n1": port.address}, metadata=_md("n2", cluster="other"))
    transport.start()
    try:
        with caplog.at_level(logging.WARNING):
            transport.send([Message(MessageType.HEARTBEAT, src="n2", dst="n1", term=1)])
            await _until(lambda: "refused our stream" in caplog.text)
    finally:
        await transport.stop()
    assert port.delivered == []
    assert "FAILED_PRECONDITION" in caplog.text and "cluster c1" in caplog.text


async def test_grpc_calls_share_the_port(port: PeerPort) -> None:
    async def chunks() -> AsyncIterator[raft_pb2.SnapshotChunk]:
        yield raft_pb2.SnapshotChunk(term=3, data=b"state", **{"from": "n2"})

    async with grpc.aio.insecure_channel(port.address) as channel:
        await raft_pb2_grpc.RaftPeerStub(channel).InstallSnapshot(chunks(), metadata=_md(),
                                                                  timeout=10)
    assert port.snapshots == [("n2", 3, b"state")]


def _tls(pki: dict[str, str], who: str, allowed_cn: str | None = None) -> PeerTLS:
    return PeerTLS(f"{pki[who]}.crt", f"{pki[who]}.key", pki["ca"], allowed_cn)


@pytest.mark.parametrize("allowed_cn", [None, "n2"])
async def test_mutual_tls_streams(tmp_path: Path, pki: dict[str, str],
                                  allowed_cn: str | None) -> None:
    server = PeerPort(tmp_path, _tls(pki, "n1", allowed_cn))
    await server.start()
    try:
        ctx = peer_stream_client_context(_tls(pki, "n2"), ALPN)
        reader, writer = await open_peer_stream("127.0.0.1", server.port, _md(), ctx)
        writer.write(_batch(_heartbeat("n2", 9)))
        await _until(lambda: [m.term for m in server.delivered] == [9])
        writer.close()
        # Plaintext, or a certificate from another CA: no stream.
        for bad in (None, peer_stream_client_context(_tls(pki, "other"), ALPN)):
            with pytest.raises((OSError, asyncio.IncompleteReadError, PeerRefused)):
                await open_peer_stream("127.0.0.1", server.port, _md(), bad)
        # Signed by the peer CA under another name: refused only with --peer-cert-allowed-cn.
        as_n1 = peer_stream_client_context(_tls(pki, "n1"), ALPN)
        if allowed_cn is None:
            _, w = await open_peer_stream("127.0.0.1", server.port, _md(), as_n1)
            w.close()
        else:
            with pytest.raises(PeerRefused) as info:
                await open_peer_stream("127.0.0.1", server.port, _md(), as_n1)
            assert info.value.code == "PERMISSION_DENIED"
            assert "n2" in str(info.value)
    finally:
        await server.stop()
