"""etcdctl 3.4's watch, lease, lock and elect against a real 3-node kvstore cluster, through
followers as well as the leader (watches are served by the member they are on; lease
calls on a follower are forwarded to the leader).

Long-running commands run as Background processes, always stopped; waits poll with
deadlines, nothing sleeps to synchronize.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from tests.etcdapi.etcdctl_util import Background, error_lines, etcdctl
from tests.integration.cluster_util import Cluster, wait_until

pytestmark = pytest.mark.integration


def ctl(endpoints: list[str], *args: str) -> str:
    r = etcdctl(endpoints, *args)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout


def followers(c: Cluster) -> list[str]:
    leader = c.leader()
    return [c.address(n) for n in c.ids if n != leader]


def revision(endpoints: list[str]) -> int:
    return json.loads(ctl(endpoints, "get", "any-key", "-w", "json"))["header"]["revision"]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


PUT, DELETE = 0, 1  # etcdctl -w json prints the event type as a number (PUT omitted)


def kind(event: dict[str, Any]) -> str:
    return "DELETE" if event.get("type", PUT) == DELETE else "PUT"


def events_of(lines: list[str]) -> list[dict[str, Any]]:
    """The events of etcdctl watch -w json output (one response per line)."""
    out: list[dict[str, Any]] = []
    for line in lines:
        out += json.loads(line).get("Events") or []
    return out


def wait_events(w: Background, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        evs = events_of([ln for ln in w.output() if ln.startswith("{")])
        return evs if len(evs) >= count else None

    return wait_until(enough, timeout, f"{count} watch events (have {w.output()}, "
                                       f"stderr {w.err})")


def test_watch_prefix_rev_prev_kv_json_on_a_follower(shared_cluster: Cluster) -> None:
    c = shared_cluster
    f = followers(c)[0]
    ctl(c.endpoints, "del", "w1/", "--prefix")
    start = revision(c.endpoints) + 1
    ctl(c.endpoints, "put", "w1/a", "1")
    ctl(c.endpoints, "put", "w1/b", "2")
    ctl(c.endpoints, "put", "w1/a", "3")
    ctl(c.endpoints, "put", "w2/x", "no")  # outside the prefix
    ctl(c.endpoints, "del", "w1/b")
    with Background([f], "watch", "w1/", "--prefix", "--rev", str(start), "--prev-kv",
                    "-w", "json") as w:
        replay = wait_events(w, 4)
        ctl(c.endpoints, "put", "w1/c", "live")  # after the replay: a live event
        evs = wait_events(w, 5)
    assert [(kind(e), base64.b64decode(e["kv"]["key"]).decode())
            for e in evs] == [("PUT", "w1/a"), ("PUT", "w1/b"), ("PUT", "w1/a"),
                              ("DELETE", "w1/b"), ("PUT", "w1/c")]
    assert [e["kv"]["mod_revision"] for e in evs] == [start, start + 1, start + 2,
                                                      start + 4, start + 5]
    assert "prev_kv" not in replay[0]  # a create has none (etcd)
    assert replay[2]["prev_kv"]["value"] == b64("1")
    assert replay[3]["prev_kv"]["value"] == b64("2") and "value" not in replay[3]["kv"]
    assert evs[4]["kv"]["value"] == b64("live")


def nonblank(w: Background) -> list[str]:
    """etcdctl's text watch output without the empty line after each response."""
    return [line for line in w.output() if line]


def test_watch_text_output_and_live_events_on_every_member(shared_cluster: Cluster) -> None:
    c = shared_cluster
    watchers = [Background([addr], "watch", "wt/key") for addr in c.endpoints]
    try:
        # A watch from "now" is in place once its stream answered created; etcdctl prints
        # nothing for that, so write until every watcher saw a first event.
        def all_saw_one() -> bool:
            ctl(c.endpoints, "put", "wt/key", "warmup")
            return all(len(w.output()) >= 3 for w in watchers)

        wait_until(all_saw_one, 30.0, "every watcher to see a warm-up put", poll=0.3)
        ctl(c.endpoints, "put", "wt/key", "hello")
        ctl(c.endpoints, "del", "wt/key")
        for w in watchers:
            wait_until(lambda w=w: nonblank(w)[-2:] == ["DELETE", "wt/key"], 30.0,
                       f"the DELETE on a watcher (output {w.output()})")
            out = nonblank(w)
            assert out[-5:] == ["PUT", "wt/key", "hello", "DELETE", "wt/key"], out
            assert len(out) % 3 == 2 and set(out[:-5:3]) == {"PUT"}, out
    finally:
        for w in watchers:
            w.stop()


def test_watch_from_a_compacted_revision_is_canceled(shared_cluster: Cluster) -> None:
    c = shared_cluster
    ctl(c.endpoints, "put", "wc/a", "1")
    rev = revision(c.endpoints)
    ctl(c.endpoints, "compaction", str(rev))
    for addr in c.endpoints:
        # The compaction reaches the followers' state through the log: wait for it there.
        wait_until(lambda a=addr: etcdctl([a], "get", "wc/a", "--rev", str(rev - 1),
                                          "--consistency=s").returncode != 0,
                   30.0, f"the compaction applied on {addr}")
        r = etcdctl([addr], "watch", "wc/a", "--rev", "1", "-w", "json")
        assert r.returncode != 0
        resp = json.loads(r.stdout.strip().splitlines()[0])
        assert resp["Canceled"] and resp["CompactRevision"] >= rev, resp
        assert ("watch was canceled (etcdserver: mvcc: required revision has been "
                "compacted)") in error_lines(r.stderr)


