"""Every CLI failure is one line on stderr, a non-zero exit, and never a traceback.

These tests start no kvstore nodes: they use closed ports, bad input and
hand-written cluster.json files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_util import Run, assert_one_line_error, cli_env

pytestmark = pytest.mark.timeout(120)


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def write_cluster_json(directory: Path, nodes: list[dict[str, object]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cluster.json"
    path.write_text(json.dumps({"nodes": nodes}))
    return path


def fake_node(directory: Path, node_id: str, address: str, pid: int | None) -> dict[str, object]:
    return {
        "id": node_id,
        "address": address,
        "pid": pid,
        "data_dir": str(directory / node_id),
        "log_file": str(directory / f"{node_id}.log"),
        "serve_args": ["--id", node_id, "--listen", address, "--listen-peer", closed_port()]
        + ["--data-dir", str(directory / node_id)],
    }


# --------------------------------------------------------------------------- unreachable


@pytest.mark.parametrize(
    "args",
    [
        ["put", "k", "v"],
        ["get", "k"],
        ["get", "k", "--stale"],
        ["get", "k", "--json"],
        ["delete", "k"],
    ],
)
def test_unreachable_endpoint_fails_fast_with_one_line(kvstore: Run, args: list[str]) -> None:
    started = time.monotonic()
    result = kvstore(*args, "--endpoints", closed_port(), "--timeout", "0.5")
    assert time.monotonic() - started < 10
    line = assert_one_line_error(result, "127.0.0.1")
    assert result.returncode == 1
    assert "failed to connect" in line or "timed out" in line


def test_unreachable_endpoints_from_the_environment(kvstore: Run) -> None:
    endpoints = f"{closed_port()},{closed_port()}"
    result = kvstore("put", "k", "v", "--timeout", "0.5", env={"KVSTORE_ENDPOINTS": endpoints})
    assert_one_line_error(result, *endpoints.split(","))


def test_status_of_unreachable_nodes_is_not_an_error(kvstore: Run) -> None:
    dead = closed_port()
    result = kvstore("status", "--json", "--endpoints", dead, "--timeout", "1")
    assert result.returncode == 0, result.stderr
    (node,) = json.loads(result.stdout)["nodes"]
    assert node["address"] == dead and node["reachable"] is False and node["role"] == "down"
    human = kvstore("status", "--endpoints", dead, "--timeout", "1")
    assert human.returncode == 0 and dead in human.stdout and "down" in human.stdout


def test_interrupt_prints_one_line_and_exits_130(tmp_path: Path) -> None:
    # A listener that accepts and never answers: once it accepts, the CLI is inside the call.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(30)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore.cli", "put", "k", "v"]
            + ["--endpoints", f"127.0.0.1:{port}", "--timeout", "60"],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            conn, _ = server.accept()
            conn.close()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130
    assert err.strip() == "kvstore: interrupted"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "endpoints", ["localhost", "127.0.0.1:", ":7001", "127.0.0.1:99999", "h:x", "a:1,,b", "", " "]
)
def test_bad_endpoints_syntax(kvstore: Run, endpoints: str) -> None:
    result = kvstore("get", "k", "--endpoints", endpoints, "--timeout", "1")
    assert_one_line_error(result, "--endpoints")
    assert result.returncode == 2


def test_bad_endpoints_in_the_environment(kvstore: Run) -> None:
    result = kvstore("get", "k", env={"KVSTORE_ENDPOINTS": "nope"})
    assert_one_line_error(result, "KVSTORE_ENDPOINTS", "nope")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["put", "k"], "VALUE"),
        (["get"], "KEY"),
        (["frobnicate"], "frobnicate"),
        (["put", "k", "v", "--timeout", "0"], "--timeout"),
        (["put", "k", "v", "--timeout", "-1"], "--timeout"),
        (["get", "k", "--bogus"], "--bogus"),
        (["cluster", "up", "--nodes", "2"], "--nodes"),
        (["cluster", "up", "--nodes", "6"], "--nodes"),
        (["cluster", "up", "--config", "x.json", "--nodes", "3"], "--config"),
        (["cluster", "stop"], "NODE_ID"),
    ],
)
def test_usage_errors(kvstore: Run, args: list[str], needle: str) -> None:
    result = kvstore(*args)
    assert_one_line_error(result, needle)
    assert result.returncode == 2


def test_no_arguments_prints_help(kvstore: Run) -> None:
    result = kvstore()
    assert result.returncode == 0 and "cluster" in result.stdout and result.stderr == ""


SERVE = ["--id", "n1", "--listen", "127.0.0.1:1", "--listen-peer", "127.0.0.1:2",
         "--data-dir", "d"]
PEER_TLS = ["--peer-cert-file", "c", "--peer-key-file", "k", "--peer-trusted-ca-file", "ca"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (SERVE + ["--peers", "n2"], "n2"),
        (SERVE + ["--peers", "n2=x"], "x"),
        (SERVE + ["--peers", "n2=127.0.0.1:2,n2=127.0.0.1:3"], "twice"),
        (SERVE + ["--peers", "n1=127.0.0.1:9"], "--listen-peer"),
        (["--id", "n1", "--listen", "nowhere", "--listen-peer", "127.0.0.1:2", "--data-dir", "d"],
         "--listen"),
        (["--id", "n1", "--listen", "127.0.0.1:1", "--data-dir", "d"], "--listen-peer"),
        (["--id", "n1", "--listen", "127.0.0.1:1", "--listen-peer", "127.0.0.1:1",
          "--data-dir", "d"], "must differ"),
        (["--id", "n1", "--listen", "0.0.0.0:1", "--listen-peer", "127.0.0.1:2",
          "--data-dir", "d"], "--advertise-client"),
        (SERVE + ["--tick-ms", "0"], "tick"),
        (SERVE + ["--cluster-id", "no spaces"], "--cluster-id"),
        (SERVE + ["--max-snapshot-bytes", "0"], "--max-snapshot-bytes"),
        (SERVE + ["--cert-file", "c"], "--key-file"),
        (SERVE + ["--client-cert-auth"], "--cert-file"),
        (SERVE + ["--cert-file", "c", "--key-file", "k", "--client-cert-auth"],
         "--trusted-ca-file"),
        (SERVE + PEER_TLS[:4], "--peer-trusted-ca-file"),
        (SERVE + ["--peer-cert-allowed-cn", "x"], "peer TLS"),
    ],
)
def test_serve_rejects_bad_arguments(kvstore: Run, args: list[str], needle: str) -> None:
    assert_one_line_error(kvstore("serve", *args), needle)


# --------------------------------------------------------------------------- cluster.json


def test_missing_cluster_json(kvstore: Run, tmp_path: Path) -> None:
    for args in (["put", "k", "v"], ["get", "k"], ["delete", "k"], ["status"]):
        assert_one_line_error(kvstore(*args), "cluster.json", "--endpoints")
    assert not (tmp_path / "kvstore-cluster").exists()


def test_dir_option_is_used_to_find_cluster_json(kvstore: Run, tmp_path: Path) -> None:
    dead = closed_port()
    write_cluster_json(tmp_path / "c", [fake_node(tmp_path / "c", "n1", dead, None)])
    result = kvstore("put", "k", "v", "--dir", str(tmp_path / "c"), "--timeout", "0.5")
    assert_one_line_error(result, dead)
    status = kvstore("status", "--json", "--dir", str(tmp_path / "c"), "--timeout", "1")
    assert status.returncode == 0
    (node,) = json.loads(status.stdout)["nodes"]
    assert (node["id"], node["reachable"]) == ("n1", False)  # named from cluster.json


def test_malformed_cluster_json(kvstore: Run, tmp_path: Path) -> None:
    (tmp_path / "kvstore-cluster").mkdir()
    (tmp_path / "kvstore-cluster" / "cluster.json").write_text("{not json")
    assert_one_line_error(kvstore("get", "k"), "cluster.json")
    assert_one_line_error(kvstore("cluster", "status"), "cluster.json")
    (tmp_path / "kvstore-cluster" / "cluster.json").write_text('{"nodes": [{"id": "n1"}]}')
    assert_one_line_error(kvstore("cluster", "down"), "malformed")


@pytest.mark.parametrize(
    "args",
    [
        ["cluster", "status"],
        ["cluster", "status", "--json"],
        ["cluster", "down"],
        ["cluster", "stop", "n1"],
        ["cluster", "start", "n1"],
    ],
)
def test_cluster_commands_on_an_empty_dir(kvstore: Run, tmp_path: Path, args: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(kvstore(*args, "--dir", str(empty)), "no cluster")
    assert list(empty.iterdir()) == []  # a failed command leaves no lock file behind


def test_cluster_start_and_stop_of_an_unknown_node(kvstore: Run, tmp_path: Path) -> None:
    d = tmp_path / "c"
    write_cluster_json(d, [fake_node(d, "n1", closed_port(), None)])
    assert_one_line_error(kvstore("cluster", "start", "n9", "--dir", str(d)), "n9", "n1")
    assert_one_line_error(kvstore("cluster", "stop", "n9", "--dir", str(d)), "n9")


def test_cluster_status_and_down_with_dead_nodes_succeed(kvstore: Run, tmp_path: Path) -> None:
    d = tmp_path / "c"
    # Our own pid is alive but is not this node's server: it must be treated as stopped
    # (and, above all, never signalled).
    write_cluster_json(
        d,
        [fake_node(d, "n1", closed_port(), os.getpid()), fake_node(d, "n2", closed_port(), None)],
    )
    status = kvstore("cluster", "status", "--json", "--dir", str(d))
    assert status.returncode == 0, status.stderr
    nodes = json.loads(status.stdout)["nodes"]
    assert [(n["id"], n["role"], n["reachable"]) for n in nodes] == [
        ("n1", "down", False),
        ("n2", "down", False),
    ]
    down = kvstore("cluster", "down", "--dir", str(d))
    assert down.returncode == 0, down.stderr
    assert "n1 was not running" in down.stdout and "n2 was not running" in down.stdout
    stop = kvstore("cluster", "stop", "n1", "--dir", str(d))
    assert stop.returncode == 0 and "not running" in stop.stdout


def test_cluster_start_of_a_node_that_cannot_start(kvstore: Run, tmp_path: Path) -> None:
    d = tmp_path / "c"
    node = fake_node(d, "n1", closed_port(), None)
    node["serve_args"] = ["--id", "n1", "--listen", "not-an-address", "--listen-peer",
                          closed_port(), "--data-dir", str(d / "n1")]
    write_cluster_json(d, [node])
    result = kvstore("cluster", "start", "n1", "--dir", str(d), "--timeout", "20")
    assert_one_line_error(result, "n1", "exited", "n1.log")
    assert json.loads((d / "cluster.json").read_text())["nodes"][0]["pid"] is None


def test_cluster_up_refuses_ports_in_use(kvstore: Run, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = kvstore("cluster", "up", "--dir", str(tmp_path / "c"), "--base-port", str(port))
    assert_one_line_error(result, "in use", f"127.0.0.1:{port}")
    assert not (tmp_path / "c" / "cluster.json").exists()


def test_cluster_up_with_a_missing_or_bad_config(kvstore: Run, tmp_path: Path) -> None:
    assert_one_line_error(kvstore("cluster", "up", "--config", "missing.json"), "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [{"id": "n1", "port": 1}], "settings": {"color": 1}}))
    assert_one_line_error(kvstore("cluster", "up", "--config", str(bad)), "color")


def test_cluster_up_refuses_a_dir_with_running_nodes(kvstore: Run, tmp_path: Path) -> None:
    d = tmp_path / "c"
    (d / "n1").mkdir(parents=True)
    # A process that looks like n1's server (its argv has "serve" and n1's data dir).
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(120)", "serve", str(d / "n1")]
    )
    try:
        write_cluster_json(d, [fake_node(d, "n1", closed_port(), proc.pid)])
        result = kvstore("cluster", "up", "--dir", str(d), "--base-port", "7001")
        assert_one_line_error(result, "already has running nodes", f"pid {proc.pid}")
        again = kvstore("cluster", "start", "n1", "--dir", str(d))
        assert_one_line_error(again, "already running", str(proc.pid))
        stop = kvstore("cluster", "stop", "n1", "--dir", str(d))
        assert stop.returncode == 0, stop.stderr
        assert f"stopped n1 (pid {proc.pid}, SIGTERM)" in stop.stdout
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert json.loads((d / "cluster.json").read_text())["nodes"][0]["pid"] is None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- TLS settings


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--cert", "c.crt"], {}, "--key"),
        (["--cacert", "missing-ca.crt"], {}, "missing-ca.crt"),
        ([], {"KVSTORE_CACERT": "env-ca.crt"}, "env-ca.crt"),
    ],
)
def test_bad_client_tls_settings_are_one_line(
    kvstore: Run, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = kvstore("get", "k", "--endpoints", closed_port(), *args, env=env)
    assert_one_line_error(result, needle)


def test_a_file_that_is_not_pem_is_named(kvstore: Run, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    result = kvstore("get", "k", "--endpoints", closed_port(), "--cacert", "ca.crt")
    assert_one_line_error(result, "ca.crt", "PEM")


def test_serve_with_a_missing_certificate_fails_before_starting(
    kvstore: Run, tmp_path: Path
) -> None:
    result = kvstore(
        "serve", "--id", "n1", "--listen", closed_port(), "--listen-peer", closed_port(),
        "--data-dir", str(tmp_path / "n1"), "--cluster-id", "c1",
        "--cert-file", "nope.crt", "--key-file", "nope.key",
    )  # fmt: skip
    assert_one_line_error(result, "--key-file", "nope.key")
    assert not (tmp_path / "n1" / "CLUSTER_ID").exists()


def test_serve_without_a_cluster_id_on_a_new_data_dir_refuses(
    kvstore: Run, tmp_path: Path
) -> None:
    result = kvstore("serve", "--id", "n1", "--listen", closed_port(), "--listen-peer",
                     closed_port(), "--data-dir", str(tmp_path / "n1"))
    assert_one_line_error(result, "--cluster-id")
