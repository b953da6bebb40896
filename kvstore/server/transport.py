"""Peer transport: one long-lived frame stream per peer (peer_frames.py), carrying
MessageBatches; snapshots and hash checks as gRPC calls to the same peer port.

Raft messages are one-way and the protocol tolerates loss, so the sender never waits for
the receiver: each turn's messages for a peer become one batch on a bounded queue; a task
per peer writes what is queued to its stream in one socket write and reconnects with
backoff when the peer is down, dropping what it cannot deliver (Raft retransmits by its
own rules).

Every stream and snapshot carries this node's identity (cluster id, node id, client
address; see identity.py) and, with peer TLS, goes over mutual TLS. A peer that refuses
us (another cluster, or we are not among its members) is a configuration error, not a
network blip: it is logged as a warning, and retried slowly.

The receiving side is peer_frames.py (streams) and peer_service.py (snapshots).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterable

import grpc

from kvstore.raft.types import Message
from kvstore.server import trace
from kvstore.server.identity import REMOVED_MEMBER, RefusalLog
from kvstore.server.peer_frames import (
    MAX_HELLO_BYTES,
    FrameError,
    PeerRefused,
    decode_answer,
    frame,
    open_peer_stream,
    read_frame,
)
from kvstore.server.port_mux import split_address
from kvstore.server.wire import message_to_pb
from kvstore.v1 import admin_pb2, admin_pb2_grpc, raft_pb2, raft_pb2_grpc

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
]

_QUEUE_LIMIT = 256  # batches waiting per peer before new ones are dropped
_CONNECT_TIMEOUT = 1.0  # seconds to connect and be admitted before dropping the queue
_WRITE_BUFFER_LIMIT = 4 << 20  # bytes buffered for a peer before the sender waits
_DRAIN_TIMEOUT = 5.0  # seconds a peer may take to read that much before we reconnect
_REFUSED_BACKOFF = 2.0  # seconds between attempts at a peer that refuses us
SNAPSHOT_CHUNK_BYTES = 1 << 20
Metadata = tuple[tuple[str, str], ...]


# A peer channel reconnects quickly and on its own: gRPC's defaults back off up to 120 s
# and share connection state among channels to the same address (the global subchannel
# pool), so a peer that was down for a while would be tried again only seconds after it
# restarted, and a new channel would inherit that backoff. A restarted member must hear
# from its leader within a heartbeat or two, as an etcd member does.
PEER_CHANNEL_OPTIONS = [
    *GRPC_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """A channel to a peer: mutual TLS when the node has peer certificates."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=PEER_CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, credentials, options=PEER_CHANNEL_OPTIONS)


