"""Context managers that start a system under test and yield its TargetSpec.

All three stop what they started on exit, whatever happened inside: kvstore through
`kvstore cluster down` (bench/localcluster.py), etcd and the floor server through
bench/procs.py.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from bench.drivers import TargetSpec
from bench.etcdcluster import find_leader, local_etcd
from bench.floor import floor_server
from bench.localcluster import LocalCluster, local_cluster
from kvstore.client import KVClient

__all__ = ["current_leader", "floor_server", "kvstore_cluster", "local_etcd"]


def _wait_for_leader(cluster: LocalCluster, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = cluster.status()
        leaders = {n.get("leader_id") for n in nodes}
        if any(n.get("role") == "leader" for n in nodes) and len(leaders) == 1:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"kvstore cluster elected no leader within {timeout:g}s")
        time.sleep(0.1)


@contextmanager
def kvstore_cluster(nodes: int, root: Path, start_timeout: float = 30.0
                    ) -> Iterator[TargetSpec]:
    """A fresh kvstore cluster (default settings) with its data under `root`."""
    directory = Path(tempfile.mkdtemp(prefix=f"kvstore-{nodes}n-", dir=root))
    with local_cluster(nodes, str(directory)) as cluster:
        status = _wait_for_leader(cluster, start_timeout)
        layout = json.loads((directory / "cluster.json").read_text())
        address = {n["id"]: n["address"] for n in layout["nodes"]}
        leader = address[next(n["id"] for n in status if n.get("role") == "leader")]
        endpoints = tuple(cluster.endpoints)
        yield TargetSpec(
            name=f"kvstore-{nodes}", kind="kvstore", nodes=nodes, leader=leader,
            endpoints=endpoints, followers=tuple(e for e in endpoints if e != leader),
            pids=tuple(n["pid"] for n in layout["nodes"] if n.get("pid")),
            info={"settings": "defaults: 50 ms tick, 300-600 ms elections, 16 shards"},
        )


def current_leader(spec: TargetSpec) -> TargetSpec:
    """`spec` with the leader its cluster has now: leadership can move during a long run,
    and a driver that sends to the leader named at start would then pay a follower's
    forwarding hop. Unchanged when no single leader is seen (or for the floor)."""
    if spec.kind == "kvstore":
        with KVClient(list(spec.endpoints), timeout=5.0) as client:
            leaders = [s.address for s in client.status() if s.role == "leader"]
        leader = leaders[0] if len(leaders) == 1 else None
    elif spec.kind == "etcd":
        leader = find_leader(list(spec.endpoints), timeout=2.0)
    else:
        return spec
    if leader is None or leader == spec.leader or leader not in spec.endpoints:
        return spec
    return replace(spec, leader=leader,
                   followers=tuple(e for e in spec.endpoints if e != leader))
