"""Admin API on real processes: replicas converge to equal shard digests, and fault
injection is refused unless the node was started with the test flag."""

from __future__ import annotations

import grpc
import pytest

from kvstore.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.cluster_util import Cluster, wait_until

pytestmark = pytest.mark.integration


def _digest(address: str) -> admin_pb2.DigestResponse:
    with grpc.insecure_channel(address) as channel:
        return admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(), timeout=5)


def test_replicas_converge_to_equal_digests(cluster: Cluster) -> None:
    with cluster.client() as client:
        for i in range(50):
            client.put(f"key-{i}", f"value-{i}")
        client.delete("key-7")

    def converged() -> list[admin_pb2.DigestResponse] | None:
        ds = [_digest(cluster.peer_address(n)) for n in cluster.ids]
        same = len({(d.applied_index, tuple(d.shard_digests)) for d in ds}) == 1
        return ds if same else None

    digests = wait_until(converged, 10, "equal digests on every node")
    assert len(digests[0].shard_digests) == 16
    assert digests[0].applied_index >= 52


def test_fault_injection_is_refused_without_the_test_flag(cluster: Cluster) -> None:
    node = cluster.ids[0]
    with grpc.insecure_channel(cluster.peer_address(node)) as channel:
        with pytest.raises(grpc.RpcError) as err:
            admin_pb2_grpc.AdminStub(channel).SetFaults(
                admin_pb2.SetFaultsRequest(drop_to=[cluster.ids[1]]), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
