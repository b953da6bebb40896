"""etcdctl 3.4 (Debian's etcd-client) against a real 3-node kvstore cluster: the commands
the etcd API issue names, through all three endpoints and through a follower alone."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kvstore.etcdapi.members import member_id
from kvstore.etcdapi.methods import MAINTENANCE, stub
from tests.etcdapi.etcdctl_util import error_lines, etcdctl, txn_input
from tests.integration.cluster_util import Cluster, wait_until

pytestmark = pytest.mark.integration


def ctl(cluster: Cluster, *args: str, endpoints: list[str] | None = None,
        stdin: str | None = None) -> str:
    r = etcdctl(endpoints or cluster.endpoints, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout


def ctl_json(cluster: Cluster, *args: str, **kw: Any) -> Any:
    return json.loads(ctl(cluster, *args, "-w", "json", **kw))


def keys(resp: dict[str, Any]) -> list[str]:
    return [base64.b64decode(kv["key"]).decode() for kv in resp.get("kvs", [])]


def values(resp: dict[str, Any]) -> list[str]:
    return [base64.b64decode(kv.get("value", "")).decode() for kv in resp.get("kvs", [])]


def revision(cluster: Cluster) -> int:
    return ctl_json(cluster, "get", "any-key")["header"]["revision"]


def test_put_get_with_range_flags(shared_cluster: Cluster) -> None:
    c = shared_cluster
    start = revision(c)
    for i, (k, v) in enumerate([("r/a", "3"), ("r/b", "1"), ("r/c", "2"), ("s", "0")]):
        assert ctl(c, "put", k, v).strip() == "OK"
        assert revision(c) == start + i + 1  # one revision per put, seen at once anywhere
    assert ctl(c, "put", "r/a", "4").strip() == "OK"

    got = ctl_json(c, "get", "r/", "--prefix")
    assert keys(got) == ["r/a", "r/b", "r/c"] and values(got) == ["4", "1", "2"]
    assert got["count"] == 3 and got["header"]["revision"] == start + 5
    a = got["kvs"][0]
    assert (a["create_revision"], a["mod_revision"], a["version"]) == (start + 1, start + 5, 2)

    assert ctl(c, "get", "r/", "--prefix", "--keys-only").split() == ["r/a", "r/b", "r/c"]
    assert ctl(c, "get", "--from-key", "r/b").split()[:4] == ["r/b", "1", "r/c", "2"]
    limited = ctl_json(c, "get", "r/", "--prefix", "--limit", "2")
    assert keys(limited) == ["r/a", "r/b"] and limited["more"] and limited["count"] == 3
    by_value = ctl(c, "get", "r/", "--prefix", "--sort-by=VALUE", "--order=DESCEND",
                   "--keys-only").split()
    assert by_value == ["r/a", "r/c", "r/b"]
    by_mod = ctl(c, "get", "r/", "--prefix", "--sort-by=MODIFY", "--order=ASCEND",
                 "--keys-only").split()
    assert by_mod == ["r/b", "r/c", "r/a"]
    old = ctl_json(c, "get", "r/a", "--rev", str(start + 1))
    assert values(old) == ["3"] and old["kvs"][0]["version"] == 1
    assert keys(ctl_json(c, "get", "r/a", "--rev", str(start))) == []
    assert keys(ctl_json(c, "get", "r/a", "r/c")) == ["r/a", "r/b"]  # [key, range_end)


def test_delete_prefix_with_prev_kv(shared_cluster: Cluster) -> None:
    c = shared_cluster
    for k in ("d/1", "d/2", "d/3", "e"):
        ctl(c, "put", k, f"v-{k}")
    before = revision(c)
    deleted = ctl_json(c, "del", "d/", "--prefix", "--prev-kv")
    assert deleted["deleted"] == 3 and deleted["header"]["revision"] == before + 1
    assert keys({"kvs": deleted["prev_kvs"]}) == ["d/1", "d/2", "d/3"]
    assert ctl(c, "del", "d/", "--prefix").strip() == "0"
    assert revision(c) == before + 1  # deleting nothing takes no revision
    assert ctl(c, "get", "e").split() == ["e", "v-e"]


def test_txn_interactive_format(shared_cluster: Cluster) -> None:
    c = shared_cluster
    ctl(c, "put", "t/k", "1")
    rev = revision(c)
    out = ctl_json(c, "txn", stdin=txn_input([f'mod("t/k") = "{rev}"', 'value("t/k") = "1"'],
                                              ["put t/k 2", "put t/other x", "get t/k"],
                                              ["get t/k"]))
    assert out["succeeded"] is True and out["header"]["revision"] == rev + 1  # one revision
    ranged = out["responses"][2]["Response"]["ResponseRange"]
    assert values(ranged) == ["2"]
    plain = ctl(c, "txn", stdin=txn_input([f'mod("t/k") = "{rev}"'], ["put t/k 3"],
                                          ["get t/k"]))
    assert plain.split() == ["FAILURE", "t/k", "2"]
    assert revision(c) == rev + 1


def test_compaction(shared_cluster: Cluster) -> None:
    c = shared_cluster
    ctl(c, "put", "cp", "1")
    first = revision(c)
    ctl(c, "put", "cp", "2")
    assert ctl(c, "compaction", str(first + 1)).strip() == f"compacted revision {first + 1}"
    r = etcdctl(c.endpoints, "get", "cp", "--rev", str(first))
    assert r.returncode != 0
    assert error_lines(r.stderr) == [
        "Error: etcdserver: mvcc: required revision has been compacted"]
    assert values(ctl_json(c, "get", "cp", "--rev", str(first + 1))) == ["2"]
    future = etcdctl(c.endpoints, "get", "cp", "--rev", str(first + 1000))
    assert error_lines(future.stderr) == [
        "Error: etcdserver: mvcc: required revision is a future revision"]


def test_bad_requests_get_etcds_errors(shared_cluster: Cluster) -> None:
    r = etcdctl(shared_cluster.endpoints, "put", "", "x")
    assert r.returncode != 0
    assert error_lines(r.stderr) == ["Error: etcdserver: key is not provided"]


def test_endpoint_status_health_member_list_defrag(shared_cluster: Cluster) -> None:
    c = shared_cluster
    leader = c.leader()
    statuses = ctl_json(c, "endpoint", "status")
    assert sorted(s["Endpoint"] for s in statuses) == sorted(c.endpoints)
    by_address = {s["Endpoint"]: s["Status"] for s in statuses}
    for node in c.ids:
        st = by_address[c.address(node)]
        assert st["header"]["member_id"] == member_id(node)
        assert st["leader"] == member_id(leader)
        assert st["version"].startswith("3.5.")
        assert st["raftTerm"] >= 1 and st["raftIndex"] >= st.get("raftAppliedIndex", 0) > 0
        assert st["dbSize"] > 0
    cluster_ids = {s["header"]["cluster_id"] for s in by_address.values()}
    assert len(cluster_ids) == 1

    health = etcdctl(c.endpoints, "endpoint", "health")
    assert health.returncode == 0, health.stderr
    assert sum("is healthy" in line for line in health.stderr.splitlines()) == 3

    members = ctl_json(c, "member", "list")["members"]
    assert sorted(m["name"] for m in members) == c.ids
    for m in members:
        assert m["ID"] == member_id(m["name"])
        assert m["clientURLs"] == [f"http://{c.address(m['name'])}"]
        assert m["peerURLs"] == [f"http://{c.peer_address(m['name'])}"]
    table = ctl(c, "member", "list")
    assert all(f"{member_id(n):x}, started, {n}," in table for n in c.ids)

    defrag = ctl(c, "defrag")
    assert sorted(line for line in defrag.splitlines() if line) == sorted(
        f"Finished defragmenting etcd member[{e}]" for e in c.endpoints)
    assert ctl(c, "alarm", "list").strip() == ""
    ctl(c, "put", "after-defrag", "ok")
    assert ctl(c, "get", "after-defrag").split() == ["after-defrag", "ok"]


def test_follower_only_endpoint(shared_cluster: Cluster) -> None:
    """Writes and linearizable reads sent to a follower are forwarded to the leader;
    etcd clients never see kvstore's leader hints."""
    c = shared_cluster
    leader = c.leader()
    follower = [c.address(n) for n in c.ids if n != leader][0]
    only = [follower]
    assert ctl(c, "put", "f/1", "a", endpoints=only).strip() == "OK"
    got = ctl_json(c, "get", "f/1", endpoints=only)
    assert values(got) == ["a"]
    assert got["header"]["member_id"] == member_id(c.ids[c.endpoints.index(follower)])
    # The write is visible through the leader at once (it was committed there).
    assert ctl(c, "get", "f/1", endpoints=[c.address(leader)]).split() == ["f/1", "a"]
    out = ctl(c, "txn", endpoints=only, stdin=txn_input(['value("f/1") = "a"'],
                                                        ["put f/1 b"], []))
    assert out.split() == ["SUCCESS", "OK"]
    assert ctl(c, "get", "f/1", "--consistency=s", endpoints=only).split() in (
        ["f/1", "b"], ["f/1", "a"])  # serializable: local, may lag by a heartbeat
    assert ctl(c, "del", "f/", "--prefix", endpoints=only).strip() == "1"
    rev = revision(c)
    assert ctl(c, "compaction", str(rev), endpoints=only).strip() == f"compacted revision {rev}"
    assert len(ctl_json(c, "member", "list", endpoints=only)["members"]) == 3
    (status,) = ctl_json(c, "endpoint", "status", endpoints=only)
    assert status["Status"]["leader"] == member_id(leader)
    health = etcdctl(only, "endpoint", "health")
    assert health.returncode == 0 and "is healthy" in health.stderr
    assert ctl(c, "alarm", "list", endpoints=only).strip() == ""


