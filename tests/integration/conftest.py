"""Fixtures that run real kvstore clusters on 127.0.0.1 via `kvstore cluster up`.

Run these suites one at a time on a machine (they start 3-5 processes each):

    flock /tmp/kvstore-cluster-tests.lock .venv/bin/python -m pytest -m integration

Every cluster is torn down with `kvstore cluster down` even when the test fails,
and any node still alive afterwards is killed by the PID in its cluster.json.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_util import Cluster, StartCluster, start_local_cluster, stop_local_cluster

if importlib.util.find_spec("kvstore.server.app") is None:  # pragma: no cover
    pytest.skip("kvstore.server.app is not there yet", allow_module_level=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def start_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartCluster]:
    """Factory: start_cluster(nodes=3, settings=None, tls=False) -> a running Cluster
    (settings: serve options of a cluster definition, e.g. {"snapshot_entries": 50}; tls:
    `cluster up --tls`); all are stopped at teardown."""
    started: list[Cluster] = []

    def start(nodes: int = 3, settings: dict[str, object] | None = None,
              tls: bool = False) -> Cluster:
        directory = tmp_path / f"cluster{len(started)}"
        try:
            cluster = start_local_cluster(directory, tmp_path, nodes, settings, tls)
        except AssertionError as exc:
            started.append(Cluster(directory, 0, nodes, tmp_path))  # clean up what is there
            pytest.fail(str(exc))
        started.append(cluster)
        return cluster

    yield start

    failed = getattr(request.node, "rep_call", None)
    leftovers: list[int] = []
    for cluster in started:
        if failed is not None and failed.failed:
            print(f"\nnode logs of {cluster.dir}:\n{cluster.log_tails()}")
        leftovers += stop_local_cluster(cluster)
    assert not leftovers, f"node processes survived teardown: {leftovers}"


@pytest.fixture
def cluster(start_cluster: StartCluster) -> Cluster:
    """A fresh 3-node cluster with an elected leader."""
    return start_cluster(3)
