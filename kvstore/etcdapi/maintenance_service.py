"""etcd's Maintenance service: Status, Alarm, Defragment, Hash, HashKV.

Everything but Alarm describes or acts on THIS member only, as in etcd (etcdctl calls
each endpoint in turn for `endpoint status`, `defrag`, `endpoint hashkv`). Alarm goes
through the log as in etcd: GET waits for a ReadIndex point (so it never misses an alarm
raised before it) and DEACTIVATE/ACTIVATE are proposals, both forwarded to the leader by
a follower; the alarm entries are kvstore's own (commands.encode_alarm), the same that
`kvstore alarm disarm` proposes. kvstore names an alarm's member by node id; etcd by
member id (members.member_id).

VERSION: etcdctl 3.4 prints it and clientv3 3.5 gates nothing we serve on it, but
clients compare major.minor (e.g. to decide whether a feature exists), so it reads as
the etcd API release this implements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kvstore.etcdapi.common import EtcdNode, mvcc_failure
from kvstore.etcdapi.forward import Forwarder, client_handler
from kvstore.etcdapi.members import member_id
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.server.request_error import RequestError
from kvstore.state import commands
from kvstore.state.alarms import TYPE_NAMES, Alarm
from kvstore.state.mvcc import MvccError

VERSION = "3.5.0"

# kvstore's alarm types (raft.proto AlarmOp.Type) are etcd's numbers: NONE 0, NOSPACE 1,
# CORRUPT 2; spelled out so a change on either side is caught here.
ETCD_ALARM = {pb.AlarmType.Value(name): t for t, name in TYPE_NAMES.items()}


def alarm_error(alarm: Alarm) -> str:
    """Status.errors entry of a raised alarm, as etcd writes one (AlarmMember in text
    format)."""
    return f"memberID:{member_id(alarm.member)} alarm:{alarm.name} "


class EtcdMaintenanceService:
    def __init__(self, node: EtcdNode, forwarder: Forwarder | None) -> None:
        self.node = node
        self.forwarder = forwarder

    def handlers(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        local = {"Status": self.status, "Alarm": self.alarm, "Defragment": self.defragment,
                 "Hash": self.hash, "HashKV": self.hash_kv}
        return {m: client_handler(self.node.member_id, self.forwarder, m, fn)
                for m, fn in local.items()}

    async def status(self, req: pb.StatusRequest,
                     context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        node = self.node
        driver = node.driver
        raft = driver.status()
        return pb.StatusResponse(
            header=node.header(),
            version=VERSION,
            dbSize=node.store.file_bytes(),
            dbSizeInUse=node.store.size_bytes(),
            leader=member_id(driver.runtime.leader),
            raftIndex=raft.commit,
            raftTerm=driver.runtime.term,
            raftAppliedIndex=driver.applied_index,
            errors=[alarm_error(a) for a in node.store.alarms()],
            isLearner=False,
        )

    async def alarm(self, req: pb.AlarmRequest,
                    context: grpc.aio.ServicerContext) -> pb.AlarmResponse:
        node = self.node
        if req.action == pb.AlarmRequest.GET:
            await node.wait(node.driver.read_index(), context)
            return self._alarms(node.store.alarms())
        if req.action not in (pb.AlarmRequest.ACTIVATE, pb.AlarmRequest.DEACTIVATE):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"etcdserver: unknown alarm action {req.action}")
        activate = req.action == pb.AlarmRequest.ACTIVATE
        raised = node.store.alarms()
        member = self._member_named(req.memberID, raised)
        alarm_type = ETCD_ALARM.get(req.alarm)
        if member is None or alarm_type is None:
            return self._alarms([])  # etcd: nothing to (de)activate, an empty answer
        target = Alarm(alarm_type, member)
        await node.wait(node.driver.propose(commands.encode_alarm(activate, alarm_type,
                                                                  member)), context)
        # etcd answers with the alarm it raised, or the one it cleared if it was raised.
        return self._alarms([target] if activate or target in raised else [])

    def _member_named(self, mid: int, raised: list[Alarm]) -> str | None:
        node = self.node.book.node_of(mid)
        if node is not None:
            return node
        return next((a.member for a in raised if member_id(a.member) == mid), None)

    def _alarms(self, alarms: list[Alarm]) -> pb.AlarmResponse:
        return pb.AlarmResponse(header=self.node.header(), alarms=[
            pb.AlarmMember(memberID=member_id(a.member), alarm=pb.AlarmType.Value(a.name))
            for a in alarms if a.name in pb.AlarmType.keys()])

    async def defragment(self, req: pb.DefragmentRequest,
                         context: grpc.aio.ServicerContext) -> pb.DefragmentResponse:
        # A compacting copy of the whole database: off the event loop. A store without
        # defragment() (LMDB reuses freed pages anyway; only the file would shrink) does
        # nothing, so `etcdctl defrag` still works.
        defragment = getattr(self.node.store, "defragment", None)
        if defragment is not None:
            await asyncio.to_thread(defragment)
        return pb.DefragmentResponse(header=self.node.header())

    async def hash(self, req: pb.HashRequest,
                   context: grpc.aio.ServicerContext) -> pb.HashResponse:
        value = await self.node.read(self.node.store.hash_all)
        return pb.HashResponse(header=self.node.header(), hash=value)

    async def hash_kv(self, req: pb.HashKVRequest,
                      context: grpc.aio.ServicerContext) -> pb.HashKVResponse:
        try:
            value, compact_rev, hash_rev = await self.node.read(self.node.store.hash_kv,
                                                                 req.revision)
        except MvccError as err:
            raise mvcc_failure(err.message) from None
        return pb.HashKVResponse(header=self.node.header(), hash=value,
                                 compact_revision=compact_rev, hash_revision=hash_rev)
