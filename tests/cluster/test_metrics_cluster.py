"""Metrics and health of real node processes on 127.0.0.1.

Starts node processes: run under `flock /tmp/kvstore-cluster-tests.lock`. Every process
started here is stopped in a `finally` (the cluster with `cluster down` and, for what
survives, SIGKILL by the PID recorded in its cluster.json; single nodes by their Popen).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.cluster_util import (
    cli_env,
    free_port_range,
    run_cli,
    start_local_cluster,
    stop_local_cluster,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def scrape(metrics_url: str) -> Samples:
    code, body = get(f"{metrics_url}/metrics")
    assert code == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def grpc_health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator:
    directory = tmp_path / "cluster"
    started = None
    try:
        started = start_local_cluster(directory, tmp_path, 3)
        yield started
    finally:
        if started is None:  # a failed `up` may have left processes and a cluster.json
            from tests.integration.cluster_util import Cluster
            started = Cluster(directory, 0, 3, tmp_path)
        leftovers = stop_local_cluster(started)
        assert not leftovers, f"node processes survived teardown: {leftovers}"


def test_a_cluster_serves_metrics_and_health(cluster) -> None:
    nodes = cluster.state()["nodes"]
    urls = {n["id"]: n["metrics_url"] for n in nodes}
    assert urls == {f"n{i + 1}": f"http://127.0.0.1:{cluster.base_port + 200 + i}"
                    for i in range(3)}
    puts = 20
    with cluster.client() as client:
        for i in range(puts):
            client.put(f"key{i}".encode(), b"value")

    def settled() -> dict[str, Samples] | None:
        got = {node_id: scrape(url) for node_id, url in urls.items()}
        leaders = [n for n, s in got.items() if s[("kvstore_server_is_leader", ())] == 1]
        if len(leaders) != 1:
            return None
        if not all(s[("kvstore_server_has_leader", ())] == 1
                   and s[("kvstore_server_proposals_applied_total", ())] >= puts
                   for s in got.values()):
            return None
        rtt = [v for (name, _), v in got[leaders[0]].items()
               if name == "kvstore_network_peer_round_trip_time_seconds_count"]
        return got if len(rtt) == 2 and all(v > 0 for v in rtt) else None

    got = wait_until(settled, 30, "every node applied the puts under one leader")
    (leader,) = [n for n, s in got.items() if s[("kvstore_server_is_leader", ())] == 1]
    followers = sorted(set(urls) - {leader})
    lag = {dict(labels)["follower"]: v for (name, labels), v in got[leader].items()
           if name == "kvstore_server_follower_lag_entries"}
    assert sorted(lag) == followers and all(v >= 0 for v in lag.values())
    for node_id, s in got.items():
        assert s[("kvstore_server_id", (("server_id", node_id),))] == 1
        assert s[("kvstore_disk_wal_fsync_duration_seconds_count", ())] > 0
        assert s[("kvstore_disk_backend_commit_duration_seconds_count", ())] > 0
        assert s[("kvstore_mvcc_db_total_size_in_bytes", ())] > 0
        assert s[("kvstore_server_proposals_committed_total", ())] >= \
            s[("kvstore_server_proposals_applied_total", ())]
        assert s[("kvstore_server_leader_changes_seen_total", ())] >= 1
        assert s[("kvstore_mvcc_current_revision", ())] >= puts
        assert s[("kvstore_server_watchers", ())] == 0
        code, body = get(f"{urls[node_id]}/health")
        assert (code, json.loads(body)) == (200, {"health": "true", "reason": ""})
    for address in cluster.endpoints:
        for service in ("", "kvstore.v1.KV"):
            assert grpc_health(address, service) == health_pb2.HealthCheckResponse.SERVING


def test_a_single_node_logs_json_and_turns_healthy(tmp_path: Path) -> None:
    base = free_port_range(1)
    metrics_url = f"http://127.0.0.1:{base + 200}"
    log_path = tmp_path / "n1.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore.cli", "serve", "--id", "n1", "--cluster-id",
             "c0ffee", "--listen", f"127.0.0.1:{base}", "--listen-peer",
             f"127.0.0.1:{base + 100}", "--data-dir", str(tmp_path / "n1"),
             "--listen-metrics", metrics_url, "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=cli_env(),
            cwd=tmp_path)
    try:
        def healthy() -> bool:
            code, body = get(f"{metrics_url}/health")
            return code == 200 and json.loads(body)["health"] == "true"

        wait_until(healthy, 30, "the single node to elect itself")
        assert grpc_health(f"127.0.0.1:{base}") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            grpc_health(f"127.0.0.1:{base}", "no.such.Service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
    lines = log_path.read_text().splitlines()
    assert lines, "the node logged nothing"
    records = [json.loads(line) for line in lines]
    assert all(set(r) >= {"ts", "level", "node", "logger", "msg"} and r["node"] == "n1"
               for r in records)
    assert any("serving /metrics and /health" in r["msg"] for r in records)
    assert proc.returncode == 0


@pytest.mark.parametrize("url", ["127.0.0.1:9999", "https://127.0.0.1:9999",
                                 "http://127.0.0.1:99999", "http://127.0.0.1"])
def test_a_bad_metrics_url_is_one_line_of_error(tmp_path: Path, url: str) -> None:
    result = run_cli("serve", "--id", "n1", "--listen", "127.0.0.1:1", "--listen-peer",
                     "127.0.0.1:2", "--data-dir", str(tmp_path / "d"), "--listen-metrics", url,
                     cwd=tmp_path)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--listen-metrics" in lines[0], result.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_a_busy_metrics_port_is_one_line_of_error(tmp_path: Path) -> None:
    base = free_port_range(1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 200))
        busy.listen()
        result = run_cli("serve", "--id", "n1", "--cluster-id", "c0ffee",
                         "--listen", f"127.0.0.1:{base}", "--listen-peer",
                         f"127.0.0.1:{base + 100}", "--data-dir", str(tmp_path / "d"),
                         "--listen-metrics", f"http://127.0.0.1:{base + 200}", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "(--listen-metrics)" in result.stderr.strip().splitlines()[-1], result.stderr