def test_hash_kv_agrees_across_members(shared_cluster: Cluster) -> None:
    """Members that applied the same log hash the same (HashKV at one revision)."""
    import grpc

    from kvstore.etcdpb import rpc_pb2 as pb

    c = shared_cluster
    ctl(c, "put", "h", "1")
    rev = revision(c)
    hashes = set()
    for address in c.endpoints:
        with grpc.insecure_channel(address) as channel:
            m = stub(channel, MAINTENANCE)

            def at_rev(m: Any = m) -> Any:  # a follower may not have applied rev yet
                r = m.HashKV(pb.HashKVRequest(revision=rev), timeout=10)
                return r if r.hash_revision == rev else None

            hashes.add(wait_until(at_rev, 20.0, f"HashKV at {rev} on {address}").hash)
    assert len(hashes) == 1


def test_tls_cluster(needs_etcdctl: None, start_cluster: Any) -> None:
    """`cluster up --tls`: etcdctl with --cacert/--cert/--key; URLs are https."""
    c = start_cluster(3, tls=True)
    tls = c.state()["tls"]
    r = etcdctl(c.endpoints, "put", "secure", "yes", tls=tls)
    assert r.returncode == 0, r.stderr
    leader = c.leader()
    follower = [c.address(n) for n in c.ids if n != leader][0]
    r = etcdctl([follower], "put", "secure2", "yes", tls=tls)
    assert r.returncode == 0, r.stderr  # forwarded over the peer port's mutual TLS
    r = etcdctl([follower], "get", "secure", tls=tls)
    assert r.stdout.split() == ["secure", "yes"], r.stderr
    r = etcdctl(c.endpoints, "member", "list", "-w", "json", tls=tls)
    members = json.loads(r.stdout)["members"]
    assert all(m["clientURLs"][0].startswith("https://") for m in members)
    assert all(m["peerURLs"][0].startswith("https://") for m in members)
    plain = etcdctl(c.endpoints, "get", "secure")
    assert plain.returncode != 0
