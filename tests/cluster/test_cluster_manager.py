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
from kvstore.cluster.layout import (
    Layout,
    LayoutError,
    default_layout,
    layout_from_json,
    load_layout,
)
from kvstore.cluster.manager import (
    ClusterError,
    ClusterState,
    NodeRecord,
    _agreed_leader,
    load_state,
)
from tests.integration.cluster_util import free_port_range

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
        # Every file states its peer ports, by the same rule as `cluster up`.
        raw = json.loads(path.read_text())
        assert all(n["peer_port"] == n["port"] + 100 for n in raw["nodes"]), path


def test_definition_files_do_not_share_ports() -> None:
    """Each definition can run next to the others (the slow one used to sit on 7101)."""
    slow = load_layout(REPO / "cluster" / "local-3-slow.json")
    five = load_layout(REPO / "cluster" / "local-5.json")
    def ports(layout: Layout) -> set[str]:
        return {a for n in layout.nodes for a in (n.address, n.peer_address, n.metrics_address)}

    assert not ports(five) & ports(slow)


def test_default_layout_follows_the_contract() -> None:
    """Clients at base+i-1, peers at base+100+i-1, metrics at base+200+i-1; --peers names
    peer addresses."""
    layout = default_layout(4, base_port=9000)
    assert [(n.id, n.address, n.peer_address) for n in layout.nodes] == [
        ("n1", "127.0.0.1:9000", "127.0.0.1:9100"),
        ("n2", "127.0.0.1:9001", "127.0.0.1:9101"),
        ("n3", "127.0.0.1:9002", "127.0.0.1:9102"),
        ("n4", "127.0.0.1:9003", "127.0.0.1:9103"),
    ]
    args = layout.serve_args("n2", "/d/n2", ["--cluster-id", "c1"])
    assert args == [
        "--id",
        "n2",
        "--listen",
        "127.0.0.1:9001",
        "--listen-peer",
        "127.0.0.1:9101",
        "--listen-metrics",
        "http://127.0.0.1:9201",
        "--peers",
        "n1=127.0.0.1:9100,n3=127.0.0.1:9102,n4=127.0.0.1:9103",
        "--data-dir",
        "/d/n2",
        "--cluster-id",
        "c1",
    ]
    with pytest.raises(LayoutError):
        default_layout(2)
    with pytest.raises(LayoutError):
        default_layout(3, base_port=65534)
    with pytest.raises(LayoutError, match="peer"):
        default_layout(3, base_port=65450)  # the client ports fit, the peer ports do not
    with pytest.raises(LayoutError, match="metrics"):
        default_layout(3, base_port=65400)  # the peer ports fit, the metrics ports do not
    assert [n.metrics_url for n in layout.nodes] == [f"http://127.0.0.1:{9200 + i}"
                                                     for i in range(4)]


def test_definition_peer_ports_default_to_port_plus_100_or_are_given() -> None:
    layout = layout_from_json({"nodes": [{"id": "a", "port": 10}, {"id": "b", "port": 11,
                                                                    "peer_port": 500}]})
    assert [n.peer_address for n in layout.nodes] == ["127.0.0.1:110", "127.0.0.1:500"]
    with pytest.raises(LayoutError, match="duplicate"):  # b's peer port is a's client port
        layout_from_json({"nodes": [{"id": "a", "port": 10}, {"id": "b", "port": 11,
                                                               "peer_port": 10}]})


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
        {"nodes": [{"id": "a", "port": 1, "peer_port": 0}]},
        {"nodes": [{"id": "a", "port": 1, "peer_port": "2"}]},
        {"nodes": [{"id": "a", "port": 1, "metrics_port": 0}]},
        {"nodes": [{"id": "a", "port": 1}, {"id": "b", "port": 2, "metrics_port": 101}]},
    ],
)
def test_bad_definitions_are_rejected(data: dict[str, object]) -> None:
    with pytest.raises(LayoutError):
        layout_from_json(data)


