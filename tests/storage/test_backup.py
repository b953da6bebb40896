"""Backup files (kvstore.storage.backup): what they record, that any damage is refused,
and that a restore builds a new cluster's data dir holding exactly the saved state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvstore.etcdpb import rpc_pb2
from kvstore.raft.types import Entry, EntryType
from kvstore.server.identity import CLUSTER_ID_FILE
from kvstore.state import commands
from kvstore.state.membership import Member
from kvstore.storage import backup
from kvstore.storage.backup import BackupError
from kvstore.storage.lmdb_store import LmdbNodeStore
from kvstore.storage.memory_store import MemoryNodeStore

ALL = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0")


def _source() -> MemoryNodeStore:
    """A store with history: puts, an overwrite, a delete, a lease, three members."""
    store = MemoryNodeStore(shards=4, vnodes=16)
    store.seed_members([Member(n, f"127.0.0.1:{9000 + i}") for i, n in enumerate(("a", "b", "c"))])
    data = [commands.encode_put(b"", 0, 0, f"k{i}".encode(), f"v{i}".encode()) for i in range(20)]
    data += [commands.encode_put(b"", 0, 0, b"k3", b"again"),
             commands.encode_lease_grant(77, 60)]
    entries = [Entry(2, i + 1, EntryType.NORMAL, d) for i, d in enumerate(data)]
    store.persist_and_apply(None, entries, entries)
    return store


def _backup_file(tmp_path: Path, store: MemoryNodeStore, cluster_id: str = "src") -> Path:
    snap = tmp_path / "state.snap"
    store.write_snapshot(str(snap))
    out = tmp_path / "backup.db"
    backup.write_backup(str(snap), str(out), cluster_id)
    return out


def test_the_header_says_what_the_file_holds(tmp_path: Path) -> None:
    store = _source()
    path = _backup_file(tmp_path, store)
    header, snapshot, sha = backup.read_backup(str(path))
    assert (header.revision, header.raft_index, header.raft_term) == (
        store.revisions()[0], store.applied_index(), 2)
    assert header.keys == 20 and header.members == 3 and header.member_ids == ("a", "b", "c")
    assert header.cluster_id == "src" and len(sha) == 64
    # etcdctl's `snapshot save` wants a length that is a multiple of 512 plus the hash.
    assert os.path.getsize(path) % 512 == 32
    assert snapshot.startswith(b"KVSNAP1\n")


@pytest.mark.parametrize("cut", [0, 5, 100, -33, -32, -1])
def test_a_truncated_file_is_refused(tmp_path: Path, cut: int) -> None:
    data = _backup_file(tmp_path, _source()).read_bytes()
    with pytest.raises(BackupError):
        backup.decode(data[:cut] if cut >= 0 else data[:len(data) + cut])


def test_any_altered_byte_is_refused(tmp_path: Path) -> None:
    data = bytearray(_backup_file(tmp_path, _source()).read_bytes())
    for pos in range(0, len(data), max(1, len(data) // 97)):
        altered = bytearray(data)
        altered[pos] ^= 0x40
        with pytest.raises(BackupError):
            backup.decode(bytes(altered))


def test_a_header_that_lies_about_the_snapshot_is_refused_by_restore(tmp_path: Path) -> None:
    """A well-formed file (its SHA-256 matches) whose header does not match its snapshot."""
    header, snapshot, _ = backup.read_backup(str(_backup_file(tmp_path, _source())))
    lie = backup.BackupHeader(**{**header.__dict__, "revision": header.revision + 1})
    path = tmp_path / "lie.db"
    path.write_bytes(backup.encode(lie, snapshot))
    members = [Member("x", "127.0.0.1:1")]
    with pytest.raises(BackupError, match="does not match its snapshot"):
        backup.restore_data_dir(str(path), str(tmp_path / "d"), "x", members)
    assert not (tmp_path / "d").exists()


def test_restore_builds_a_new_clusters_data_dir_with_the_saved_state(tmp_path: Path) -> None:
    store = _source()
    path = _backup_file(tmp_path, store)
    members = [Member("n1", "127.0.0.1:7101"), Member("n2", "127.0.0.1:7102")]
    header, cid = backup.restore_data_dir(str(path), str(tmp_path / "n1"), "n1", members)
    _, cid2 = backup.restore_data_dir(str(path), str(tmp_path / "n2"), "n2", members)
    assert cid == cid2 != "src"  # new, and the same for every member restored alike
    other = [Member("n1", "127.0.0.1:7101"), Member("n9", "127.0.0.1:7109")]
    assert backup.new_cluster_id(backup.read_backup(str(path))[2], other) != cid
    assert (tmp_path / "n1" / CLUSTER_ID_FILE).read_text().strip() == cid
    restored = LmdbNodeStore.open(str(tmp_path / "n1"), shards=4, vnodes=16)
    try:
        assert restored.members() == members and restored.removed_members() == []
        assert restored.revisions() == store.revisions()
        assert restored.applied_index() == header.raft_index
        assert restored.initial_state().term == header.raft_term
        got, _, _ = restored.range(ALL)
        want, _, _ = store.range(ALL)
        assert got == want  # keys, values, create/mod revisions, versions, leases
        assert restored.leases() == store.leases()
    finally:
        restored.close()


def test_restore_refuses_a_data_dir_with_data_and_a_member_not_in_the_membership(
        tmp_path: Path) -> None:
    path = _backup_file(tmp_path, _source())
    members = [Member("n1", "127.0.0.1:7101")]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    with pytest.raises(BackupError, match="already holds data"):
        backup.restore_data_dir(str(path), str(busy), "n1", members)
    assert sorted(p.name for p in busy.iterdir()) == ["something"]
    with pytest.raises(BackupError, match="not one of the members"):
        backup.restore_data_dir(str(path), str(tmp_path / "new"), "n7", members)
    empty = tmp_path / "empty"
    empty.mkdir()
    backup.restore_data_dir(str(path), str(empty), "n1", members)  # an empty dir is fine
    assert json.loads(json.dumps(backup.read_backup(str(path))[0].to_json()))["keys"] == 20
