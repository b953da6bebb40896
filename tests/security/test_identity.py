"""Cluster id storage and the peer gate: which peer calls a node admits, and why not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kvstore.server.identity import (
    CLIENT_ADDRESS_KEY,
    CLUSTER_ID_FILE,
    CLUSTER_ID_KEY,
    NODE_ID_KEY,
    IdentityError,
    PeerGate,
    RefusalLog,
    Refused,
    check_cluster_id,
    settle_cluster_id,
)


def test_the_first_start_stores_the_cluster_id(tmp_path: Path) -> None:
    assert settle_cluster_id(str(tmp_path), "c1") == "c1"
    assert (tmp_path / CLUSTER_ID_FILE).read_text().strip() == "c1"
    assert settle_cluster_id(str(tmp_path), "c1") == "c1"  # the same again: fine
    assert settle_cluster_id(str(tmp_path), None) == "c1"  # none given: the stored one
    assert [p.name for p in tmp_path.iterdir()] == [CLUSTER_ID_FILE]  # no temp file left


def test_a_data_dir_of_another_cluster_refuses_to_start(tmp_path: Path) -> None:
    settle_cluster_id(str(tmp_path), "c1")
    with pytest.raises(IdentityError, match="belongs to cluster c1, not c2"):
        settle_cluster_id(str(tmp_path), "c2")
    assert (tmp_path / CLUSTER_ID_FILE).read_text().strip() == "c1"  # unchanged


def test_a_new_data_dir_needs_a_cluster_id(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="--cluster-id"):
        settle_cluster_id(str(tmp_path), None)


def test_a_damaged_cluster_id_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / CLUSTER_ID_FILE).write_text("two words\n")
    with pytest.raises(IdentityError, match="bad cluster id"):
        settle_cluster_id(str(tmp_path), None)


@pytest.mark.parametrize("bad", ["", "a b", "-x", "x" * 65, "é"])
def test_cluster_id_syntax(bad: str) -> None:
    check_cluster_id("a1b2-c3.d_4")
    with pytest.raises(ValueError):
        check_cluster_id(bad)


def _gate() -> PeerGate:
    return PeerGate("n1", "c1", frozenset({"n2", "n3"}), "127.0.0.1:7001")


def _md(cluster: str | None = "c1", node: str | None = "n2",
        client: str | None = None) -> list[tuple[str, str]]:
    md = []
    if cluster is not None:
        md.append((CLUSTER_ID_KEY, cluster))
    if node is not None:
        md.append((NODE_ID_KEY, node))
    if client is not None:
        md.append((CLIENT_ADDRESS_KEY, client))
    return md


def test_a_member_of_the_same_cluster_is_admitted_and_its_client_address_learned() -> None:
    gate = _gate()
    assert gate.client_address_of("n2") == ""
    assert gate.admit(_md(client="127.0.0.1:7002"), "peer stream", "ipv4:127.0.0.1:5") == "n2"
    assert gate.client_address_of("n2") == "127.0.0.1:7002"
    assert gate.client_address_of("n1") == "127.0.0.1:7001"
    gate.admit(_md(node="n3", client="not an address"), "peer stream", "p")
    assert gate.client_address_of("n3") == ""  # nothing to hint with; still admitted


@pytest.mark.parametrize(
    ("md", "code", "needle"),
    [
        (_md(cluster="c2"), "FAILED_PRECONDITION", "cluster id c2"),
        (_md(cluster=None), "FAILED_PRECONDITION", "cluster id (none)"),
        (_md(node="intruder"), "PERMISSION_DENIED", "not a member"),
        (_md(node=None), "PERMISSION_DENIED", "not a member"),
        (_md(node="n1"), "PERMISSION_DENIED", "not a member"),  # ourselves
    ],
)
def test_other_clusters_and_non_members_are_refused(
    md: list[tuple[str, str]], code: str, needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate = _gate()
    with caplog.at_level(logging.WARNING), pytest.raises(Refused) as info:
        gate.admit(md, "peer stream", "ipv4:127.0.0.1:5")
    assert info.value.code == code
    assert needle in str(info.value)
    assert "ipv4:127.0.0.1:5" in str(info.value)
    assert [r.getMessage() for r in caplog.records] == [str(info.value)]
    assert gate.client_addresses == {}


def test_the_gate_sends_what_it_checks() -> None:
    gate = _gate()
    peer = PeerGate("n2", "c1", frozenset({"n1"}), "127.0.0.1:7002")
    assert peer.admit(gate.outgoing(), "peer stream", "p") == "n1"
    assert peer.client_address_of("n1") == "127.0.0.1:7001"


def test_refusals_are_logged_once_then_rarely(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("kvstore.server.identity.time.monotonic", lambda: now[0])
    refusals = RefusalLog(every=60.0)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            refusals.warn("k", "refused x")
        refusals.warn("other", "refused y")
        now[0] += 61
        refusals.warn("k", "refused x")
    assert [r.getMessage() for r in caplog.records] == [
        "refused x", "refused y", "refused x (4 more like it since)"]
