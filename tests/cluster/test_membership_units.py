"""Membership interfaces without processes: the client's endpoint following, member
resolution, how `serve --join` finds its entry, and how add-node derives a node's ports
and settings."""

from __future__ import annotations

import click
import pytest

from kvstore.cli.join import find_self
from kvstore.cli.member import resolve_member
from kvstore.client._core import REFRESH_MIN_INTERVAL, REFRESH_PERIOD, Router
from kvstore.client.membership import MemberInfo, url_address, voter_addresses
from kvstore.cluster.manager import ClusterState, NodeRecord
from kvstore.cluster.membership import _ports, _settings


def member(name: str, port: int, learner: bool = False, client: bool = True,
           mid: int = 0) -> MemberInfo:
    return MemberInfo(mid or port, name, (f"http://127.0.0.1:{port + 100}",),
                      (f"http://127.0.0.1:{port}",) if client else (), learner)


def test_url_address() -> None:
    assert url_address("http://127.0.0.1:7001") == "127.0.0.1:7001"
    assert url_address("https://[::1]:7001/") == "[::1]:7001"
    assert url_address("127.0.0.1:7001") == "127.0.0.1:7001"


def test_voter_addresses_skip_learners_and_say_if_complete() -> None:
    ms = [member("n1", 1), member("n4", 4, learner=True)]
    assert voter_addresses(ms) == (["127.0.0.1:1"], True)
    assert voter_addresses([*ms, member("n2", 2, client=False)]) == (["127.0.0.1:1"], False)


def test_router_adopts_a_complete_member_list() -> None:
    r = Router(["a:1", "b:1", "c:1"])
    r.learn_leader("a:1")
    r.adopt_members(["c:1", "d:1", "e:1"], complete=True)
    assert r.endpoints == ("c:1", "d:1", "e:1")
    assert r.leader is None  # a:1 was removed
    assert r.first_choice() == "c:1"
    assert r.configured == ("a:1", "b:1", "c:1")  # what the client was made with


def test_router_only_adds_from_an_incomplete_list() -> None:
    r = Router(["a:1", "b:1"])
    r.adopt_members(["b:1", "d:1"], complete=False)
    assert r.endpoints == ("a:1", "b:1", "d:1")
    r.adopt_members([], complete=True)  # an empty answer changes nothing
    assert r.endpoints == ("a:1", "b:1", "d:1")


def test_refresh_is_due_after_trouble_or_a_failover_and_periodically() -> None:
    r = Router(["a:1", "b:1"])
    assert not r.refresh_due(100.0)  # a new client asks nothing
    r.note_trouble()
    assert r.refresh_due(100.0 + REFRESH_MIN_INTERVAL)
    assert not r.refresh_due(100.0 + REFRESH_MIN_INTERVAL)  # counted as done
    r.note_trouble()
    assert not r.refresh_due(100.5 + REFRESH_MIN_INTERVAL)  # rate limited
    assert r.refresh_due(101.0 + 2 * REFRESH_MIN_INTERVAL)
    r.learn_leader("a:1")
    r.learn_leader("a:1")
    assert not r.refresh_due(110.0)  # a leader learned, no failover
    r.forget_leader("a:1")
    r.learn_leader("b:1")  # a failover, even after the old leader was forgotten
    assert r.refresh_due(111.0)
    assert not r.refresh_due(111.0 + REFRESH_PERIOD / 2)
    assert r.refresh_due(111.0 + REFRESH_PERIOD)  # periodic
    assert r.refresh_targets()[0] == "b:1"


def test_first_trouble_of_a_new_client_refreshes_at_once() -> None:
    r = Router(["a:1"])
    r.note_trouble()
    assert r.refresh_due(5.0)


def test_resolve_member_by_name_or_hex_id() -> None:
    ms = [member("n1", 1, mid=0xABC), member("n2", 2, mid=0x12)]
    assert resolve_member(ms, "n2").name == "n2"
    assert resolve_member(ms, "abc").name == "n1"
    with pytest.raises(click.ClickException, match="no member n9"):
        resolve_member(ms, "n9")


def test_join_finds_its_entry_by_id_or_peer_address() -> None:
    ms = [member("n1", 1), member("node-1234abcd", 4, learner=True)]
    assert find_self(ms, None, "127.0.0.1:104") == "node-1234abcd"
    assert find_self(ms, "n1", "127.0.0.1:101") == "n1"
    with pytest.raises(click.ClickException, match="add this node first"):
        find_self(ms, None, "127.0.0.1:999")
    with pytest.raises(click.ClickException, match="is not a member"):
        find_self(ms, "n7", "127.0.0.1:999")
    with pytest.raises(click.ClickException, match="was added with peer address"):
        find_self(ms, "n1", "127.0.0.1:999")
    with pytest.raises(click.ClickException, match="peer address of member n1"):
        find_self(ms, "n7", "127.0.0.1:101")


def test_add_node_ports_follow_the_contract(tmp_path) -> None:
    nodes = [NodeRecord(f"n{i}", f"127.0.0.1:{7000 + i}", f"127.0.0.1:{7100 + i}", None,
                        "d", "l", metrics_url=f"http://127.0.0.1:{7200 + i}")
             for i in (2, 3)]
    state = ClusterState(tmp_path, "t", nodes)
    assert _ports(state, 5) == ("127.0.0.1:7005", "127.0.0.1:7105", "http://127.0.0.1:7205")


def test_add_node_copies_only_cluster_wide_settings() -> None:
    args = ["--id", "n1", "--listen", "x:1", "--tick-ms", "20", "--peers", "n2=x:2",
            "--fault-injection", "--cluster-id", "c", "--snapshot-entries", "100"]
    assert _settings(args) == ["--tick-ms", "20", "--fault-injection",
                               "--snapshot-entries", "100"]


def test_join_asks_again_while_the_answering_member_has_not_applied_the_add(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    """The add is answered once the leader applied it; a follower that answers the new
    node's member list a moment later may not list it yet."""
    from kvstore.cli import join as join_mod

    answers = [[member("n1", 1)], [member("n1", 1)], [member("n1", 1), member("n4", 4)]]
    asked = []

    def ask(endpoints, tls, timeout):  # noqa: ANN001, ANN202
        asked.append(1)
        return "cid", answers[min(len(asked), len(answers)) - 1]

    monkeypatch.setattr(join_mod, "ask_cluster", ask)
    monkeypatch.setattr(join_mod, "JOIN_RETRY_SECONDS", 0.0)
    joined = join_mod.join(["127.0.0.1:1"], None, "n4", "127.0.0.1:104", str(tmp_path), None)
    assert joined.node_id == "n4" and len(asked) == 3
    assert ("n4", "127.0.0.1:104", False) in joined.members

    monkeypatch.setattr(join_mod, "JOIN_SECONDS", 0.0)
    asked.clear()
    answers[:] = [[member("n1", 1)]]
    with pytest.raises(click.ClickException, match="is not a member"):
        join_mod.join(["127.0.0.1:1"], None, "n4", "127.0.0.1:104", str(tmp_path), None)
