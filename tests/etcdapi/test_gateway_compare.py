"""The same JSON-gateway HTTP sequence (KV, txn, compaction, leases, errors, a watch that
replays history and then sees a live write, status, member list, /version) against a
throwaway real etcd 3.4 and against a fresh 3-node kvstore cluster's client ports (all
three in turn): the answers must be equal, revisions and HTTP statuses included, once
ids, raft positions, sizes, remaining TTLs and Go's or Python's JSON parser messages
are masked (gateway_util)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.etcdapi.etcdctl_util import ETCD, NO_ETCD, mask, real_etcd
from tests.etcdapi.gateway_util import FOO, FOP, Watch, b64, call, run_sequence

pytestmark = pytest.mark.integration

# History of the prefix "foo" from revision 3 (the compacted revision itself, which etcd
# and kvstore both replay) on after SEQUENCE: put foo=bar2, put foo/a, put foo/b, delete
# foo/a, the txn's put foo/c, the failed txn's delete foo/c.
REPLAYED = 6


def scenario(addresses: list[str]) -> list[dict[str, Any]]:
    results = run_sequence(addresses)
    request = {"create_request": {"key": FOO, "range_end": FOP, "start_revision": "3",
                                  "prev_kv": True}}
    with Watch(addresses[-1], request) as watch:
        replayed = watch.wait_events(REPLAYED)
        status, _ = call(addresses[0], "/v3/kv/put", {"key": b64("foo/live"), "value": "eA=="})
        assert status == 200
        events = watch.wait_events(REPLAYED + 1)
        first = watch.objects[0]
    assert len(replayed) == REPLAYED, replayed  # nothing beyond the history before the put
    results.append({"step": "watch", "status": watch.status, "created": mask(first),
                    "events": mask(events)})
    status, version = call(addresses[0], "/version", method="GET")
    dotted = {k: bool(re.fullmatch(r"\d+\.\d+\.\d+", v)) for k, v in version.items()}
    results.append({"step": "version", "status": status, "answer": dotted})
    return results


def test_gateway_answers_match_real_etcd(needs_etcdctl: None, start_cluster: Any,
                                         tmp_path: Path) -> None:
    if ETCD is None:
        pytest.skip(NO_ETCD)
    with real_etcd(tmp_path / "etcd-data") as address:
        expected = scenario([address])
    # The reference itself must be meaningful: etcd answered, and some steps fail as meant.
    assert expected[0]["status"] == 200 and expected[-1]["answer"] == {
        "etcdserver": True, "etcdcluster": True}, expected
    failed = [r["step"] for r in expected if r["status"] != 200]
    assert failed == ["range future revision", "range without a key",
                      "range compacted revision", "lease grant again",
                      "revoke again (kv alias)", "put with revoked lease", "bad JSON",
                      "bad enum", "unknown path"], failed
    cluster = start_cluster(3)
    actual = scenario(cluster.endpoints)
    diffs = [
        f"{e['step']!r}:\n  etcd:    {json.dumps(e)}\n  kvstore: {json.dumps(a)}"
        for e, a in zip(expected, actual, strict=True) if e != a
    ]
    assert not diffs, "kvstore's gateway answers differently from etcd's:\n" + "\n".join(diffs)
