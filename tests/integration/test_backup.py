"""Backups on real processes: `kvstore snapshot save` while clients write, restored with
`kvstore cluster restore` into a NEW 3-node cluster whose every key, value and revision
equals the source's at the snapshot's revision; damaged files refused by status and
restore; `etcdctl snapshot save` against kvstore."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kvstore.client import KVClient, KVError
from tests.etcdapi.etcdctl_util import ETCDCTL, NO_ETCDCTL, etcdctl
from tests.integration.cluster_util import (
    Cluster,
    free_port_range,
    run_cli,
    stop_local_cluster,
    wait_until,
)

pytestmark = pytest.mark.integration


def _everything(client: KVClient, revision: int = 0) -> list[tuple]:
    result = client.range(b"\0", b"\0", revision=revision)
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in result.kvs]


def _offline(cwd: Path, *args: str):  # noqa: ANN202 - `snapshot status|restore` take no --dir
    return run_cli(*args, cwd=cwd, timeout=120)


def _one_error_line(result) -> str:  # noqa: ANN001
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_save_under_load_and_restore_into_a_new_cluster(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    stop = threading.Event()
    acked: list[str] = []

    def write() -> None:
        with cluster.client() as client:
            i = 0
            while not stop.is_set():
                try:
                    client.put(f"load/{i:06d}", f"v{i}")
                    if i % 7 == 0:
                        client.put(f"load/{i // 7:06d}", f"overwritten {i}")
                    if i % 11 == 0:
                        client.delete(f"load/{i // 2:06d}")
                except KVError:
                    pass
                else:
                    acked.append(f"load/{i:06d}")
                i += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        wait_until(lambda: len(acked) > 200 or None, 30, "writes before the save")
        file = tmp_path / "backup.db"
        out = cluster.ok("snapshot", "save", str(file))
        assert "saved" in out and "revision" in out
        wait_until(lambda: len(acked) > 400 or None, 30, "writes after the save")
    finally:
        stop.set()
        writer.join(timeout=30)
    status = json.loads(_offline(tmp_path, "snapshot", "status", str(file), "--json").stdout)
    revision = status["revision"]
    assert status["keys"] > 0 and status["members"] == 3 and status["sha256"]
    with cluster.client() as client:
        want = _everything(client, revision)
        assert client.range(b"\0", b"\0").revision > revision  # the cluster moved on
    assert len(want) == status["keys"]

    restored = Cluster(tmp_path / "restored", free_port_range(3), 3, tmp_path)
    try:
        result = run_cli("cluster", "restore", str(file), "--nodes", "3", "--base-port",
                         str(restored.base_port), "--dir", str(restored.dir), cwd=tmp_path,
                         timeout=120)
        assert result.returncode == 0, result.stderr
        new_id = restored.state()["cluster_id"]
        assert new_id != cluster.state()["cluster_id"]
        with restored.client() as client:
            got = client.range(b"\0", b"\0")
            assert got.revision == revision
            assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version,
                     kv.lease) for kv in got.kvs] == want
            client.put("after-restore", "x")  # a working cluster, revisions go on
            assert client.range(b"after-restore").kvs[0].mod_revision == revision + 1
        members = json.loads(restored.ok("member", "list", "--json"))["members"]
        assert sorted(m["name"] for m in members) == ["n1", "n2", "n3"]
        # A second restore into a directory that holds a cluster is refused.
        again = run_cli("cluster", "restore", str(file), "--dir", str(restored.dir),
                        cwd=tmp_path, timeout=60)
        assert "already holds a cluster" in _one_error_line(again)
    finally:
        stop_local_cluster(restored)


def test_damaged_files_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ok("put", "k", "v")
    file = tmp_path / "good.db"
    cluster.ok("snapshot", "save", str(file))
    data = file.read_bytes()
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(data[: len(data) // 2])
    altered = tmp_path / "altered.db"
    altered.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    for bad in (truncated, altered):
        line = _one_error_line(_offline(tmp_path, "snapshot", "status", str(bad)))
        assert "truncated or altered" in line, line
        line = _one_error_line(_offline(
            tmp_path, "snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "x"),
            "--id", "a", "--peers", "a=127.0.0.1:1"))
        assert "truncated or altered" in line, line
        assert not (tmp_path / "x").exists()


def test_etcdctl_snapshot_save_against_kvstore(cluster: Cluster, tmp_path: Path) -> None:
    if ETCDCTL is None:
        pytest.skip(NO_ETCDCTL)
    cluster.ok("put", "k", "v")
    file = tmp_path / "etcdctl.db"
    # etcdctl wants exactly one endpoint for a snapshot; a follower's will do.
    result = etcdctl([cluster.endpoints[1]], "snapshot", "save", str(file))
    assert result.returncode == 0, result.stderr
    status = json.loads(_offline(tmp_path, "snapshot", "status", str(file), "--json").stdout)
    assert status["keys"] == 1 and status["members"] == 3
