"""Cluster alarms end to end (as etcd's): a leader past --quota-backend-bytes raises NOSPACE
and puts are refused until space is freed and the alarm disarmed; a member whose state
was changed behind the log's back is named in a CORRUPT alarm by the hash check, and writes
stay refused until it is rebuilt (`kvstore cluster resync`) and the alarm disarmed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvstore.client import CorruptCluster, KVClient, KVError, NoSpace
from kvstore.storage.lmdb_store import LmdbNodeStore
from tests.integration.cluster_util import Cluster, StartCluster, wait_until

pytestmark = pytest.mark.integration

# An empty data dir measures one page (size_bytes() == 4096); a running node adds its log
# and session records. 1 MiB is reached after ~50 values of 16 KiB (each an LMDB overflow
# run of 5 pages in its shard), and falls far below it once they are deleted: the log is
# compacted every 10 entries, down to its last 2, so it never holds more than ~10 values.
QUOTA = 1 << 20
VALUE = b"x" * (16 << 10)
SNAPSHOT_ENTRIES = 10
MAX_PUTS = 400  # 6 MiB: far past the quota, so a missing alarm fails the test


def _alarms(cluster: Cluster) -> list[str]:
    out = cluster.ok("alarm", "list", "--timeout", "10")
    return [] if out.strip() == "no alarms" else out.splitlines()


def _stale(address: str, key: str) -> bytes | None:
    try:
        with KVClient([address], timeout=2.0) as c:
            return c.get(key, stale=True)
    except KVError:
        return None


def test_quota_raises_nospace_and_freeing_space_then_disarming_recovers(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3, {"quota_backend_bytes": QUOTA,
                                "snapshot_entries": SNAPSHOT_ENTRIES})
    leader = cluster.leader()
    written: list[str] = []
    with cluster.client() as client:
        for i in range(MAX_PUTS):
            try:
                client.put(f"big{i}", VALUE)
            except NoSpace as exc:
                assert not exc.maybe_applied
                break
            written.append(f"big{i}")
        else:
            pytest.fail(f"{MAX_PUTS} puts of {len(VALUE)} bytes never hit a {QUOTA}-byte quota")
        assert len(written) >= 10, "the quota was reached before any real data was written"

        assert _alarms(cluster) == [f"NOSPACE {leader}"]
        assert client.alarms() == [("NOSPACE", leader)]
        refused = cluster.cli("put", "one", "more", "--timeout", "10")
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert refused.stderr.count("\n") == 1
        assert "database space exceeded" in refused.stderr
        assert "kvstore alarm disarm" in refused.stderr
        with pytest.raises(NoSpace):
            client.cas("absent", None, "v")

        # Reads and deletes keep working under the alarm: that is how space is freed.
        assert client.get(written[0]) == VALUE
        for key in written:
            assert client.delete(key) is True
        # More (small) log entries, so the log is compacted past the deleted values.
        for i in range(3 * SNAPSHOT_ENTRIES):
            client.delete(f"absent{i}")
        assert client.get(written[0]) is None

        def disarmed_and_writable() -> bool:
            # A leader still past its quota would raise NOSPACE again at once.
            if client.disarm("NOSPACE") != []:
                return False
            try:
                client.put("after", "disarm")
            except NoSpace:
                return False
            return True

        wait_until(disarmed_and_writable, 30, "NOSPACE to be disarmed for good", poll=0.5)
        assert client.get("after") == b"disarm"
    assert _alarms(cluster) == []
    assert cluster.ok("put", "k", "v").strip() == "OK"


def _tamper(data_dir: str, value: bytes) -> None:
    """Change the record holding `value` in its shard database directly: a raw LMDB write
    that no log entry explains, as a disk or a bug might."""
    store = LmdbNodeStore.open(data_dir)
    try:
        env, dbs = store._env, store._dbs  # noqa: SLF001 - the test bypasses the store
        with env.begin(write=True) as txn:
            for name, db in dbs.items():
                if not name.startswith("shard-"):
                    continue
                for key, raw in txn.cursor(db=db):
                    if raw.endswith(value):  # an index record ends with the key's value
                        txn.put(key, raw[:-len(value)] + b"tampered", db=db)
                        return
        raise AssertionError(f"no shard record holds {value!r} in {data_dir}")
    finally:
        store.close()


def test_state_changed_behind_the_log_raises_corrupt_until_resync_and_disarm(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3, {"corrupt_check_interval": 1})
    leader = cluster.leader()
    victim = next(n for n in cluster.ids if n != leader)
    with cluster.client() as client:
        for i in range(10):
            client.put(f"k{i}", f"v{i}")
    wait_until(lambda: _stale(cluster.address(victim), "k9") == b"v9", 10, "replication")
    assert _alarms(cluster) == []  # members agree so far

    cluster.ok("cluster", "stop", victim)
    data_dir = next(n["data_dir"] for n in cluster.state()["nodes"] if n["id"] == victim)
    assert Path(data_dir).is_dir()
    _tamper(data_dir, b"v3")
    cluster.ok("cluster", "start", victim)

    wait_until(lambda: f"CORRUPT {victim}" in _alarms(cluster), 30,
               f"the CORRUPT alarm naming {victim}", poll=0.5)
    assert all(line.startswith("CORRUPT ") for line in _alarms(cluster))
    with cluster.client() as client:
        with pytest.raises(CorruptCluster) as info:
            client.put("k1", "new")
        assert not info.value.maybe_applied
        assert client.get("k1") == b"v1"  # reads keep working, and nothing was applied
        assert client.delete("k0") is True
    refused = cluster.cli("put", "k1", "new", "--timeout", "10")
    assert refused.returncode != 0 and "corrupt cluster" in refused.stderr
    assert refused.stderr.count("\n") == 1

    cluster.ok("cluster", "resync", victim)
    wait_until(lambda: _stale(cluster.address(victim), "k3") == b"v3", 30,
               f"{victim} to be rebuilt from the leader")
    with cluster.client() as client:

        def disarmed_and_writable() -> bool:
            # A check gathered before the rebuild may still name the victim once more.
            if client.disarm("CORRUPT", victim) != []:
                return False
            try:
                client.put("after", "resync")
            except CorruptCluster:
                return False
            return True

        wait_until(disarmed_and_writable, 30, "CORRUPT to be disarmed for good", poll=0.5)
        assert client.get("after") == b"resync"
        # The next checks (one a second) agree: the alarm stays down.
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            assert client.alarms() == []
            time.sleep(0.5)
    wait_until(lambda: _stale(cluster.address(victim), "after") == b"resync", 10,
               f"{victim} to follow again")
