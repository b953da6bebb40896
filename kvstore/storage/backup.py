"""Backup files: a member's whole state at one applied index, as `kvstore snapshot save`
and etcd's Maintenance.Snapshot produce it, and the restore that builds a NEW cluster's
data dirs from one.

Layout::

    MAGIC                      b"KVBACKUP1\\n"
    u32 length + JSON header   format, cluster id, revision, compacted revision, raft index
                               and term, members, keys, shard layout, creation time
    u64 length + snapshot      the state machine in kvstore.storage.snapshot_file's format
                               (the one InstallSnapshot streams; it has its own CRC32)
    zero padding               to a multiple of 512 bytes
    SHA-256                    32 bytes over everything before them

The SHA-256 trailer is what etcd appends to its own snapshot stream, so a file can be
checked before anything is read from it; the padding makes the file's length what
etcdctl's `snapshot save` checks for (a multiple of 512, plus the 32-byte hash), so
etcdctl saves it. The header repeats what the snapshot holds (its
revision, raft index and term, its key count) so that `snapshot status` and an operator
see them without loading it; a restore checks them against the snapshot itself.

Restore does not resume the old cluster: it makes a new one (a new cluster id, the
membership given to it), whose state at the file's raft index is exactly the saved one,
revisions included. Every member is restored from the same file with the same
membership, so all start from identical data dirs; the cluster id derives from the file
and the membership unless one is given, so restoring members one by one on different
machines agrees on it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kvstore.etcdpb import rpc_pb2
from kvstore.raft.types import HardState
from kvstore.state.membership import Member
from kvstore.storage.errors import StorageError
from kvstore.storage.memory_store import MemoryNodeStore

MAGIC = b"KVBACKUP1\n"
FORMAT_VERSION = 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
SHA_BYTES = 32
PAGE_BYTES = 512
MAX_HEADER_BYTES = 1 << 20


class BackupError(Exception):
    """A backup file that cannot be used (truncated, altered, foreign) or a restore that
    would overwrite data; the message is one line for the user."""


@dataclass(frozen=True)
class BackupHeader:
    format: int
    cluster_id: str
    revision: int
    compact_revision: int
    raft_index: int
    raft_term: int
    members: int
    member_ids: tuple[str, ...]
    keys: int
    shards: int
    vnodes: int
    created: float

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["member_ids"] = list(self.member_ids)
        return data


def describe_state(snapshot: bytes, cluster_id: str) -> BackupHeader:
    """The header for `snapshot` (a snapshot_file byte string): loads it into memory to
    read its revision, key count and membership (and so also verifies it)."""
    from kvstore.storage.snapshot_file import read as read_snapshot

    try:
        snap_header, _ = read_snapshot(snapshot)
    except (StorageError, struct.error, IndexError) as err:
        raise BackupError(f"the snapshot inside is damaged: {err}") from None
    store = MemoryNodeStore(shards=snap_header.shards, vnodes=snap_header.vnodes)
    try:
        store.install_snapshot(snapshot, None)
    except StorageError as err:
        raise BackupError(f"the snapshot inside is damaged: {err}") from None
    revision, compacted = store.revisions()
    members = store.members()
    return BackupHeader(
        format=FORMAT_VERSION, cluster_id=cluster_id, revision=revision,
        compact_revision=compacted, raft_index=snap_header.index, raft_term=snap_header.term,
        members=len(members), member_ids=tuple(m.id for m in members),
        keys=_key_count(store), shards=snap_header.shards, vnodes=snap_header.vnodes,
        created=round(time.time(), 3))


def _key_count(store: MemoryNodeStore) -> int:
    resp, _, _ = store.range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0",
                                                  count_only=True))
    return resp.count


def encode(header: BackupHeader, snapshot: bytes) -> bytes:
    raw = json.dumps(header.to_json(), sort_keys=True).encode()
    body = b"".join([MAGIC, _U32.pack(len(raw)), raw, _U64.pack(len(snapshot)), snapshot])
    body += bytes(-len(body) % PAGE_BYTES)
    return body + hashlib.sha256(body).digest()


def write_backup(snapshot_path: str, out_path: str, cluster_id: str) -> BackupHeader:
    """Turn a snapshot file (LmdbNodeStore.write_snapshot's) into a backup file at
    `out_path`, written to a temporary name, fsynced and renamed."""
    with open(snapshot_path, "rb") as f:
        snapshot = f.read()
    header = describe_state(snapshot, cluster_id)
    tmp = f"{out_path}.part"
    with open(tmp, "wb") as f:
        f.write(encode(header, snapshot))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_path)
    return header


def decode(data: bytes) -> tuple[BackupHeader, bytes, str]:
    """(header, snapshot bytes, sha256 hex) of a backup file's bytes; BackupError if it is
    not one, is truncated, or does not match its SHA-256."""
    if not data.startswith(MAGIC):
        raise BackupError("not a kvstore backup file (no KVBACKUP1 header)")
    if len(data) < len(MAGIC) + _U32.size + _U64.size + SHA_BYTES:
        raise BackupError("the backup file is truncated")
    body, trailer = data[:-SHA_BYTES], data[-SHA_BYTES:]
    digest = hashlib.sha256(body).digest()
    if digest != trailer:
        raise BackupError("the backup file is truncated or altered: its SHA-256 does not "
                          "match")
    off = len(MAGIC)
    (hlen,) = _U32.unpack_from(body, off)
    off += _U32.size
    if hlen > MAX_HEADER_BYTES or off + hlen + _U64.size > len(body):
        raise BackupError("the backup file's header is malformed")
    try:
        raw = json.loads(body[off:off + hlen])
        raw["member_ids"] = tuple(raw["member_ids"])
        header = BackupHeader(**raw)
    except (ValueError, TypeError, KeyError) as err:
        raise BackupError(f"the backup file's header is malformed: {err}") from None
    off += hlen
    (slen,) = _U64.unpack_from(body, off)
    off += _U64.size
    end = off + slen
    if end > len(body) or len(body) - end >= PAGE_BYTES or any(body[end:]):
        raise BackupError("the backup file's length does not match its header")
    if header.format != FORMAT_VERSION:
        raise BackupError(f"backup format {header.format} is not supported "
                          f"(this kvstore reads format {FORMAT_VERSION})")
    return header, bytes(body[off:end]), digest.hex()


def read_backup(path: str) -> tuple[BackupHeader, bytes, str]:
    """decode() of the file at `path`; BackupError also when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise BackupError(f"cannot read {path}: {err.strerror}") from None
    return decode(data)


def new_cluster_id(sha256_hex: str, members: Sequence[Member]) -> str:
    """A cluster id every member restored from the same file with the same membership
    computes alike (etcd derives its new cluster id from the membership and a token)."""
    text = sha256_hex + "|" + ",".join(f"{m.id}={m.peer_address}" for m in sorted(members))
    return "r" + hashlib.sha256(text.encode()).hexdigest()[:15]


def restore_data_dir(path: str, data_dir: str, node_id: str, members: Sequence[Member],
                     cluster_id: str | None = None) -> tuple[BackupHeader, str]:
    """Build `data_dir` for member `node_id` of a new cluster of `members` from the backup
    at `path`; returns (the file's header, the new cluster id). Refuses (BackupError) a
    data dir that exists and is not empty, a damaged file, and a membership without
    `node_id`. Built in a temporary directory and renamed into place, so a failure
    leaves nothing behind."""
    from kvstore.server.identity import IdentityError, check_cluster_id, settle_cluster_id
    from kvstore.storage.lmdb_store import LmdbNodeStore

    if node_id not in {m.id for m in members}:
        raise BackupError(f"--id {node_id} is not one of the members "
                          f"({', '.join(sorted(m.id for m in members))})")
    if os.path.exists(data_dir) and (not os.path.isdir(data_dir) or os.listdir(data_dir)):
        raise BackupError(f"data dir {data_dir} already holds data: restore only into an "
                          "empty or new directory")
    header, snapshot, sha = read_backup(path)
    cid = cluster_id or new_cluster_id(sha, members)
    try:
        check_cluster_id(cid)
    except ValueError as err:
        raise BackupError(str(err)) from None
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(data_dir))}.restoring")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        store = LmdbNodeStore.open(tmp, shards=header.shards, vnodes=header.vnodes)
        try:
            meta = store.install_snapshot(
                snapshot, HardState(header.raft_term, "", header.raft_index))
            if (meta.index, meta.term) != (header.raft_index, header.raft_term) or \
                    store.revisions()[0] != header.revision:
                raise BackupError("the backup file's header does not match its snapshot")
            store.reset_members(members)
            settle_cluster_id(tmp, cid)  # with the store open: the data dir is locked
        finally:
            store.close()
        if os.path.isdir(data_dir):
            os.rmdir(data_dir)  # empty (checked above)
        os.replace(tmp, data_dir)
    except (StorageError, IdentityError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupError(f"restore failed: {err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return header, cid
