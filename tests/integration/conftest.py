"""Fixtures that run real kvstore clusters on 127.0.0.1 via `kvstore cluster up`.

Run these suites one at a time on a machine (they start 3-5 processes each):

    flock /tmp/kvstore-cluster-tests.lock .venv/bin/python -m pytest -m integration

Every cluster is torn down with `kvstore cluster down` even when the test fails,
and any node still alive afterwards is killed by the PID in its cluster.json.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import Cluster, StartCluster, free_port_range, node_pids, run_cli

if importlib.util.find_spec("kvstore.server.app") is None:  # pragma: no cover
    pytest.skip("kvstore.server.app is not there yet", allow_module_level=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def start_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartCluster]:
    """Factory: start_cluster(nodes=3, settings=None) -> a running Cluster (settings: serve
    options of a cluster definition, e.g. {"snapshot_entries": 50}); all are stopped at
    teardown."""
    started: list[Cluster] = []

    def start(nodes: int = 3, settings: dict[str, object] | None = None) -> Cluster:
        directory = tmp_path / f"cluster{len(started)}"
        last = ""
        for _ in range(3):  # another process may take a port between choosing and binding
            base = free_port_range(nodes)
            cluster = Cluster(directory, base, nodes, tmp_path)
            started.append(cluster)
            if settings:
                definition = tmp_path / f"cluster{len(started)}.json"
                definition.write_text(json.dumps({
                    "name": "test", "host": "127.0.0.1", "settings": settings,
                    "nodes": [{"id": f"n{i + 1}", "port": base + i} for i in range(nodes)],
                }))
                layout_args = ["--config", str(definition)]
            else:
                layout_args = ["--nodes", str(nodes), "--base-port", str(base)]
            result = run_cli(
                "cluster", "up", *layout_args, "--dir", str(directory), cwd=tmp_path, timeout=60,
            )  # fmt: skip
            if result.returncode == 0:
                return cluster
            last = result.stderr
            if "in use" not in last:
                break
        pytest.fail(f"kvstore cluster up failed: {last}\n{cluster.log_tails()}")

    yield start

    failed = getattr(request.node, "rep_call", None)
    for cluster in started:
        if failed is not None and failed.failed:
            print(f"\nnode logs of {cluster.dir}:\n{cluster.log_tails()}")
        if (cluster.dir / "cluster.json").exists():
            run_cli("cluster", "down", "--grace", "5", "--dir", str(cluster.dir), cwd=tmp_path)
        cluster.kill_leftovers()
    leftovers = [pid for cluster in started for pid in node_pids(cluster.dir)]
    assert not leftovers, f"node processes survived teardown: {leftovers}"


@pytest.fixture
def cluster(start_cluster: StartCluster) -> Cluster:
    """A fresh 3-node cluster with an elected leader."""
    return start_cluster(3)