def test_lease_commands_through_a_follower(shared_cluster: Cluster) -> None:
    c = shared_cluster
    f = [followers(c)[0]]
    out = ctl(f, "lease", "grant", "600")
    m = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\(600s\)\n", out)
    assert m, out
    lid = m.group(1)
    ctl(f, "put", "--lease", lid, "lk/a", "1")
    ctl(f, "put", "--lease", lid, "lk/b", "2")
    ttl = ctl(f, "lease", "timetolive", lid, "--keys")
    assert re.fullmatch(rf"lease {lid} granted with TTL\(600s\), remaining\((\d+)s\), "
                        r"attached keys\(\[lk/a lk/b\]\)\n", ttl), ttl
    js = json.loads(ctl(f, "lease", "timetolive", lid, "--keys", "-w", "json"))
    assert js["id"] == int(lid, 16) and js["granted-ttl"] == 600 and 0 < js["ttl"] <= 600
    assert sorted(js["keys"]) == [b64("lk/a"), b64("lk/b")]
    assert ctl(f, "lease", "keep-alive", "--once", lid) == \
        f"lease {lid} keepalived with TTL(600)\n"
    assert lid in ctl(f, "lease", "list").split()
    assert ctl(f, "lease", "revoke", lid) == f"lease {lid} revoked\n"
    assert json.loads(ctl(c.endpoints, "get", "lk/", "--prefix", "-w", "json")).get(
        "kvs") is None
    assert ctl(f, "lease", "timetolive", lid) == f"lease {lid} already expired\n"
    assert lid not in ctl(f, "lease", "list").split()
    r = etcdctl(f, "lease", "revoke", lid)
    assert r.returncode != 0
    assert "Error: failed to revoke lease (etcdserver: requested lease not found)" in \
        error_lines(r.stderr)
    r = etcdctl(f, "lease", "keep-alive", "--once", lid)
    assert r.returncode != 0 and "Error: etcdserver: requested lease not found" in \
        error_lines(r.stderr)
    r = etcdctl(f, "put", "--lease", lid, "lk/c", "3")
    assert r.returncode != 0 and "Error: etcdserver: requested lease not found" in \
        error_lines(r.stderr)


def test_keep_alive_stream_on_a_follower_and_expiry_seen_by_watchers(
        shared_cluster: Cluster) -> None:
    c = shared_cluster
    f = [followers(c)[0]]
    lid = ctl(f, "lease", "grant", "1").split()[1]  # raised to the minimum TTL
    granted = json.loads(ctl(f, "lease", "timetolive", lid, "-w", "json"))["granted-ttl"]
    assert granted >= 1
    ctl(f, "put", "--lease", lid, "le/a", "1")
    start = revision(c.endpoints) + 1
    with Background(f, "lease", "keep-alive", lid) as ka:
        lines = ka.wait_lines(3, timeout=30.0 + 3 * granted)
        assert lines == [f"lease {lid} keepalived with TTL({granted})"] * 3
    # Keep-alives stopped: the leader's lessor expires the lease; every watcher sees the
    # DELETE of its key.
    with Background([c.endpoints[-1]], "watch", "le/a", "--rev", str(start),
                    "-w", "json") as w:
        evs = wait_events(w, 1, timeout=30.0 + 3 * granted)
    assert kind(evs[0]) == "DELETE" and evs[0]["kv"]["key"] == b64("le/a")
    assert ctl(f, "lease", "timetolive", lid) == f"lease {lid} already expired\n"


def test_lock_is_mutually_exclusive_across_members(shared_cluster: Cluster) -> None:
    c = shared_cluster
    a_ep, b_ep = [c.address(c.leader())], followers(c)[:1]
    with Background(a_ep, "lock", "lk-mutex") as a:
        a_key = a.wait_lines(1)[0]
        assert a_key.startswith("lk-mutex/")
        with Background(b_ep, "lock", "lk-mutex", "--", "echo", "B ran") as b:
            # B has queued its key: it waits for A's (no output, still running).
            wait_until(lambda: len(ctl(c.endpoints, "get", "lk-mutex/", "--prefix",
                                       "--keys-only").split()) == 2,
                       30.0, "the second locker's key")
            assert b.output() == [] and b.proc.poll() is None
            assert a.stop() == 0  # SIGTERM: etcdctl unlocks and revokes its session
            assert b.wait_exit(30.0) == 0, b.err
            assert b.output() == ["B ran"]
    wait_until(lambda: ctl(c.endpoints, "get", "lk-mutex/", "--prefix") == "",
               30.0, "both lock keys gone")


def test_lock_command_failure_is_reported(shared_cluster: Cluster) -> None:
    c = shared_cluster
    r = etcdctl(followers(c)[:1], "lock", "lk-exit", "--", "sh", "-c", "echo held; exit 3")
    # etcdctl 3.4 reports the command's failure as its own (exit 1), as against etcd.
    assert r.stdout == "held\n" and r.returncode == 1, (r.stdout, r.stderr)
    assert error_lines(r.stderr) == ["Error: exit status 3"]


def test_elect_and_observe_across_members(shared_cluster: Cluster) -> None:
    c = shared_cluster
    ends = c.endpoints
    with Background([ends[0]], "elect", "el-e", "p1") as p1:
        assert p1.wait_lines(2)[1] == "p1"
        with Background([ends[1]], "elect", "-l", "el-e") as obs, \
                Background([ends[2]], "elect", "el-e", "p2") as p2:
            assert obs.wait_lines(2)[1] == "p1"
            wait_until(lambda: len(ctl(ends, "get", "el-e/", "--prefix",
                                       "--keys-only").split()) == 2,
                       30.0, "the second candidate's key")
            assert p2.output() == []
            assert p1.stop() == 0  # resigns
            assert p2.wait_lines(2)[1] == "p2"
            assert obs.wait_lines(4)[3] == "p2"
