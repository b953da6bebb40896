"""Fixtures of the etcd API tests: real local kvstore clusters (`kvstore cluster up`),
always torn down, and the etcdctl binary (tests skip with a message without it).

Run the cluster suites one at a time on a machine (they start 3 node processes each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.etcdapi.etcdctl_util import ETCDCTL, NO_ETCDCTL
from tests.integration.cluster_util import Cluster, start_local_cluster, stop_local_cluster


@pytest.fixture
def needs_etcdctl() -> None:
    if ETCDCTL is None:
        pytest.skip(NO_ETCDCTL)


@contextmanager
def _clusters(cwd: Path) -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def start(nodes: int = 3, tls: bool = False) -> Cluster:
        directory = cwd / f"cluster{len(started)}"
        try:
            cluster = start_local_cluster(directory, cwd, nodes, None, tls)
        except AssertionError as exc:
            started.append(Cluster(directory, 0, nodes, cwd))  # clean up what is there
            pytest.fail(str(exc))
        started.append(cluster)
        cluster.leader()
        return cluster

    try:
        yield start
    finally:
        leftovers: list[int] = []
        for cluster in started:
            leftovers += stop_local_cluster(cluster)
        assert not leftovers, f"node processes survived teardown: {leftovers}"


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Factory: start_cluster(nodes=3, tls=False) -> a running Cluster with a leader."""
    with _clusters(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 3-node cluster for a whole module (tests use their own key prefixes)."""
    if ETCDCTL is None:
        pytest.skip(NO_ETCDCTL)
    with _clusters(tmp_path_factory.mktemp("etcdapi")) as start:
        yield start(3)