def test_cluster_json_round_trip(tmp_path: Path) -> None:
    record = NodeRecord("n1", "127.0.0.1:7001", "127.0.0.1:7101", 42, str(tmp_path / "n1"), "l",
                        ["--id", "n1"], "http://127.0.0.1:7201")
    tls = {"ca": "/t/ca.crt", "cert": "/t/client.crt", "key": "/t/client.key"}
    ClusterState(tmp_path, "local-1", [record], "c0ffee", tls).save()
    data = json.loads((tmp_path / "cluster.json").read_text())
    assert data["cluster_id"] == "c0ffee"
    assert data["tls"] == tls
    assert data["nodes"][0] == {
        "id": "n1",
        "address": "127.0.0.1:7001",
        "peer_address": "127.0.0.1:7101",
        "pid": 42,
        "data_dir": str(tmp_path / "n1"),
        "log_file": "l",
        "serve_args": ["--id", "n1"],
        "metrics_url": "http://127.0.0.1:7201",
    }
    state = load_state(tmp_path)
    assert state.nodes == [record]
    assert (state.cluster_id, state.tls) == ("c0ffee", tls)
    client_tls = state.client_tls()
    assert client_tls is not None and (client_tls.ca, client_tls.cert) == ("/t/ca.crt",
                                                                           "/t/client.crt")
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.json"]  # no temp file left


def test_a_plaintext_cluster_json_has_no_tls(tmp_path: Path) -> None:
    record = NodeRecord("n1", "127.0.0.1:7001", "127.0.0.1:7101", None, "d", "l")
    ClusterState(tmp_path, "local-1", [record], "c0ffee").save()
    assert "tls" not in json.loads((tmp_path / "cluster.json").read_text())
    assert load_state(tmp_path).client_tls() is None


def test_malformed_tls_in_cluster_json_is_a_cluster_error(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps({"nodes": [], "tls": {"ca": 1}}))
    with pytest.raises(ClusterError, match="tls"):
        load_state(tmp_path)


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


def test_a_cluster_json_from_before_peer_ports_restarts_with_them(tmp_path: Path) -> None:
    """An old stopped cluster (no peer_address, no cluster_id) is resumed by `cluster up`:
    it gets the layout's peer ports and a cluster id its nodes adopt; no process starts."""
    from kvstore.cluster.manager import ClusterManager

    base = free_port_range(3)
    old = [{"id": f"n{i + 1}", "address": f"127.0.0.1:{base + i}", "pid": None,
            "data_dir": str(tmp_path / f"n{i + 1}"), "log_file": "", "serve_args": []}
           for i in range(3)]
    (tmp_path / "cluster.json").write_text(json.dumps({"version": 1, "nodes": old}))
    assert [r.metrics_url for r in load_state(tmp_path).nodes] == ["", "", ""]
    state = ClusterManager(tmp_path)._prepare_up(default_layout(3, base), tls=False)
    assert [r.peer_address for r in state.nodes] == [f"127.0.0.1:{base + 100 + i}"
                                                     for i in range(3)]
    assert state.cluster_id and "--cluster-id" in state.nodes[0].serve_args
    # ... and metrics URLs (an old cluster.json has none: they load as "").
    assert [r.metrics_url for r in state.nodes] == [f"http://127.0.0.1:{base + 200 + i}"
                                                    for i in range(3)]
    assert load_state(tmp_path).nodes[0].metrics_url == f"http://127.0.0.1:{base + 200}"
    assert load_state(tmp_path).cluster_id == state.cluster_id
    with pytest.raises(ClusterError, match="without --tls"):
        ClusterManager(tmp_path)._prepare_up(default_layout(3, base), tls=True)
    with pytest.raises(ClusterError, match="different layout"):
        ClusterManager(tmp_path)._prepare_up(default_layout(4, base), tls=False)
