"""End-to-end tests: real `kvstore serve` processes on 127.0.0.1, driven by the CLI.

Run under `flock /tmp/kvstore-cluster-tests.lock` (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from cluster_util import Cluster, StartCluster, free_port_range, node_pids, run_cli, wait_until

from kvstore.client import AsyncKVClient, InvalidArgument, KVClient, Timeout, Unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STATUS_FIELDS = {
    "id",
    "address",
    "role",
    "term",
    "commit_index",
    "applied_index",
    "leader_id",
    "reachable",
}


def one_error_line(result: object, code: int = 1) -> str:
    rc, err = result.returncode, result.stderr  # type: ignore[attr-defined]
    assert rc == code, (rc, result.stdout, err)  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvstore: "), err
    return lines[0]


def stale_get(cluster: Cluster, node_id: str, key: str) -> dict[str, object] | None:
    """`get --stale --json` on one node; None if it does not have the key (yet)."""
    result = cluster.cli("get", key, "--stale", "--json", "--endpoints", cluster.address(node_id))
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- basics


def test_put_get_delete_via_cli(cluster: Cluster) -> None:
    assert cluster.ok("put", "greeting", "hello world") == "OK\n"
    assert cluster.ok("get", "greeting") == "hello world\n"
    assert cluster.ok("put", "greeting", "again") == "OK\n"
    assert cluster.ok("get", "greeting") == "again\n"
    assert cluster.ok("delete", "greeting") == "1\n"
    assert cluster.ok("delete", "greeting") == "0\n"
    missing = cluster.cli("get", "greeting")
    assert "greeting" in one_error_line(missing) and missing.stdout == ""
    # Explicit --endpoints: any single node is enough.
    assert cluster.ok("put", "k", "v", "--endpoints", cluster.endpoints[2]) == "OK\n"
    assert cluster.ok("get", "k", "--endpoints", ",".join(cluster.endpoints)) == "v\n"


def test_get_json(cluster: Cluster) -> None:
    cluster.ok("put", "jk", "jv")
    doc = json.loads(cluster.ok("get", "jk", "--json"))
    # The contract's fields, plus the key's revisions and the store revision read at.
    assert set(doc) == {"key", "value", "found", "node", "applied_index", "create_revision",
                        "mod_revision", "version", "revision"}
    assert (doc["key"], doc["value"], doc["found"]) == ("jk", "jv", True)
    assert doc["create_revision"] == doc["mod_revision"] <= doc["revision"]
    assert doc["version"] == 1
    assert doc["node"] in cluster.ids and doc["applied_index"] >= 1
    missing = cluster.cli("get", "nope", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["found"] is False
    assert "Traceback" not in missing.stderr


def test_put_get_delete_cas_via_clients(cluster: Cluster) -> None:
    with cluster.client() as client:
        client.put("a", "1")
        assert client.get("a") == b"1"
        assert client.get(b"missing") is None
        assert client.cas("a", "1", "2") is True
        assert client.cas("a", "1", "3") is False
        assert client.cas("b", None, "new") is True
        assert client.cas("b", None, "newer") is False
        assert client.get("a") == b"2" and client.get("b") == b"new"
        assert client.delete("a") is True and client.delete("a") is False
        binary = bytes(range(256))
        client.put(b"\xff\x00key", binary)
        assert client.get(b"\xff\x00key") == binary

    async def use_async() -> None:
        async with AsyncKVClient(cluster.endpoints, timeout=10.0) as aclient:
            await aclient.put("async", "yes")
            assert await aclient.get("async") == b"yes"
            assert await aclient.cas("async", "yes", "no") is True
            assert await aclient.delete("async") is True
            assert await aclient.get("async") is None
            results = await asyncio.gather(*(aclient.put(f"c{i}", str(i)) for i in range(20)))
            assert results == [None] * 20
            assert [await aclient.get(f"c{i}") for i in range(20)] == [
                str(i).encode() for i in range(20)
            ]

    asyncio.run(use_async())


def test_stale_get_on_a_follower(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(i for i in cluster.ids if i != leader)
    cluster.ok("put", "sk", "sv")
    doc = wait_until(lambda: stale_get(cluster, follower, "sk"), 10, "the follower to apply sk")
    assert (doc["value"], doc["node"]) == ("sv", follower)
    # A plain follower address also serves linearizable reads (via the leader hint).
    assert cluster.ok("get", "sk", "--endpoints", cluster.address(follower)) == "sv\n"
    with KVClient([cluster.address(follower)], timeout=10) as client:
        result = client.get_result("sk", stale=True)
        assert (result.value, result.node) == (b"sv", follower)


def test_status_json(cluster: Cluster) -> None:
    leader = cluster.leader()
    for args in (("status", "--json"), ("cluster", "status", "--json")):
        nodes = json.loads(cluster.ok(*args))["nodes"]
        assert [n["id"] for n in nodes] == cluster.ids
        assert [n["address"] for n in nodes] == cluster.endpoints
        for node in nodes:
            assert set(node) >= STATUS_FIELDS  # the contract's fields, plus operator extras
            assert node["reachable"] is True
            assert node["role"] in ("leader", "follower")
            assert node["leader_id"] == leader
            assert node["applied_index"] <= node["commit_index"]
        assert [n["id"] for n in nodes if n["role"] == "leader"] == [leader]
        (leader_node,) = [n for n in nodes if n["role"] == "leader"]
        assert sorted(f["id"] for f in leader_node["followers"]) == sorted(
            n for n in cluster.ids if n != leader)
    for args in (("status",), ("cluster", "status")):
        human = cluster.ok(*args).splitlines()
        table = [line for line in human if not line.startswith("followers of")]
        assert len(table) == 1 + len(cluster.ids)
        assert all(node_id in "\n".join(table) for node_id in cluster.ids)
        assert "SNAPSHOT" in table[0] and "LOG_SIZE" in table[0]
        assert any(line.startswith(f"followers of {leader}: ") for line in human)


# --------------------------------------------------------------------------- failures


def test_leader_killed_then_writes_continue_and_acknowledged_writes_survive(
    cluster: Cluster,
) -> None:
    with cluster.client() as client:
        for i in range(10):
            client.put(f"before{i}", f"v{i}")
    old = cluster.leader()
    old_pid = cluster.pid(old)
    stopped = cluster.ok("cluster", "stop", old, "--kill")
    assert f"stopped {old} (pid {old_pid}" in stopped
    assert cluster.pid(old) is None
    nodes = {n["id"]: n for n in cluster.status()}
    assert (nodes[old]["role"], nodes[old]["reachable"]) == ("down", False)

    # The client retries through the election within its deadline.
    assert cluster.ok("put", "after", "failover", "--timeout", "15") == "OK\n"
    new = cluster.leader(exclude=old)
    assert new != old
    with cluster.client() as client:
        for i in range(10):
            assert client.get(f"before{i}") == f"v{i}".encode()
        assert client.get("after") == b"failover"
    status = json.loads(cluster.ok("status", "--json"))["nodes"]
    assert [n["reachable"] for n in status].count(False) == 1


def test_restarted_node_catches_up(cluster: Cluster) -> None:
    leader = cluster.leader()
    victim = next(i for i in cluster.ids if i != leader)
    cluster.ok("put", "early", "1")
    cluster.ok("cluster", "stop", victim, "--kill")
    with cluster.client() as client:
        for i in range(20):
            client.put(f"missed{i}", str(i))
    out = cluster.ok("cluster", "start", victim)
    pid = cluster.pid(victim)
    assert pid and f"pid {pid}" in out
    doc = wait_until(lambda: stale_get(cluster, victim, "missed19"), 20, f"{victim} to catch up")
    assert (doc["value"], doc["node"]) == ("19", victim)
    assert stale_get(cluster, victim, "early")["value"] == "1"  # type: ignore[index]
    # Restarting the former leader works the same way.
    cluster.ok("cluster", "stop", leader)  # SIGTERM this time
    cluster.ok("put", "late", "x", "--timeout", "15")
    cluster.ok("cluster", "start", leader)
    wait_until(lambda: stale_get(cluster, leader, "late"), 20, f"{leader} to catch up")


def test_five_nodes(start_cluster: StartCluster) -> None:
    cluster = start_cluster(5)
    assert len(cluster.status()) == 5
    cluster.ok("put", "five", "nodes")
    assert cluster.ok("get", "five") == "nodes\n"
    with cluster.client() as client:
        client.put("x", "y")
        assert client.get("x") == b"y"
    # Five nodes survive two failures.
    leader = cluster.leader()
    others = [i for i in cluster.ids if i != leader]
    cluster.ok("cluster", "stop", leader, "--kill")
    cluster.ok("cluster", "stop", others[0], "--kill")
    assert cluster.ok("put", "still", "up", "--timeout", "15") == "OK\n"
    assert cluster.ok("get", "five", "--timeout", "15") == "nodes\n"


def test_minority_cannot_commit_but_serves_stale_reads(cluster: Cluster) -> None:
    cluster.ok("put", "kept", "old")
    leader = cluster.leader()
    survivor = next(i for i in cluster.ids if i != leader)
    wait_until(lambda: stale_get(cluster, survivor, "kept"), 10, f"{survivor} to apply kept")
    for node_id in cluster.ids:
        if node_id != survivor:
            cluster.ok("cluster", "stop", node_id, "--kill")

    started = time.monotonic()
    failed = cluster.cli("put", "kept", "new", "--timeout", "2")
    assert time.monotonic() - started < 2 + 8  # process start-up plus the 2 s deadline
    one_error_line(failed)
    with KVClient(cluster.endpoints, timeout=2.0) as client:
        started = time.monotonic()
        with pytest.raises((Unavailable, Timeout)):
            client.put("kept", "new")
        with pytest.raises((Unavailable, Timeout)):
            client.get("kept")
        assert time.monotonic() - started < 2 * 2 + 2
    doc = stale_get(cluster, survivor, "kept")
    assert doc is not None and doc["value"] == "old"
    nodes = json.loads(cluster.ok("status", "--json", "--timeout", "2"))["nodes"]
    assert sorted(n["reachable"] for n in nodes) == [False, False, True]


def test_cluster_start_on_a_running_node_and_up_on_a_running_dir_fail_cleanly(
    cluster: Cluster,
) -> None:
    pid = cluster.pid("n1")
    line = one_error_line(cluster.cli("cluster", "start", "n1"))
    assert "already running" in line and str(pid) in line
    assert cluster.pid("n1") == pid
    line = one_error_line(
        cluster.cli("cluster", "up", "--nodes", "3", "--base-port", str(cluster.base_port))
    )
    assert "running" in line
    one_error_line(cluster.cli("cluster", "start", "n9"))
    cluster.ok("put", "still", "fine")


def test_down_after_nodes_died_and_restart_on_existing_data(cluster: Cluster) -> None:
    cluster.ok("put", "durable", "yes")
    cluster.ok("cluster", "stop", "n1", "--kill")
    down = cluster.ok("cluster", "down")
    assert "n1 was not running" in down
    nodes = cluster.status()
    assert [n["role"] for n in nodes] == ["down"] * 3
    assert cluster.ok("cluster", "down").count("was not running") == 3
    # `cluster up` on the same dir and layout resumes the stopped cluster.
    cluster.ok("cluster", "up", "--nodes", "3", "--base-port", str(cluster.base_port))
    assert cluster.ok("get", "durable", "--timeout", "15") == "yes\n"


def test_cluster_up_without_a_leader_in_time_stops_what_it_started(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "slow"
    base = free_port_range(3)
    # Starting three Python processes takes longer than this, so no leader can be ready.
    result = run_cli(
        "cluster", "up", "--dir", str(directory), "--base-port", str(base), "--timeout", "0.2",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        line = one_error_line(result)
        assert "no leader elected within 0.2s" in line or "exited" in line
        nodes = json.loads((directory / "cluster.json").read_text())["nodes"]
        assert [n["pid"] for n in nodes] == [None, None, None]
        assert node_pids(directory) == []
        assert all((directory / f"n{i}.log").exists() for i in (1, 2, 3))
    finally:
        Cluster(directory, base, 3, tmp_path).kill_leftovers()


def test_bad_input_is_rejected_and_the_cluster_keeps_serving(cluster: Cluster) -> None:
    line = one_error_line(cluster.cli("put", "", "v"))
    assert "INVALID_ARGUMENT" in line
    one_error_line(cluster.cli("get", ""))
    with cluster.client() as client:
        for key, value in (("", "v"), ("k" * 4097, "v"), ("big", b"x" * ((1 << 20) + 1))):
            with pytest.raises(InvalidArgument) as info:
                client.put(key, value)
            assert not info.value.maybe_applied
        with pytest.raises(InvalidArgument):
            client.get("k" * 4097)
        with pytest.raises(InvalidArgument):
            client.delete("")
        # The limits themselves are accepted.
        client.put("k" * 4096, "max key")
        client.put("max-value", b"v" * (1 << 20))
        assert client.get("k" * 4096) == b"max key"
        assert client.get("max-value") == b"v" * (1 << 20)
    assert cluster.ok("put", "after-bad-input", "ok") == "OK\n"
    assert all(n["reachable"] for n in cluster.status())
