"""A removed member stops taking part and stops itself, whether it was a follower (which
may never apply its own removal: the leader stops replicating to it, so its peers tell it
when it next speaks) or the leader (which applies the change, hands leadership over and
steps down)."""

from __future__ import annotations

import pytest

from tests.integration.cluster_util import Cluster, wait_until

pytestmark = pytest.mark.integration


def test_a_removed_follower_is_told_and_stops_itself(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.ids if n != leader)
    cluster.ok("put", "k", "v")
    out = cluster.ok("cluster", "remove-node", follower)
    assert f"{follower} removed from the cluster; stopped itself" in out, out
    log = (cluster.dir / f"{follower}.log").read_text()
    assert "was removed from the cluster: stopping" in log, log[-2000:]
    assert "stopped cleanly" in log
    cluster.ok("put", "k2", "v2")
    members = cluster.ok("member", "list")
    assert follower not in members.split(), members


def test_a_removed_leader_hands_over_and_stops_itself(cluster: Cluster) -> None:
    leader = cluster.leader()
    cluster.ok("put", "k", "v")
    out = cluster.ok("cluster", "remove-node", leader)
    assert f"{leader} removed from the cluster; stopped itself" in out, out
    log = (cluster.dir / f"{leader}.log").read_text()
    assert "no longer a voter: stepping down" in log, log[-2000:]
    new = wait_until(lambda: next((n["id"] for n in cluster.status()
                                   if n.get("role") == "leader"), None), 15, "a new leader")
    assert new != leader
    assert cluster.ok("get", "k").strip() == "v"
