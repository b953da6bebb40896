"""The same etcdctl command sequence against a throwaway real etcd (3.4, single member)
and against a fresh 3-node kvstore cluster (all three endpoints): the answers must be
equal, revisions included, once what legitimately differs is masked (ids, raft term and
index, sizes, version, addresses, timings; see etcdctl_util.normalize)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore.etcdapi.methods import LEASE, stub
from kvstore.etcdpb import rpc_pb2 as pb
from tests.etcdapi.etcdctl_util import (
    ETCD,
    LEASE_ID,
    LEASE_SEQUENCE,
    NO_ETCD,
    WATCH_REPLAY,
    WATCH_REPLAY_EVENTS,
    Background,
    normalize,
    real_etcd,
    run_sequence,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_etcdctl_answers_match_real_etcd(needs_etcdctl: None, start_cluster: Any,
                                         tmp_path: Path) -> None:
    if ETCD is None:
        pytest.skip(NO_ETCD)
    with real_etcd(tmp_path / "etcd-data") as address:
        expected = run_sequence([address])
    # The reference itself must be meaningful: etcd answered, and some steps fail as meant.
    assert expected[0] == {"cmd": "put a 1", "rc": 0, "out": "OK", "err": []}, expected[0]
    assert sum(r["rc"] != 0 for r in expected) == 4, expected
    cluster = start_cluster(3)
    actual = run_sequence(cluster.endpoints)
    diffs = [
        f"{e['cmd']!r}:\n  etcd:    {json.dumps(e)}\n  kvstore: {json.dumps(a)}"
        for e, a in zip(expected, actual, strict=True) if e != a
    ]
    assert not diffs, "kvstore answers differently from etcd:\n" + "\n".join(diffs)


def _leases_and_replay(endpoints: list[str]) -> list[Any]:
    """LEASE_SEQUENCE after a grant of LEASE_ID, then the watch replay's responses."""
    with grpc.insecure_channel(endpoints[-1]) as channel:
        stub(channel, LEASE).LeaseGrant(pb.LeaseGrantRequest(ID=LEASE_ID, TTL=600), timeout=10)
    results: list[Any] = run_sequence(endpoints, LEASE_SEQUENCE)
    with Background(endpoints[-1:], *WATCH_REPLAY) as watch:
        def replayed() -> list[Any] | None:
            resps = [json.loads(line) for line in watch.output() if line.startswith("{")]
            count = sum(len(r.get("Events") or []) for r in resps)
            return resps if count >= WATCH_REPLAY_EVENTS else None

        resps = wait_until(replayed, 30.0, "the watch replay")
    results.append({"cmd": " ".join(WATCH_REPLAY),
                    "events": [e for r in resps for e in normalize(json.dumps(r))["Events"]]})
    return results


def test_leases_and_watch_replay_match_real_etcd(needs_etcdctl: None, start_cluster: Any,
                                                 tmp_path: Path) -> None:
    if ETCD is None:
        pytest.skip(NO_ETCD)
    with real_etcd(tmp_path / "etcd-data") as address:
        expected = _leases_and_replay([address])
    assert expected[0] == {"cmd": "put --lease=1234 la 1", "rc": 0, "out": "OK", "err": []}
    assert sum(r.get("rc", 0) != 0 for r in expected) == 3, expected
    assert len(expected[-1]["events"]) == WATCH_REPLAY_EVENTS, expected[-1]
    cluster = start_cluster(3)
    actual = _leases_and_replay(cluster.endpoints)
    diffs = [
        f"{e['cmd']!r}:\n  etcd:    {json.dumps(e)}\n  kvstore: {json.dumps(a)}"
        for e, a in zip(expected, actual, strict=True) if e != a
    ]
    assert not diffs, "kvstore answers differently from etcd:\n" + "\n".join(diffs)
