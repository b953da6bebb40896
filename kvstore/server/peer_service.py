"""The receiving side of the peer protocol: other nodes' message streams and snapshots.

Served on the peer port only. Every call is admitted by the PeerGate first (cluster
id, a configured sender; see identity.py): a refused call is aborted before a single
message is read. Within an admitted stream, a message must name the stream's sender
as its source: a member may speak only for itself.

InstallSnapshot writes the chunks to a temporary file in the data dir as they come,
so a large (or endless) stream costs disk up to --max-snapshot-bytes and no memory;
a stream past the limit is aborted and its file removed. The runtime still takes a
snapshot as bytes (NodeRuntime.deliver_snapshot verifies and stages it in memory),
so the complete file is read back once at the end; the limit bounds that too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

import grpc

from kvstore.raft.types import Message
from kvstore.server.identity import PeerGate, RefusalLog, Refused
from kvstore.server.outcomes import SnapshotRefused
from kvstore.server.wire import message_from_pb
from kvstore.v1 import raft_pb2, raft_pb2_grpc

log = logging.getLogger(__name__)

INCOMING_PREFIX = "incoming-snapshot-"
INCOMING_SUFFIX = ".tmp"

DeliverSnapshot = Callable[[str, int, bytes], None]  # (sender, its term, the file's bytes)


BACKUP_WORK_PREFIX = ".backup-"  # kvstore.etcdapi.snapshot_service's temporary dirs


def remove_incoming(directory: str) -> int:
    """Delete snapshot files left by a receive, and backup work dirs left by a
    Maintenance.Snapshot, that a crash cut off; returns how many."""
    n = 0
    for name in os.listdir(directory):
        if name.startswith(INCOMING_PREFIX) and name.endswith(INCOMING_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                n += 1
        elif name.startswith(BACKUP_WORK_PREFIX):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            n += 1
    return n


def deliver_batch(src: str, batch: raft_pb2.MessageBatch, refusals: RefusalLog,
                  deliver: Callable[[Message], None],
                  blocked: Callable[[str], bool] | None) -> None:
    """Hand a batch from the admitted peer `src` to the node, message by message: one
    that claims another sender or does not validate is dropped with a warning (once a
    minute per kind), and the rest go on; everything is dropped while fault injection
    blocks `src`. Shared by the gRPC stream and the frame stream (peer_frames.py)."""
    if blocked is not None and blocked(src):
        return
    for pb in batch.messages:
        claimed = getattr(pb, "from")
        if claimed != src:
            refusals.warn(f"spoof:{src}:{claimed}",
                          f"dropped a message from {src} that claims to be from {claimed!r}")
            continue
        try:
            m = message_from_pb(pb)
        except ValueError as err:  # malformed: drop it, keep the stream
            refusals.warn(f"malformed:{src}", f"dropped a malformed message from {src}: {err}")
            continue
        deliver(m)


class RaftPeerService(raft_pb2_grpc.RaftPeerServicer):
    """Admits peers' streams and snapshots and hands what they carry to the node's driver."""

    def __init__(
        self,
        gate: PeerGate,
        deliver: Callable[[Message], None],
        blocked: Callable[[str], bool] | None = None,
        deliver_snapshot: DeliverSnapshot | None = None,
        *,
        snapshot_dir: str,
        max_snapshot_bytes: int,
    ) -> None:
        self.gate = gate
        self._deliver = deliver
        self._blocked = blocked
        self._deliver_snapshot = deliver_snapshot
        self.snapshot_dir = snapshot_dir
        self.max_snapshot_bytes = max_snapshot_bytes

    async def _admit(self, context: grpc.aio.ServicerContext, what: str) -> str:
        try:
            return self.gate.admit(context.invocation_metadata(), what, context.peer())
        except Refused as refusal:
            await context.abort(getattr(grpc.StatusCode, refusal.code), str(refusal))
            raise  # unreachable: abort raises

    async def Stream(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        src = await self._admit(context, "peer stream")
        refusals = self.gate.refusals
        async for batch in request_iterator:
            if src in self.gate.removed:
                # Removed while its stream was open: end the stream with the answer that
                # tells it so (the gate refuses it again when it reconnects).
                await self._admit(context, "peer stream")
            deliver_batch(src, batch, refusals, self._deliver, self._blocked)
        return raft_pb2.StreamAck()

    async def InstallSnapshot(self, request_iterator, context):  # noqa: N802
        src = await self._admit(context, "snapshot")
        if self._deliver_snapshot is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "snapshots not accepted")
        if self._blocked is not None and self._blocked(src):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "blocked (fault injection)")
        fd, path = tempfile.mkstemp(prefix=INCOMING_PREFIX, suffix=INCOMING_SUFFIX,
                                    dir=self.snapshot_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                term = await self._receive(src, request_iterator, f, context)
            data = await asyncio.to_thread(_read, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        try:
            self._deliver_snapshot(src, term, data)
        except SnapshotRefused as err:  # intact perhaps, but not ours to take now
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except ValueError as err:  # damaged
            await context.abort(grpc.StatusCode.DATA_LOSS, str(err))
        return raft_pb2.SnapshotAck()

    async def _receive(self, src: str, request_iterator: AsyncIterator[raft_pb2.SnapshotChunk],
                       f: BinaryIO, context: grpc.aio.ServicerContext) -> int:
        """Write the chunks to ``f`` under the size limit; returns the sender's term."""
        size = 0
        term: int | None = None
        async for chunk in request_iterator:
            if getattr(chunk, "from") != src:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"snapshot chunk claims to be from {getattr(chunk, 'from')!r}"
                                    f", the stream is from {src}")
            if term is None:
                term = chunk.term
            elif chunk.term != term:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "snapshot chunks carry different terms")
            size += len(chunk.data)
            if size > self.max_snapshot_bytes:
                self.gate.refusals.warn(
                    f"too-large:{src}",
                    f"refused a snapshot from {src}: larger than --max-snapshot-bytes "
                    f"{self.max_snapshot_bytes}")
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"snapshot larger than this node's limit of {self.max_snapshot_bytes} "
                    "bytes (--max-snapshot-bytes)")
            await asyncio.to_thread(f.write, chunk.data)
        if term is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty snapshot")
        await asyncio.to_thread(f.flush)
        assert term is not None
        return term


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
