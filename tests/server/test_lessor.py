"""The leader's lease clock, on a fake clock."""

from __future__ import annotations

import random

import pytest

from kvstore.raft.errors import NotLeader
from kvstore.server.lessor import REVOKE_RETRY_SECONDS, LeaseNotFound, Lessor
from kvstore.server.node import min_lease_ttl
from kvstore.state.leases import LeaseChange


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_follower_refuses_and_names_the_leader() -> None:
    lessor = Lessor(Clock(), random.Random(1), 2)
    lessor.demote("n2")
    with pytest.raises(NotLeader) as err:
        lessor.keepalive(5)
    assert err.value.leader == "n2"
    assert lessor.expired() == []


def test_new_leader_gives_every_lease_its_full_ttl() -> None:
    clock = Clock()
    lessor = Lessor(clock, random.Random(1), 2)
    lessor.promote([(1, 10), (2, 60)])
    clock.now += 9.5
    assert lessor.time_to_live(1) == 1 and lessor.expired() == []
    lessor.demote("n3")  # a failover: the next leader starts over
    clock.now += 5
    lessor.promote([(1, 10), (2, 60)])
    assert lessor.time_to_live(1) == 10  # never early: a full TTL from the promotion
    clock.now += 10
    assert lessor.expired() == [1]
    assert lessor.expired() == []  # proposed once...
    clock.now += REVOKE_RETRY_SECONDS
    assert lessor.expired() == [1]  # ...and again only if it did not apply
    lessor.applied([LeaseChange("revoke", 1)])
    clock.now += REVOKE_RETRY_SECONDS
    assert lessor.expired() == []
    with pytest.raises(LeaseNotFound):
        lessor.time_to_live(1)


def test_keepalive_renews_and_grants_are_followed() -> None:
    clock = Clock()
    lessor = Lessor(clock, random.Random(1), 3)
    lessor.promote([])
    lessor.applied([LeaseChange("grant", 9, 5)])
    clock.now += 4
    assert lessor.keepalive(9) == 5
    clock.now += 4
    assert lessor.expired() == [] and lessor.time_to_live(9) == 1
    clock.now += 1
    assert lessor.expired() == [9]
    with pytest.raises(LeaseNotFound):
        lessor.keepalive(9)  # being revoked: too late to keep it
    assert lessor.ttl_for(1) == 3 and lessor.ttl_for(30) == 30
    assert lessor.new_id() > 0


def test_min_ttl_outlasts_an_election() -> None:
    assert min_lease_ttl(0.05, 6) == 2  # 600 ms elections at most: etcd's 2 s floor
    assert min_lease_ttl(0.5, 10) == 15  # 10 s elections: 15 s
