"""The client's watch, lease, lock and election tests against `kvstore cluster up`.

Every test of test_coordination_etcd.py runs here too, unchanged, against a kvstore node
(kvstore serves etcd's Watch, Lease and KV services on every client port: the same
protocol as the real etcd those tests were written against). The tests below are
kvstore's own: native put with a lease, and a watch surviving kill -9 of the member it is
on, in a 3-node cluster.

Skipped, with the reason, while kvstore answers UNIMPLEMENTED for etcd's Watch or Lease.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from kvstore.client import Compacted, KVClient, KVError, LeaseNotFound
from kvstore.etcdpb import rpc_pb2 as pb
from tests.cli.cli_util import running_cluster
from tests.client.test_coordination_etcd import *  # noqa: F403 - the shared tests, re-run here
from tests.client.test_coordination_etcd import EtcdKV
from tests.etcdapi.etcdctl_util import ETCDCTL, NO_ETCDCTL, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

UNSERVED = ("kvstore does not serve etcd's {} service yet (UNIMPLEMENTED); these tests run "
            "once kvstore/etcdapi registers it")


def skip_unless_served(endpoints: list[str]) -> None:
    """Skip (with the reason) while kvstore answers UNIMPLEMENTED for Lease or Watch."""
    with KVClient(endpoints, timeout=10.0) as c:
        for service, probe in (("Lease", c.leases), ("Watch", lambda: c.watch("probe").close())):
            try:
                probe()
            except KVError as exc:
                if "UNIMPLEMENTED" in str(exc):
                    pytest.skip(UNSERVED.format(service))
                raise


@pytest.fixture(scope="module")
def kv_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if ETCDCTL is None:
        pytest.skip(NO_ETCDCTL)
    tmp = tmp_path_factory.mktemp("coord-cluster")
    with running_cluster(tmp / "cluster", tmp) as cluster:
        skip_unless_served(cluster.endpoints)
        yield cluster


@pytest.fixture(scope="module")
def server(kv_cluster: Any) -> Any:  # overrides the etcd module's fixture
    """A kvstore node where the shared tests had an etcd (followers forward writes)."""
    return SimpleNamespace(address=kv_cluster.endpoints[0], cluster=kv_cluster)


def test_native_put_with_a_lease(kv_cluster: Any) -> None:
    with kv_cluster.client() as c:
        with c.lease(30) as lease:
            c.put("nl/a", "1", lease=lease.id)
            assert c.get("nl/a") == b"1"
            assert c.get_result("nl/a").found
            assert c.lease_time_to_live(lease.id, keys=True).keys == (b"nl/a",)
        assert c.get("nl/a") is None  # revoked with the lease
        with pytest.raises(LeaseNotFound):
            c.put("nl/b", "1", lease=lease.id)


def test_watch_resumes_after_the_member_is_killed(server: Any, tmp_path: Path) -> None:
    """kill -9 of the member a watch is on, while writes go on: the watch moves to another
    member and sees every write exactly once, in order (its keys' history)."""
    cluster = server.cluster
    names = {n["address"]: n["id"] for n in cluster.state()["nodes"]}
    with KVClient(cluster.endpoints, timeout=30.0) as c, c.watch("wk/", prefix=True) as events:
        written = []
        for i in range(5):
            c.put(f"wk/{i % 2}", f"before {i}")
            written.append((f"wk/{i % 2}".encode(), f"before {i}".encode()))
        seen = [events.get(20.0) for _ in range(5)]
        victim = names[events.endpoint]
        cluster.ok("cluster", "stop", victim, "--kill")
        try:
            for i in range(5):
                c.put(f"wk/{i % 2}", f"after {i}")
                written.append((f"wk/{i % 2}".encode(), f"after {i}".encode()))
            seen += [events.get(30.0) for _ in range(5)]
            assert events.get(0.3) is None
            assert events.reconnects >= 1 and names[events.endpoint] != victim
        finally:
            cluster.ok("cluster", "start", victim)
    assert all(e is not None for e in seen)
    assert [(e.key, e.value) for e in seen if e] == written
    revisions = [e.mod_revision for e in seen if e]
    assert revisions == sorted(set(revisions))


def test_lease_survives_a_leader_failover(kv_cluster: Any) -> None:
    """kill -9 of the leader while a lease is kept alive: the keep-alives move to the new
    leader, which gives the lease its full TTL again, so the lease and its key live on."""
    cluster = kv_cluster
    with KVClient(cluster.endpoints, timeout=10.0) as c, c.lease(10) as lease:
        c.put("fo/key", "v", lease=lease.id)
        leader = cluster.leader()
        cluster.ok("cluster", "stop", leader, "--kill")
        try:
            cluster.leader(exclude=leader)
            renewed = lease.renewals
            wait_until(lambda: lease.renewals >= renewed + 3 or lease.lost, 60.0,
                       "three keep-alives answered after the failover")
            assert not lease.lost, lease.lost_reason
            assert c.get("fo/key") == b"v" and lease.ttl() > 0
        finally:
            cluster.ok("cluster", "start", leader)


def test_watch_from_a_compacted_revision_raises(client: KVClient, kv: EtcdKV) -> None:  # noqa: F811
    """As the etcd test, after waiting for the member to apply the compaction itself: a
    follower answers a forwarded Compact once the leader applied it, possibly before it
    did (etcd answers only after the member that took the request applied it)."""
    old = kv.put("w3c", "1")
    now = kv.put("w3c", "2")
    kv.compact(now)

    def compacted_here() -> bool:
        try:
            kv.kv.Range(pb.RangeRequest(key=b"w3c", revision=old, serializable=True),
                        timeout=10)
        except grpc.RpcError as exc:
            return "compacted" in (exc.details() or "")
        return False

    wait_until(compacted_here, 20.0, "the member to apply the compaction")
    with client.watch("w3c", start_revision=old) as events, pytest.raises(Compacted) as info:
        events.get(10.0)
    assert info.value.compact_revision == now
