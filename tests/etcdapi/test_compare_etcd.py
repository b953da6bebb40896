"""The same etcdctl command sequence against a throwaway real etcd (3.4, single member)
and against a fresh 3-node kvstore cluster (all three endpoints): the answers must be
equal, revisions included, once what legitimately differs is masked (ids, raft term and
index, sizes, version, addresses, timings; see etcdctl_util.normalize)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.etcdapi.etcdctl_util import ETCD, NO_ETCD, real_etcd, run_sequence

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
