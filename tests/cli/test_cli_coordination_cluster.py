"""`kvstore watch`, `lease`, `lock` and `elect` against `kvstore cluster up`: every test of
test_cli_coordination.py (written against a real etcd) re-run against a kvstore node, plus
`put --lease` (kvstore's own put). Skipped, with the reason, while kvstore answers
UNIMPLEMENTED for etcd's Watch or Lease service.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cli_util import Run, assert_one_line_error, running_cluster
from test_cli_coordination import *  # noqa: F403 - the shared tests, re-run here

from tests.client.test_coordination_cluster import skip_unless_served
from tests.etcdapi.etcdctl_util import ETCDCTL, NO_ETCDCTL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if ETCDCTL is None:
        pytest.skip(NO_ETCDCTL)
    tmp = tmp_path_factory.mktemp("coord-cli-cluster")
    with running_cluster(tmp / "cluster", tmp) as cluster:
        skip_unless_served(cluster.endpoints)
        yield SimpleNamespace(address=cluster.endpoints[0], cluster=cluster)


def test_put_with_a_lease(kvstore: Run, server: Any, tmp_path: Path) -> None:
    ep = ["--endpoints", ",".join(server.cluster.endpoints)]
    lease = kvstore("lease", "grant", "30", *ep).stdout.split()[1]
    assert kvstore("put", "pl", "v", "--lease", lease, *ep).stdout == "OK\n"
    assert kvstore("get", "pl", *ep).stdout == "v\n"
    assert kvstore("lease", "revoke", lease, *ep).returncode == 0
    assert kvstore("get", "pl", *ep).returncode == 1
    assert_one_line_error(kvstore("put", "pl", "v", "--lease", lease, *ep),
                          "lease not found")
