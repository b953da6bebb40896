"""etcd's Maintenance.Snapshot: a backup of THIS member's state, streamed.

The member writes its state machine as of its applied index from one LMDB read
transaction (writers carry on meanwhile), wraps it as a backup file
(kvstore.storage.backup: a header with the revision, raft index and term, members and
key count, and a SHA-256 trailer as etcd appends one) in a temporary file next to its
data dir, and streams that file in chunks with the bytes remaining, as etcd does.
`etcdctl snapshot save FILE` and `kvstore snapshot save FILE` both take it.

The file is kvstore's format, not etcd's bbolt database: `etcdctl snapshot status` and
`etcdutl snapshot restore` cannot read it; `kvstore snapshot status|restore` can.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator

import grpc

from kvstore.etcdapi.common import EtcdNode
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.server.peer_service import BACKUP_WORK_PREFIX
from kvstore.server.request_error import RequestError
from kvstore.storage.backup import BackupError, write_backup

CHUNK_BYTES = 1 << 20


class EtcdSnapshotService:
    def __init__(self, node: EtcdNode, cluster_id: str, work_dir: str) -> None:
        self.node = node
        self.cluster_id = cluster_id
        self.work_dir = work_dir

    async def snapshot(self, request: pb.SnapshotRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SnapshotResponse]:
        try:
            self.node.check_local_read()  # a member being rebuilt has no state to give
        except RequestError as err:
            await context.abort(err.code, err.message)
        with tempfile.TemporaryDirectory(prefix=BACKUP_WORK_PREFIX, dir=self.work_dir) as tmp:
            raw = os.path.join(tmp, "state.snap")
            out = os.path.join(tmp, "backup")
            try:
                await asyncio.to_thread(self.node.store.write_snapshot, raw)
                header = await asyncio.to_thread(write_backup, raw, out, self.cluster_id)
            except (BackupError, OSError) as err:
                await context.abort(grpc.StatusCode.INTERNAL,
                                    f"etcdserver: snapshot failed: {err}")
            os.unlink(raw)
            size = os.path.getsize(out)
            sent = 0
            with open(out, "rb") as f:
                while True:
                    blob = await asyncio.to_thread(f.read, CHUNK_BYTES)
                    if not blob and sent:
                        return
                    sent += len(blob)
                    yield pb.SnapshotResponse(header=self.node.header(header.revision),
                                              remaining_bytes=size - sent, blob=blob)
                    if sent >= size:
                        return
