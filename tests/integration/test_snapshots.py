"""Log compaction and InstallSnapshot on real processes: a follower that fell behind the
compacted log, and one whose data dir was wiped, both catch up from a snapshot."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from kvstore.client import KVClient, KVError
from kvstore.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc
from tests.integration.cluster_util import StartCluster, wait_until

pytestmark = pytest.mark.integration

SETTINGS = {"snapshot_entries": 40}


def _status(address: str) -> kv_pb2.StatusResponse:
    with grpc.insecure_channel(address) as channel:
        return kv_pb2_grpc.KVStub(channel).Status(kv_pb2.StatusRequest(), timeout=5)


def _digest(address: str) -> tuple[int, tuple[str, ...]]:
    with grpc.insecure_channel(address) as channel:
        d = admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(), timeout=5)
    return d.applied_index, tuple(d.shard_digests)


def _converged(cluster) -> bool:
    try:
        return len({_digest(cluster.peer_address(n)) for n in cluster.ids}) == 1
    except grpc.RpcError:
        return False


def _stale(address: str, key: str) -> bytes | None:
    try:
        with KVClient([address], timeout=2.0) as c:
            return c.get(key, stale=True)
    except KVError:
        return None


@pytest.mark.parametrize("wipe", [False, True], ids=["lagging", "wiped"])
def test_follower_catches_up_from_a_snapshot(start_cluster: StartCluster, wipe: bool) -> None:
    cluster = start_cluster(3, settings=SETTINGS)
    leader = cluster.leader()
    follower = next(n for n in cluster.ids if n != leader)
    cluster.ok("cluster", "stop", follower)
    if wipe:
        data_dir = next(n["data_dir"] for n in cluster.state()["nodes"] if n["id"] == follower)
        shutil.rmtree(data_dir)
    with cluster.client() as client:
        for i in range(200):
            client.put(f"key-{i % 60}", f"value-{i}")
    # The leader compacted past everything the stopped follower has.
    assert _status(cluster.address(leader)).snapshot_index > 100
    cluster.ok("cluster", "start", follower)
    wait_until(lambda: _stale(cluster.address(follower), "key-19") == b"value-199", 20,
               f"{follower} to catch up")
    wait_until(lambda: _converged(cluster), 20, "equal digests on every node")
    st = _status(cluster.address(follower))
    assert st.snapshot_index >= 100  # its log starts after the installed snapshot
    with cluster.client() as client:  # and it keeps replicating afterwards
        client.put("after", "snapshot")
    wait_until(lambda: _stale(cluster.address(follower), "after") == b"snapshot", 20,
               f"{follower} to replicate after the snapshot")
    log_text = (cluster.dir / f"{follower}.log").read_text()
    assert "installed snapshot" in log_text


def test_log_stays_bounded_under_sustained_writes(start_cluster: StartCluster) -> None:
    cluster = start_cluster(3, settings=SETTINGS)
    with cluster.client() as client:
        for i in range(400):
            client.put(f"k{i % 10}", "x" * 100)
    for node in cluster.ids:

        def applied(node: str = node) -> kv_pb2.StatusResponse | None:
            st = _status(cluster.address(node))
            return st if st.applied_index >= 400 else None

        st = wait_until(applied, 10, f"{node} applied")
        assert st.last_log_index - st.snapshot_index <= SETTINGS["snapshot_entries"] + 5


def test_a_snapshot_over_the_receivers_limit_is_refused(start_cluster: StartCluster) -> None:
    """Every node runs with --max-snapshot-bytes 4096; the state grows past it while a
    follower is down, so the snapshot it needs is refused mid-stream (and the partial
    file removed), and the cluster keeps serving without it."""
    cluster = start_cluster(3, settings={**SETTINGS, "max_snapshot_bytes": 4096})
    leader = cluster.leader()
    follower = next(n for n in cluster.ids if n != leader)
    cluster.ok("cluster", "stop", follower)
    with cluster.client() as client:
        for i in range(200):
            client.put(f"key-{i % 60}", "v" * 200)  # 60 keys of 200 bytes: about 14 KB
    assert _status(cluster.address(leader)).snapshot_index > 100
    cluster.ok("cluster", "start", follower)
    follower_log = cluster.dir / f"{follower}.log"
    wait_until(lambda: "larger than --max-snapshot-bytes 4096" in follower_log.read_text(), 30,
               f"{follower} to refuse the snapshot")
    wait_until(lambda: f"snapshot to {follower} failed" in
               (cluster.dir / f"{leader}.log").read_text(), 30, f"{leader} to see the refusal")
    with cluster.client() as client:
        client.put("after", "limit")
        assert client.get("after") == b"limit"
    assert _stale(cluster.address(follower), "key-1") is None
    assert "installed snapshot" not in follower_log.read_text()
    data_dir = next(n["data_dir"] for n in cluster.state()["nodes"] if n["id"] == follower)
    wait_until(lambda: not any(p.name.startswith("incoming-snapshot-")
                               for p in Path(data_dir).iterdir()),
               10, "no partial snapshot file left")
