"""Raft messages between peers as length-prefixed frames on one connection per peer.

Why not a gRPC stream: profiling a sequential put (issue 15) showed each peer hop
through a grpc.aio client stream costing about 0.4 ms on loopback — the message crosses
gRPC's own threads and completion queue before it reaches the event loop — and the two
hops of every write (append out, acknowledgement back) were a quarter of its latency. A
frame written to an asyncio stream costs one socket write; etcd's peers likewise use
their own streams (rafthttp) rather than gRPC.

The connection, dialled by the sender, on the receiver's peer port:

1. the dialler says MAGIC (plaintext) or offers ALPN `kvstore-raft/1` (TLS, mutual: the
   peer port's multiplexer terminates it with the peer certificate and CA and requires
   a client certificate signed by that CA, --peer-cert-allowed-cn included);
2. a hello frame: the identity the gRPC calls carry as metadata (cluster id, node id,
   client address; identity.py), a JSON object of strings;
3. one answer frame: admitted, or refused with a gRPC status name and a message, after
   which the receiver closes (the sender treats it as a refusal, not a network blip);
4. then only the sender speaks: each frame one serialized MessageBatch. The receiver
   speaks again only to refuse a member removed while its stream was open.

A frame is a 4-byte big-endian length and that many bytes; a length over the limit ends
the connection (its framing can no longer be trusted). A batch that does not parse is
dropped with a warning and the stream goes on, as a malformed message is (peer_service).

Snapshots, the Admin service and the etcd API's forwarding stay gRPC calls on the same
port (port_mux.py routes by the first bytes): they are rare, or large and chunked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import struct
from collections.abc import Callable, Iterable

from google.protobuf.message import DecodeError

from kvstore.raft.types import Message
from kvstore.server.identity import PeerGate, Refused
from kvstore.server.peer_service import deliver_batch
from kvstore.v1 import raft_pb2

log = logging.getLogger(__name__)

MAGIC = b"KVRAFT/1"
ALPN = "kvstore-raft/1"
MAX_FRAME_BYTES = 64 << 20  # as the gRPC peer channels' message limit
MAX_HELLO_BYTES = 4096
HELLO_TIMEOUT = 5.0  # seconds for a dialler to say who it is
_LENGTH = struct.Struct(">I")

Metadata = Iterable[tuple[str, str]]


class FrameError(Exception):
    """The other side broke the framing or the handshake; the connection is closed."""


class PeerRefused(Exception):
    """The receiver refused our stream; `code` is a gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The next frame's payload; FrameError past `limit`, IncompleteReadError at EOF."""
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if size > limit:
        raise FrameError(f"frame of {size} bytes is over the limit of {limit}")
    return await reader.readexactly(size)


def encode_hello(metadata: Metadata) -> bytes:
    return json.dumps(dict(metadata)).encode()


def decode_hello(data: bytes) -> list[tuple[str, str]]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FrameError("hello is not JSON") from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise FrameError("hello is not an object of strings")
    return list(value.items())


def encode_answer(refusal: Refused | None) -> bytes:
    if refusal is None:
        return b'{"ok":true}'
    return json.dumps({"code": refusal.code, "message": str(refusal)}).encode()


def decode_answer(data: bytes) -> PeerRefused | None:
    """None if admitted, else the refusal; FrameError if the answer makes no sense."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FrameError("answer is not JSON") from None
    if not isinstance(value, dict):
        raise FrameError("answer is not an object")
    if value.get("ok") is True:
        return None
    code, message = value.get("code"), value.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise FrameError("answer is neither admitted nor a refusal")
    return PeerRefused(code, message)


def common_names(peercert: dict | None) -> list[str]:
    """Common names in the subject of a certificate as ssl.getpeercert() gives it."""
    names = []
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
    return names


class PeerFrameServer:
    """The receiving side: a PortMux handler on the peer port for frame connections."""

    def __init__(self, gate: PeerGate, deliver: Callable[[Message], None],
                 blocked: Callable[[str], bool] | None = None,
                 allowed_cn: str | None = None) -> None:
        self.gate = gate
        self._deliver = deliver
        self._blocked = blocked
        self.allowed_cn = allowed_cn

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        try:
            magic = await asyncio.wait_for(reader.readexactly(len(MAGIC)), HELLO_TIMEOUT)
            if magic != MAGIC:
                log.info("closed a connection on the peer port from %s: not a peer stream",
                         peer)
                return
            hello = await asyncio.wait_for(read_frame(reader, MAX_HELLO_BYTES), HELLO_TIMEOUT)
            metadata = decode_hello(hello)
        except (TimeoutError, asyncio.IncompleteReadError, FrameError) as err:
            log.info("closed a connection on the peer port from %s: %s", peer,
                     str(err) or type(err).__name__)
            return
        try:
            self._check_cn(writer)
            src = self.gate.admit(metadata, "peer stream", peer)
        except Refused as refusal:
            await _answer(writer, refusal)
            return
        await _answer(writer, None)
        await self._receive(src, metadata, reader, writer, peer)

    def _check_cn(self, writer: asyncio.StreamWriter) -> None:
        if self.allowed_cn is None:
            return
        names = common_names(writer.get_extra_info("peercert"))
        if self.allowed_cn not in names:
            shown = ",".join(names) or "(none)"
            self.gate.refusals.warn(
                f"cn:{shown}", f"refused a peer stream: certificate CN {shown} is not "
                               f"the allowed {self.allowed_cn!r}")
            raise Refused("PERMISSION_DENIED",
                          f"peer certificate CN {shown} is not allowed "
                          f"(--peer-cert-allowed-cn {self.allowed_cn})")

    async def _receive(self, src: str, metadata: list[tuple[str, str]],
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       peer: str) -> None:
        refusals = self.gate.refusals
        while True:
            try:
                data = await read_frame(reader, MAX_FRAME_BYTES)
            except asyncio.IncompleteReadError:
                return  # the sender closed the stream
            except FrameError as err:
                refusals.warn(f"frame:{src}", f"closed the stream from {src}: {err}")
                return
            if src in self.gate.removed:
                # Removed while its stream was open: the gate now refuses it with the
                # answer that tells it so (it stops).
                try:
                    self.gate.admit(metadata, "peer stream", peer)
                except Refused as refusal:
                    await _answer(writer, refusal)
                    return
            try:
                batch = raft_pb2.MessageBatch.FromString(data)
            except DecodeError:
                refusals.warn(f"malformed-batch:{src}",
                              f"dropped a malformed message batch from {src}")
                continue
            deliver_batch(src, batch, refusals, self._deliver, self._blocked)


async def _answer(writer: asyncio.StreamWriter, refusal: Refused | None) -> None:
    writer.write(frame(encode_answer(refusal)))
    await writer.drain()


def _peer_name(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)


async def open_peer_stream(
    host: str, port: int, metadata: Metadata, tls: ssl.SSLContext | None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Dial a peer, say who we are and wait to be admitted; raises PeerRefused, FrameError,
    OSError, ssl.SSLError, IncompleteReadError (the caller bounds the time)."""
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls, server_hostname=host if tls is not None else None,
        limit=1 << 16)
    try:
        writer.write(MAGIC + frame(encode_hello(metadata)))
        answer = decode_answer(await read_frame(reader, MAX_HELLO_BYTES))
    except BaseException:
        writer.close()
        raise
    if answer is not None:
        writer.close()
        raise answer
    return reader, writer