class PeerSender:
    """Streams this node's messages for one peer as frames (peer_frames.py)."""

    def __init__(self, peer_id: str, address: str,
                 on_drop: Callable[[str], None] | None = None, *,
                 metadata: Metadata = (),
                 credentials: grpc.ChannelCredentials | None = None,
                 tls: ssl.SSLContext | None = None,
                 refusals: RefusalLog | None = None) -> None:
        self.peer_id = peer_id
        self.address = address
        self._on_drop = on_drop
        self._metadata = metadata
        self._credentials = credentials  # gRPC calls to the peer (snapshots, hashes)
        self._tls = tls  # the frame stream's TLS (mutual), None in plaintext
        self._refusals = refusals or RefusalLog()
        self.queue: asyncio.Queue[raft_pb2.MessageBatch] = asyncio.Queue(_QUEUE_LIMIT)
        self.dropped = 0
        self.blocked = False  # fault injection: drop everything to this peer
        # Called when the peer says we were removed from the cluster.
        self.on_removed: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"peer-{self.peer_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def _dropped(self, n: int = 1) -> None:
        self.dropped += n
        if self._on_drop is not None:
            self._on_drop(self.peer_id)

    def enqueue(self, batch: raft_pb2.MessageBatch) -> None:
        if self.blocked:
            self._dropped()
            return
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self._dropped()

    async def _run(self) -> None:
        backoff = 0.05
        host, port = split_address(self.address)
        while True:
            refused = False
            try:
                reader, writer = await asyncio.wait_for(
                    open_peer_stream(host, port, self._metadata, self._tls), _CONNECT_TIMEOUT)
                backoff = 0.05
                try:
                    await self._stream(reader, writer)
                finally:
                    writer.close()
            except PeerRefused as err:  # at the hello, or told later that we were removed
                refused = True
                self._refused(err.code, str(err))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as err:
                log.debug("stream to %s at %s ended or not reachable: %s", self.peer_id,
                          self.address, err or type(err).__name__)
            # Drop what piled up while the peer was unreachable; Raft resends once told.
            n = 0
            while not self.queue.empty():
                self.queue.get_nowait()
                n += 1
            self._dropped(n)
            await asyncio.sleep(_REFUSED_BACKOFF if refused else backoff)
            backoff = min(backoff * 2, 0.5)

    def _refused(self, code: str, message: str) -> None:
        if REMOVED_MEMBER in message and self.on_removed:
            self.on_removed()
        self._refusals.warn(f"refused-by:{self.peer_id}:{code}",
                            f"peer {self.peer_id} at {self.address} refused our stream: "
                            f"{code}: {message}")

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write batches until the connection fails or the peer refuses us mid-stream
        (it speaks only to do that, or closes)."""
        listen = asyncio.create_task(self._listen(reader))
        write = asyncio.create_task(self._write(writer))
        try:
            done, _ = await asyncio.wait({listen, write}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            listen.cancel()
            write.cancel()
        for task in done:
            task.result()  # raises why the stream ended
        raise ConnectionError("stream ended")

    @staticmethod
    async def _listen(reader: asyncio.StreamReader) -> None:
        answer = decode_answer(await read_frame(reader, MAX_HELLO_BYTES))
        if answer is not None:
            raise answer
        raise FrameError("unexpected frame from the receiver")

    async def _write(self, writer: asyncio.StreamWriter) -> None:
        queue = self.queue
        transport = writer.transport
        while True:
            batch = await queue.get()
            frames = [frame(batch.SerializeToString())]
            while not queue.empty() and len(frames) < 1024:  # what waits goes in one write
                frames.append(frame(queue.get_nowait().SerializeToString()))
            if trace.ON:
                trace.event("frame-out")
            writer.write(b"".join(frames) if len(frames) > 1 else frames[0])
            if transport.get_write_buffer_size() > _WRITE_BUFFER_LIMIT:
                # The peer is not reading fast enough: wait, but not forever (a peer that
                # stopped reading must not wedge the stream; reconnecting re-probes it).
                await asyncio.wait_for(writer.drain(), _DRAIN_TIMEOUT)


class PeerTransport:
    def __init__(self, peers: dict[str, str], *, metadata: Metadata = (),
                 credentials: grpc.ChannelCredentials | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._metadata = metadata
        self._credentials = credentials
        self._tls = tls
        self.refusals = RefusalLog()
        self.senders = {pid: self._sender(pid, addr) for pid, addr in peers.items()}
        # Told when messages to a peer were lost, so replication to it re-probes.
        self.on_drop: Callable[[str], None] | None = None
        self.drop_from: set[str] = set()  # fault injection: ignore messages from these
        self._started = False
        # Told when a peer says this node was removed from the cluster.
        self.on_removed: Callable[[], None] | None = None

    def _report_drop(self, peer_id: str) -> None:
        if self.on_drop is not None:
            self.on_drop(peer_id)

    def _report_removed(self) -> None:
        if self.on_removed is not None:
            self.on_removed()

    def _sender(self, pid: str, addr: str) -> PeerSender:
        sender = PeerSender(pid, addr, self._report_drop, metadata=self._metadata,
                            credentials=self._credentials, tls=self._tls,
                            refusals=self.refusals)
        sender.on_removed = self._report_removed
        return sender

    def set_faults(self, drop_to: set[str], drop_from: set[str]) -> None:
        for pid, sender in self.senders.items():
            sender.blocked = pid in drop_to
        self.drop_from = set(drop_from)

    def receiving_blocked(self, peer_id: str) -> bool:
        return peer_id in self.drop_from

    async def send_snapshot(self, peer_id: str, path: str, node_id: str, term: int) -> None:
        """Stream the snapshot file at `path` to `peer_id`; raises on any failure."""
        sender = self.senders[peer_id]
        if sender.blocked:
            raise ConnectionError(f"traffic to {peer_id} is blocked (fault injection)")
        size = os.path.getsize(path)

        async def chunks() -> AsyncIterator[raft_pb2.SnapshotChunk]:
            with open(path, "rb") as f:
                while True:
                    data = await asyncio.to_thread(f.read, SNAPSHOT_CHUNK_BYTES)
                    if not data:
                        return
                    yield raft_pb2.SnapshotChunk(term=term, data=data, **{"from": node_id})

        async with open_channel(sender.address, self._credentials) as channel:
            stub = raft_pb2_grpc.RaftPeerStub(channel)
            # Generous: a large state over loopback or a slow link; a stuck transfer still ends.
            await stub.InstallSnapshot(chunks(), timeout=30.0 + size / (5 << 20),
                                       metadata=self._metadata)

    async def fetch_hash(self, peer_id: str, index: int) -> str | None:
        """`peer_id`'s hash of its state at the hash-check entry `index`, or None if it
        has none (yet). Raises on a transport failure."""
        sender = self.senders[peer_id]
        async with open_channel(sender.address, self._credentials) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            reply = await stub.HashCheck(admin_pb2.HashCheckRequest(index=index), timeout=5.0,
                                         metadata=self._metadata)
        return reply.digest if reply.found else None

    def start(self) -> None:
        self._started = True
        for s in self.senders.values():
            s.start()

    def set_peers(self, peers: dict[str, str]) -> None:
        """The membership changed: stream to exactly `peers` (id -> peer address) from now
        on. New peers get a sender, removed ones lose theirs, a moved peer a new one."""
        for pid in list(self.senders):
            if peers.get(pid) != self.senders[pid].address:
                sender = self.senders.pop(pid)
                asyncio.get_running_loop().create_task(sender.stop())
        for pid, addr in peers.items():
            if pid not in self.senders:
                sender = self._sender(pid, addr)
                self.senders[pid] = sender
                if self._started:
                    sender.start()

    async def stop(self) -> None:
        for s in self.senders.values():
            await s.stop()

    def send(self, messages: Iterable[Message]) -> None:
        by_peer: dict[str, list[raft_pb2.Message]] = {}
        for m in messages:
            by_peer.setdefault(m.dst, []).append(message_to_pb(m))
        for dst, pbs in by_peer.items():
            sender = self.senders.get(dst)
            if sender is not None:
                sender.enqueue(raft_pb2.MessageBatch(messages=pbs))
