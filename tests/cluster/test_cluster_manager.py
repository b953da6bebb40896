"""Unit tests of the cluster manager's pieces: layouts, cluster.json, liveness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvstore.client import NodeStatus
from kvstore.cluster import process
from kvstore.cluster.layout import LayoutError, default_layout, layout_from_json, load_layout
from kvstore.cluster.manager import (
    ClusterError,
    ClusterState,
    NodeRecord,
    _agreed_leader,
    load_state,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("n", [3, 5])
def test_definition_files_match_the_builtin_defaults(n: int) -> None:
    from_file = load_layout(REPO / "cluster" / f"local-{n}.json")
    builtin = default_layout(n)
    assert from_file.nodes == builtin.nodes
    assert from_file.name == builtin.name
    assert from_file.settings == {}


def test_every_definition_file_parses() -> None:
    files = sorted((REPO / "cluster").glob("*.json"))
    assert len(files) >= 2
    for path in files:
        layout = load_layout(path)
        assert len(layout.nodes) >= 3


def test_default_layout_follows_the_contract() -> None:
    layout = default_layout(4, base_port=9000)
    assert [(n.id, n.address) for n in layout.nodes] == [
        ("n1", "127.0.0.1:9000"),
        ("n2", "127.0.0.1:9001"),
        ("n3", "127.0.0.1:9002"),
        ("n4", "127.0.0.1:9003"),
    ]
    args = layout.serve_args("n2", "/d/n2")
    assert args == [
        "--id",
        "n2",
        "--listen",
        "127.0.0.1:9001",
        "--peers",
        "n1=127.0.0.1:9000,n3=127.0.0.1:9002,n4=127.0.0.1:9003",
        "--data-dir",
        "/d/n2",
    ]
    with pytest.raises(LayoutError):
        default_layout(2)
    with pytest.raises(LayoutError):
        default_layout(3, base_port=65534)


def test_settings_become_serve_options() -> None:
    layout = layout_from_json(
        {"nodes": [{"id": "a", "port": 1}, {"id": "b", "port": 2}], "settings": {"tick_ms": 100}}
    )
    assert layout.serve_args("a", "/d")[-2:] == ["--tick-ms", "100"]


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"nodes": []},
        {"nodes": [{"id": "a b", "port": 1}]},
        {"nodes": [{"id": "a", "port": 0}]},
        {"nodes": [{"id": "a", "port": 1}, {"id": "a", "port": 2}]},
        {"nodes": [{"id": "a", "port": 1}, {"id": "b", "port": 1}]},
        {"nodes": [{"id": "a", "port": 1}], "settings": {"tick_ms": -1}},
    ],
)
def test_bad_definitions_are_rejected(data: dict[str, object]) -> None:
    with pytest.raises(LayoutError):
        layout_from_json(data)


def test_cluster_json_round_trip(tmp_path: Path) -> None:
    record = NodeRecord("n1", "127.0.0.1:7001", 42, str(tmp_path / "n1"), "l", ["--id", "n1"])
    ClusterState(tmp_path, "local-1", [record]).save()
    data = json.loads((tmp_path / "cluster.json").read_text())
    assert data["nodes"][0] == {
        "id": "n1",
        "address": "127.0.0.1:7001",
        "pid": 42,
        "data_dir": str(tmp_path / "n1"),
        "log_file": "l",
        "serve_args": ["--id", "n1"],
    }
    assert load_state(tmp_path).nodes == [record]
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.json"]  # no temp file left


def test_missing_cluster_json_is_a_cluster_error(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="no cluster"):
        load_state(tmp_path)


def _sleeper(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])


def test_a_zombie_counts_as_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _sleeper()
    try:
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process.proc_state(proc.pid) != "Z":  # not reaped yet: a zombie
            assert time.monotonic() < deadline, process.proc_state(proc.pid)
            time.sleep(0.01)
        os.kill(proc.pid, 0)  # signal 0 still "succeeds" on a zombie...
        # ...so pretend it is not our child (as for nodes started by an earlier CLI run).
        monkeypatch.setattr(process, "try_reap", lambda pid: False)
        assert not process.pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_our_own_child_is_reaped_when_checked() -> None:
    proc = _sleeper()
    proc.kill()
    deadline = time.monotonic() + 10
    while process.pid_alive(proc.pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)  # already reaped by pid_alive


def test_node_identity_is_checked_before_trusting_a_pid(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "n1")
    assert not process.is_node_process(os.getpid(), data_dir)  # alive, but not a node
    proc = _sleeper("serve", data_dir)
    try:
        assert process.is_node_process(proc.pid, data_dir)
        assert not process.is_node_process(proc.pid, str(tmp_path / "n2"))
    finally:
        proc.kill()
        proc.wait()
    assert not process.is_node_process(proc.pid, data_dir)


def _status(node_id: str, role: str, term: int, leader: str | None) -> NodeStatus:
    return NodeStatus(node_id, f"h:{node_id}", role, term, 0, 0, leader, True)


def test_leader_needs_a_majority_in_its_term() -> None:
    down = NodeStatus(None, "h:x", "down", None, None, None, None, False)
    assert _agreed_leader([_status("n1", "leader", 2, "n1"), down, down], 2) is None
    assert (
        _agreed_leader([_status("n1", "leader", 2, "n1"), _status("n2", "follower", 2, "n1")], 2)
        == "n1"
    )
    stale = [_status("n1", "leader", 1, "n1"), _status("n2", "follower", 2, "n1")]
    assert _agreed_leader(stale, 2) is None
