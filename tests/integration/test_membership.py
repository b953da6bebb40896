"""Membership changes on real node processes: `kvstore cluster add-node/remove-node`,
`kvstore member ...`, `kvstore move-leader`, etcdctl's member commands with
`kvstore serve --join`, and a client that keeps writing while the cluster grows and
shrinks.

Run under `flock /tmp/kvstore-cluster-tests.lock`. Every process started here is stopped
in a `finally` (`cluster down`, then SIGKILL by the PIDs recorded in cluster.json; a node
started by the test itself by its Popen). Waits poll with deadlines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_util import (
    Cluster,
    cli_env,
    free_port_range,
    run_cli,
    stop_local_cluster,
    wait_until,
)

from kvstore.client import KVClient, KVError, Timeout, Unavailable
from kvstore.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ETCDCTL = shutil.which("etcdctl")


class Grown(Cluster):
    """A Cluster whose nodes come and go: ids and addresses from cluster.json."""

    def nodes(self) -> dict[str, dict[str, object]]:
        return {n["id"]: n for n in self.state()["nodes"]}

    def address(self, node_id: str) -> str:
        return str(self.nodes()[node_id]["address"])

    @property
    def endpoints(self) -> list[str]:
        return [str(n["address"]) for n in self.nodes().values()]

    def members(self) -> list[dict[str, object]]:
        return json.loads(self.ok("member", "list", "--json"))["members"]

    def voters(self) -> list[str]:
        return sorted(str(m["name"]) for m in self.members() if not m["learner"])


@pytest.fixture
def grown(tmp_path: Path) -> Iterator[Grown]:
    """A 3-node cluster on a base port with room for n4..n6 (client, peer, metrics)."""
    base = free_port_range(6)
    cluster = Grown(tmp_path / "c", base, 3, tmp_path)
    try:
        result = run_cli("cluster", "up", "--nodes", "3", "--base-port", str(base),
                         "--dir", str(cluster.dir), cwd=tmp_path)
        assert result.returncode == 0, result.stderr + cluster.log_tails()
        cluster.leader()
        yield cluster
    finally:
        leftovers = stop_local_cluster(cluster)
        assert not leftovers, f"node processes survived: {leftovers}"


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvstore: "), result.stderr
    return lines[0]


def stale_value(cluster: Grown, node_id: str, key: str) -> str | None:
    result = cluster.cli("get", key, "--stale", "--endpoints", cluster.address(node_id))
    return result.stdout.strip() if result.returncode == 0 else None


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in "ZX"


def test_add_remove_replace_and_refusals(grown: Grown) -> None:
    for i in range(20):
        grown.ok("put", f"k{i}", f"v{i}")
    out = grown.ok("cluster", "add-node")
    assert out.startswith("added n4 ") and "now a voter" in out, out
    assert grown.voters() == ["n1", "n2", "n3", "n4"]
    assert wait_until(lambda: stale_value(grown, "n4", "k19") == "v19", 10, "n4 has the data")

    # A learner that stays one; then the refusals.
    out = grown.ok("cluster", "add-node", "--learner")
    assert "added n5 " in out and "now a learner" in out, out
    assert [m["name"] for m in grown.members() if m["learner"]] == ["n5"]
    status = json.loads(grown.ok("cluster", "status", "--json"))["nodes"]
    assert {n["id"]: n["learner"] for n in status}["n5"] is True
    assert "learner" in grown.ok("cluster", "status")
    err = one_error_line(grown.cli("member", "promote", "n2"))
    assert "can only promote a learner member" in err
    grown.ok("member", "promote", "n5")
    assert grown.voters() == ["n1", "n2", "n3", "n4", "n5"]

    # Remove a voter: 4 left, the process stops, writes go on.
    pid1 = grown.pid("n1")
    out = grown.ok("cluster", "remove-node", "n1")
    assert "n1 removed from the cluster" in out, out
    assert pid1 is not None and wait_until(lambda: pid_gone(pid1), 10, "n1 to exit")
    assert "n1" not in grown.nodes()
    grown.ok("put", "after-remove", "yes")
    err = one_error_line(grown.cli("cluster", "start", "n1"))
    assert "n1 was removed" in err

    # Replace a dead node: kill -9 n2, remove it, add a fresh one (n6: 1 is never reused).
    pid2 = grown.pid("n2")
    assert pid2 is not None
    os.kill(pid2, signal.SIGKILL)
    wait_until(lambda: pid_gone(pid2), 10, "n2 to die")
    grown.ok("cluster", "remove-node", "n2")
    assert "added n6 " in grown.ok("cluster", "add-node")
    assert grown.voters() == ["n3", "n4", "n5", "n6"]
    grown.ok("put", "last", "x")
    for key, value in [("k0", "v0"), ("k19", "v19"), ("after-remove", "yes"), ("last", "x")]:
        assert wait_until(lambda k=key, v=value: stale_value(grown, "n6", k) == v, 10,
                          f"{key} on n6")
    # The replacement's whole state, not just a sample: every member's shard digests at
    # the same applied index.
    def digests() -> dict[str, tuple[int, tuple[str, ...]]] | None:
        found = {}
        for nid, node in grown.nodes().items():
            with grpc.insecure_channel(str(node["peer_address"])) as channel:
                d = admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(),
                                                             timeout=5)
            found[nid] = (d.applied_index, tuple(d.shard_digests))
        return found if len(set(found.values())) == 1 else None

    assert set(wait_until(digests, 15, "equal digests on every member")) == {
        "n3", "n4", "n5", "n6"}

    # move-leader, by node id; then by etcd's hex id.
    target = next(n for n in ("n6", "n5") if n != grown.leader())
    assert f"leadership moved to {target}" in grown.ok("move-leader", target)
    assert grown.leader() == target
    hex_id = next(m["id"] for m in grown.members() if m["name"] == "n4")
    grown.ok("move-leader", str(hex_id))
    assert grown.leader() == "n4"

    # Quorum refusal: back to 3 voters, one of them down; removing a live one would
    # leave 1 of 2 voters up.
    grown.ok("cluster", "remove-node", "n6")
    assert grown.voters() == ["n3", "n4", "n5"]
    grown.ok("cluster", "stop", "n5")
    err = one_error_line(grown.cli("member", "remove", "n3", "--timeout", "5"))
    assert "unhealthy cluster" in err
    assert grown.voters() == ["n3", "n4", "n5"]
    # Added nodes restart with their recorded arguments.
    grown.ok("cluster", "start", "n5")
    grown.ok("cluster", "stop", "n4")
    grown.ok("cluster", "start", "n4")
    grown.leader()
    grown.ok("put", "restarted", "ok")
    assert wait_until(lambda: stale_value(grown, "n4", "restarted") == "ok", 10, "n4 data")
    grown.ok("cluster", "down")
    grown.ok("cluster", "start", "n5")  # with nobody to --join: the recorded data is enough
    assert grown.nodes()["n5"]["pid"]


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not installed (Debian etcd-client)")
def test_etcdctl_member_commands_and_serve_join(grown: Grown, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    endpoints = ",".join(grown.endpoints)

    def etcdctl(*args: str) -> str:
        assert ETCDCTL is not None
        result = subprocess.run([ETCDCTL, f"--endpoints={endpoints}", "--command-timeout=10s",
                                 *args], capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    assert sorted(line.split(", ")[2] for line in etcdctl("member", "list").splitlines()) \
        == ["n1", "n2", "n3"]
    client_port, peer_port = grown.base_port + 5, grown.base_port + 105
    etcdctl("member", "add", "extra", f"--peer-urls=http://127.0.0.1:{peer_port}", "--learner")
    log = (tmp_path / "extra.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore.cli", "serve", "--listen", f"127.0.0.1:{client_port}",
         "--listen-peer", f"127.0.0.1:{peer_port}", "--data-dir", str(tmp_path / "extra"),
         "--join", grown.endpoints[0]],
        stdout=log, stderr=subprocess.STDOUT, env=cli_env(), cwd=tmp_path)
    try:
        def learner_line() -> list[str] | None:
            for line in etcdctl("member", "list").splitlines():
                fields = line.split(", ")
                if fields[3].endswith(f":{peer_port}") and fields[4]:
                    return fields
            return None

        fields = wait_until(learner_line, 20, "the joined learner in the member list")
        hex_id, name = fields[0], fields[2]
        assert name.startswith("node-") and fields[5] == "true"

        def promoted() -> bool:
            result = subprocess.run([ETCDCTL or "", f"--endpoints={endpoints}", "member",
                                     "promote", hex_id], capture_output=True, text=True,
                                    env=env, timeout=30)
            return result.returncode == 0

        wait_until(promoted, 20, "etcdctl member promote")
        assert grown.voters() == sorted(["n1", "n2", "n3", name])
        etcdctl("move-leader", hex_id)

        def leader_is_new() -> bool:
            with KVClient(grown.endpoints, timeout=2.0) as c:
                return all(s.leader_id == name for s in c.status())

        wait_until(leader_is_new, 15, f"every node to follow {name}")
        etcdctl("member", "remove", hex_id)
        assert proc.wait(timeout=20) == 0  # the removed leader stops itself
        assert grown.voters() == ["n1", "n2", "n3"]
        grown.leader()
        grown.ok("put", "after", "etcdctl")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_client_keeps_writing_while_the_cluster_grows_and_shrinks(grown: Grown) -> None:
    original = list(grown.endpoints)
    acked: list[str] = []
    errors: list[KVError] = []
    stop = threading.Event()
    client = KVClient(original, timeout=15.0)

    def writer() -> None:
        i = 0
        while not stop.is_set():
            key = f"load/{i:06d}"
            try:
                client.put(key, str(i))
            except (Unavailable, Timeout) as exc:  # documented as retryable
                errors.append(exc)
            except KVError as exc:  # anything else fails the test below
                errors.append(exc)
            else:
                acked.append(key)
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acked) >= 20, 20, "the writer to get going")
        grown.ok("cluster", "add-node")
        grown.ok("cluster", "add-node")
        assert grown.voters() == ["n1", "n2", "n3", "n4", "n5"]
        # Remove the original leader and one more original node.
        leader = grown.leader()
        grown.ok("cluster", "remove-node", leader)
        other = next(n for n in ("n1", "n2", "n3") if n != leader)
        grown.ok("cluster", "remove-node", other)
        count = len(acked)
        wait_until(lambda: len(acked) >= count + 20, 30, "writes after the shrink")
    finally:
        stop.set()
        thread.join(timeout=30)
    try:
        assert not thread.is_alive()
        assert all(isinstance(e, (Unavailable, Timeout)) for e in errors), errors
        # The client learned the new members' addresses from the member list.
        learned = set(client._core.router.endpoints)
        assert {grown.address("n4"), grown.address("n5")} <= learned, learned
    finally:
        client.close()
    assert len(grown.voters()) == 3
    with KVClient(grown.endpoints, timeout=15.0) as reader:
        result = reader.range("load/", prefix=True)
        stored = {bytes(kv.key).decode() for kv in result.kvs}
    missing = [k for k in acked if k not in stored]
    assert not missing, missing[:10]
