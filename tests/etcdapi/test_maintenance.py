"""Maintenance and Cluster services on stand-ins for the driver and the store: what Status
reports, the alarm member-id mapping, and MemberList's fallback of asking a peer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from kvstore.etcdapi.cluster_service import EtcdClusterService
from kvstore.etcdapi.common import EtcdNode
from kvstore.etcdapi.maintenance_service import EtcdMaintenanceService, alarm_error
from kvstore.etcdapi.members import MemberBook, member_id
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.raft.errors import NotLeader
from kvstore.state import commands
from kvstore.state.alarms import CORRUPT, NOSPACE, Alarm
from kvstore.v1 import raft_pb2


@dataclass
class FakeStore:
    raised: list[Alarm] = field(default_factory=list)
    defragmented: int = 0

    def revisions(self) -> tuple[int, int]:
        return 42, 7

    def alarms(self) -> list[Alarm]:
        return list(self.raised)

    def file_bytes(self) -> int:
        return 1 << 20

    def size_bytes(self) -> int:
        return 1 << 16

    def hash_all(self) -> int:
        return 1234

    def hash_kv(self, revision: int) -> tuple[int, int, int]:
        return 99, 7, revision or 42

    def defragment(self) -> None:
        self.defragmented += 1


class FakeDriver:
    """Proposals are decoded and, for alarms, applied to the store at once."""

    def __init__(self, store: FakeStore, leader: str = "n1", is_leader: bool = True) -> None:
        self.store = store
        self.is_leader = is_leader
        self.runtime = SimpleNamespace(term=3, leader=leader, resyncing=False)
        self.applied_index = 17
        self.proposed: list[raft_pb2.Command] = []

    def status(self) -> Any:
        return SimpleNamespace(commit=18)

    def _future(self, value: Any) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        if self.is_leader:
            fut.set_result(value)
        else:
            fut.set_exception(NotLeader(self.runtime.leader))
        return fut

    def read_index(self) -> asyncio.Future[Any]:
        return self._future(self.applied_index)

    def propose(self, data: bytes) -> asyncio.Future[Any]:
        cmd = raft_pb2.Command.FromString(data)
        self.proposed.append(cmd)
        if self.is_leader and cmd.HasField("alarm"):
            a = Alarm(cmd.alarm.type, cmd.alarm.member)
            if cmd.alarm.action == raft_pb2.AlarmOp.ACTIVATE:
                self.store.raised.append(a)
            elif a in self.store.raised:
                self.store.raised.remove(a)
        return self._future(commands.ApplyResult(index=20, client_id=b"", seq=0, stale=False,
                                                 ok=True))


class Context:
    def time_remaining(self) -> float:
        return 5.0


def _node(store: FakeStore, driver: FakeDriver, learned: dict[str, str] | None = None,
          ) -> EtcdNode:
    book = MemberBook("n1", "127.0.0.1:7001", "127.0.0.1:7101",
                      {"n2": "127.0.0.1:7102", "n3": "127.0.0.1:7103"},
                      (learned or {}).get, client_tls=False, peer_tls=False)
    return EtcdNode(driver, store, "cid", book, 4096, 1 << 20)  # type: ignore[arg-type]


async def test_status_reports_this_member() -> None:
    store = FakeStore([Alarm(NOSPACE, "n2")])
    node = _node(store, FakeDriver(store, leader="n2"))
    st = await EtcdMaintenanceService(node, None).status(pb.StatusRequest(), Context())
    assert st.version.startswith("3.5.")
    assert (st.dbSize, st.dbSizeInUse) == (1 << 20, 1 << 16)
    assert st.leader == member_id("n2")
    assert (st.raftIndex, st.raftTerm, st.raftAppliedIndex) == (18, 3, 17)
    assert list(st.errors) == [f"memberID:{member_id('n2')} alarm:NOSPACE "]
    assert alarm_error(Alarm(CORRUPT, "n1")).endswith("alarm:CORRUPT ")
    assert st.header.revision == 42 and st.header.member_id == member_id("n1")
    assert st.header.cluster_id == node.cluster_id != 0


async def test_alarm_get_and_deactivate_by_member_id() -> None:
    store = FakeStore([Alarm(NOSPACE, "n2"), Alarm(CORRUPT, "n3")])
    driver = FakeDriver(store)
    svc = EtcdMaintenanceService(_node(store, driver), None)
    got = await svc.alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET), Context())
    assert {(a.memberID, a.alarm) for a in got.alarms} == {
        (member_id("n2"), pb.NOSPACE), (member_id("n3"), pb.CORRUPT)}
    cleared = await svc.alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE,
                                              memberID=member_id("n2"), alarm=pb.NOSPACE),
                              Context())
    assert [(a.memberID, a.alarm) for a in cleared.alarms] == [(member_id("n2"), pb.NOSPACE)]
    assert driver.proposed[-1].alarm.member == "n2"
    assert store.raised == [Alarm(CORRUPT, "n3")]
    # An unknown member or NONE: nothing proposed, an empty answer (as etcd).
    n = len(driver.proposed)
    for req in (pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=5,
                                alarm=pb.NOSPACE),
                pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=member_id("n3"),
                                alarm=pb.NONE)):
        assert list((await svc.alarm(req, Context())).alarms) == []
    assert len(driver.proposed) == n


async def test_alarm_on_a_follower_raises_not_leader_for_forwarding() -> None:
    store = FakeStore()
    svc = EtcdMaintenanceService(_node(store, FakeDriver(store, is_leader=False)), None)
    with pytest.raises(NotLeader):
        await svc.alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET), Context())


async def test_defragment_hash_and_hash_kv() -> None:
    store = FakeStore()
    svc = EtcdMaintenanceService(_node(store, FakeDriver(store)), None)
    await svc.defragment(pb.DefragmentRequest(), Context())
    assert store.defragmented == 1
    assert (await svc.hash(pb.HashRequest(), Context())).hash == 1234
    hk = await svc.hash_kv(pb.HashKVRequest(revision=30), Context())
    assert (hk.hash, hk.compact_revision, hk.hash_revision) == (99, 7, 30)


async def test_member_list_without_revision_and_with_unknown_addresses() -> None:
    store = FakeStore()
    node = _node(store, FakeDriver(store), learned={"n2": "127.0.0.1:7002"})
    resp = await EtcdClusterService(node, None).member_list(pb.MemberListRequest(), Context())
    assert resp.header.revision == 0  # etcd's Cluster responses carry none
    urls = {m.name: list(m.clientURLs) for m in resp.members}
    assert urls == {"n1": ["http://127.0.0.1:7001"], "n2": ["http://127.0.0.1:7002"],
                    "n3": []}


async def test_member_list_asks_a_peer_for_its_client_address() -> None:
    store = FakeStore()
    node = _node(store, FakeDriver(store))

    class AskingForwarder:
        async def call(self, peer: str, method: str, request: Any, timeout: float) -> Any:
            assert method == "MemberList"
            port = {"n2": 7002, "n3": 7003}[peer]
            return pb.MemberListResponse(members=[pb.Member(
                name=peer, clientURLs=[f"http://127.0.0.1:{port}"])])

    svc = EtcdClusterService(node, AskingForwarder())  # type: ignore[arg-type]
    resp = await svc.member_list(pb.MemberListRequest(), Context())
    assert {m.name: list(m.clientURLs) for m in resp.members}["n3"] == [
        "http://127.0.0.1:7003"]
    assert node.book.learned == {"n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"}
