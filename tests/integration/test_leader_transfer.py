"""Leader transfer on real processes: a leader stopped with SIGTERM hands leadership to an
up-to-date voter before it exits (no election timeout of unavailability), and etcd's
MoveLeader moves it on request. Timings are bench.failover's business; these tests check
how leadership moved: in exactly one term, to the voter chosen, with no write lost."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from kvstore.etcdapi.members import member_id
from kvstore.etcdapi.methods import stub
from kvstore.etcdpb import rpc_pb2 as pb
from tests.integration.cluster_util import Cluster, wait_until

pytestmark = pytest.mark.integration


def _terms(cluster: Cluster, node_ids: list[str]) -> dict[str, int]:
    with cluster.client() as client:
        return {n.id: n.term for n in client.status() if n.reachable and n.id in node_ids}


def test_sigterm_on_the_leader_hands_leadership_over_in_one_term(cluster: Cluster) -> None:
    leader = cluster.leader()
    with cluster.client() as client:
        for i in range(20):
            client.put(f"before/{i}", str(i))
    term_before = _terms(cluster, [leader])[leader]
    pid = cluster.pid(leader)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    new = cluster.leader(exclude=leader)
    others = [n for n in cluster.ids if n != leader]
    terms = wait_until(lambda: (t := _terms(cluster, others)) and len(t) == 2 and t or None,
                       10, "the remaining nodes' status")
    # A transfer is one forced election: the target campaigns at once in the next term.
    # A leader that died without one leaves the others to time out, pre-vote and then
    # campaign, which also takes one term; the log line tells the two apart.
    assert set(terms.values()) == {term_before + 1}, terms
    log = (cluster.dir / f"{leader}.log").read_text()
    assert f"leadership moved to {new}" in log, log[-2000:]
    with cluster.client() as client:
        for i in range(20):
            assert client.get(f"before/{i}") == str(i).encode()
        client.put("after", "x")
    wait_until(lambda: cluster.pid(leader) is None or not _alive(cluster.pid(leader)),
               15, "the old leader to exit")


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_move_leader_through_etcds_api(cluster: Cluster) -> None:
    leader = cluster.leader()
    target = next(n for n in cluster.ids if n != leader)
    follower = next(n for n in cluster.ids if n not in (leader, target))
    # Sent to a follower: it forwards the request to the leader, as for writes.
    with grpc.insecure_channel(cluster.address(follower)) as channel:
        maintenance = stub(channel, "etcdserverpb.Maintenance")
        maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=member_id(target)), timeout=10)
        assert cluster.leader(exclude=leader) == target
        with pytest.raises(grpc.RpcError) as err:
            maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=12345), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "bad leader transferee" in (err.value.details() or "")
    with cluster.client() as client:
        client.put("after-move", "y")
        assert client.get("after-move") == b"y"
