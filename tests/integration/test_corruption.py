"""A node whose log is damaged refuses to start, naming what is damaged; the documented
`kvstore cluster resync` rebuilds it from the leader."""

from __future__ import annotations

import lmdb
import pytest

from kvstore.client import KVClient, KVError
from tests.integration.cluster_util import Cluster, wait_until

pytestmark = pytest.mark.integration


def _corrupt_log_entry(data_dir: str, index: int) -> None:
    env = lmdb.open(data_dir, max_dbs=300, subdir=True)
    try:
        with env.begin(write=True) as txn:
            log = env.open_db(b"log", txn=txn, create=False)
            key = index.to_bytes(8, "big")
            raw = bytearray(txn.get(key, db=log))
            raw[-1] ^= 0xFF  # flip bits in the entry's data; its checksum no longer matches
            txn.put(key, bytes(raw), db=log)
    finally:
        env.close()


def _stale(address: str, key: str) -> bytes | None:
    try:
        with KVClient([address], timeout=2.0) as c:
            return c.get(key, stale=True)
    except KVError:
        return None


def test_damaged_log_refuses_to_start_and_resync_rebuilds_the_node(cluster: Cluster) -> None:
    leader = cluster.leader()
    victim = next(n for n in cluster.ids if n != leader)
    with cluster.client() as client:
        for i in range(20):
            client.put(f"k{i}", f"v{i}")
    wait_until(lambda: _stale(cluster.address(victim), "k19") == b"v19", 10, "replication")
    cluster.ok("cluster", "stop", victim)
    data_dir = next(n["data_dir"] for n in cluster.state()["nodes"] if n["id"] == victim)
    _corrupt_log_entry(data_dir, 5)

    result = cluster.cli("cluster", "start", victim, "--timeout", "10")
    assert result.returncode != 0
    log_text = (cluster.dir / f"{victim}.log").read_text()
    assert "log entry 5" in log_text and "kvstore cluster resync" in log_text
    assert "Traceback" not in result.stderr

    out = cluster.ok("cluster", "resync", victim)
    assert "damaged" in out
    with cluster.client() as client:
        client.put("after", "resync")
    try:
        wait_until(lambda: _stale(cluster.address(victim), "after") == b"resync", 20,
                   f"{victim} to be rebuilt")
    except AssertionError:
        print(cluster.cli("cluster", "status").stdout)
        raise
    assert _stale(cluster.address(victim), "k7") == b"v7"
