"""The KV service's rules with no I/O: validate a request, encode its command, build its
answer, and map every outcome to one gRPC status code.

The gRPC service (kv_service.KVService, asyncio) and the simulator's service (tests/sim)
both call these, so a client sees the same status codes, messages and leader hints from
both, and the simulator's clients make the decisions real clients make.

Range, Txn and Compact carry etcd's own messages and are the same commands and the same
read path as etcd's KV service (kvstore.etcdapi): validation and etcd's errors come from
kvstore.server.mvcc_requests, writes are commands.encode_txn/encode_compact, reads are
store.range. What is native is only the envelope: the write id that makes a Txn exactly
once, the stale flag, and kvstore's header. Get is a Range of one key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from kvstore.etcdpb import rpc_pb2
from kvstore.raft.errors import NotLeader
from kvstore.server import mvcc_requests
from kvstore.server.outcomes import AlarmRefused, LeadershipLost, SessionExpired, StaleRequest
from kvstore.server.request_error import RequestError
from kvstore.state import commands, kv_ops
from kvstore.state.alarms import MAX_MEMBER_BYTES, NOSPACE, TYPE_NAMES, Alarm
from kvstore.state.commands import ApplyResult
from kvstore.v1 import kv_pb2

MAX_BATCH_OPS = 10_000
MAX_CLIENT_ID_BYTES = 64  # session ids are b"s" + 8 bytes; room for older client-chosen ids
METHODS = ("Put", "Get", "Delete", "CompareAndSwap", "RegisterSession", "Alarm", "Range", "Txn",
           "Compact")
ALARM_TYPES = {name: t for t, name in TYPE_NAMES.items()}
OP_METHOD = {"put": "Put", "get": "Get", "delete": "Delete", "cas": "CompareAndSwap",
             "range": "Range", "txn": "Txn"}
LEADER_ID_KEY = "kvstore-leader-id"
LEADER_ADDRESS_KEY = "kvstore-leader-address"


@dataclass(frozen=True)
class Operation:
    """A validated request: a command to propose, or a key to read."""

    method: str
    write: bytes | None = None  # the encoded command of a write
    key: bytes = b""  # a read's key
    linearizable: bool = True  # a read: wait for a ReadIndex point first
    # A read as the store serves it (Get: a Range of its one key); None for writes.
    range: rpc_pb2.RangeRequest | None = None
    # A write that may store a value (a put, a CAS, a Txn with a put in either branch):
    # what a raised alarm refuses up front.
    stores: bool = False
    # Alarm: the AlarmOp entries a DEACTIVATE proposes, one per type, in order (empty for
    # GET). Not `write`: they answer with the alarms left, not one ApplyResult, and a
    # disarm must not be refused by the very alarm it clears.
    disarm: tuple[bytes, ...] = ()

    @property
    def is_write(self) -> bool:
        return self.write is not None


class KVRules:
    def __init__(
        self,
        node_id: str,
        max_key_bytes: int,
        max_value_bytes: int,
        address_of: Callable[[str], str],
    ) -> None:
        self.node_id = node_id
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.address_of = address_of

    # -- validation and encoding ---------------------------------------------------------

    def prepare(self, method: str, request: Any) -> Operation:
        """Check `request` and encode what it asks for; raises RequestError."""
        if method == "RegisterSession":
            return Operation(method, commands.encode_register())
        if method == "Alarm":
            return self._prepare_alarm(request)
        if method in ("Range", "Txn", "Compact"):
            return self._prepare_mvcc(method, request)
        self._check_key(request.key)
        if method == "Get":
            read = rpc_pb2.RangeRequest(key=request.key, revision=request.revision)
            if request.revision:
                mvcc_requests.check_range(read, self.max_key_bytes)
            return Operation(method, key=request.key, linearizable=not request.stale,
                             range=read)
        if method == "Delete":
            cid, seq, low = self._write_id(request)
            return Operation(method, commands.encode_delete(cid, seq, low, request.key))
        self._check_value(request.value)
        cid, seq, low = self._write_id(request)
        if method == "Put":
            return Operation(method, commands.encode_put(cid, seq, low, request.key,
                                                         request.value), stores=True)
        if method == "CompareAndSwap":
            self._check_value(request.expected)
            expected = None if request.expect_absent else request.expected
            return Operation(method, commands.encode_cas(cid, seq, low, request.key, expected,
                                                         request.value), stores=True)
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method}")

    def _prepare_mvcc(self, method: str, request: Any) -> Operation:
        """Range, Txn, Compact: etcd's checks (and messages) on etcd's messages, then the
        very commands the etcd service proposes; a Txn also carries the client's write id,
        which is what makes it exactly once."""
        mr = mvcc_requests
        if method == "Range":
            mr.check_range(request.range, self.max_key_bytes)
            stale = request.stale or request.range.serializable
            return Operation(method, key=request.range.key, linearizable=not stale,
                             range=request.range)
        if method == "Txn":
            mr.check_txn(request.txn, self.max_key_bytes, self.max_value_bytes)
            cid, seq, low = self._write_id(request)
            return Operation(method, commands.encode_txn(cid, seq, low, request.txn),
                             stores=kv_ops.has_put(request.txn))
        mr.check_compact(rpc_pb2.CompactionRequest(revision=request.revision,
                                                   physical=request.physical))
        return Operation(method, commands.encode_compact(request.revision, request.physical))

    @staticmethod
    def _prepare_alarm(request: kv_pb2.AlarmRequest) -> Operation:
        """GET: a linearizable read of the alarms. DEACTIVATE: one AlarmOp per type asked
        for ("" = every type), each clearing that type for `member` ("" = every member);
        idempotent, so a client may retry it freely."""
        if request.action == kv_pb2.AlarmRequest.GET:
            return Operation("Alarm")
        if request.action != kv_pb2.AlarmRequest.DEACTIVATE:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"unknown alarm action {request.action}")
        name = request.type.strip().upper()
        if name and name not in ALARM_TYPES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"unknown alarm type {request.type!r}; expected one of "
                               f"{', '.join(sorted(ALARM_TYPES))}")
        if len(request.member.encode()) > MAX_MEMBER_BYTES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"member must be at most {MAX_MEMBER_BYTES} bytes")
        types = [ALARM_TYPES[name]] if name else sorted(TYPE_NAMES)
        return Operation("Alarm", disarm=tuple(
            commands.encode_alarm(False, t, request.member) for t in types))

    def check_local_read(self, resyncing: bool) -> None:
        """A stale (local) read is refused while this node is being rebuilt from the
        leader: its state is empty or partial, and serving it would send a reader back in
        time."""
        if resyncing:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"node {self.node_id} is being rebuilt from the leader "
                               "(resync); ask another node")

    def batch_ops(self, request: kv_pb2.BatchRequest) -> list[tuple[str, Any] | None]:
        """(method, request) of each operation of a Batch; None for an empty one."""
        if len(request.ops) > MAX_BATCH_OPS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"at most {MAX_BATCH_OPS} operations per batch")
        ops: list[tuple[str, Any] | None] = []
        for op in request.ops:
            kind = op.WhichOneof("op")
            ops.append(None if kind is None else (OP_METHOD[kind], getattr(op, kind)))
        return ops

    def _check_key(self, key: bytes) -> None:
        if not 1 <= len(key) <= self.max_key_bytes:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"key must be 1..{self.max_key_bytes} bytes, got {len(key)}")

    def _check_value(self, value: bytes) -> None:
        if len(value) > self.max_value_bytes:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"value must be at most {self.max_value_bytes} bytes, "
                               f"got {len(value)}")

    def _write_id(self, req: Any) -> tuple[bytes, int, int]:
        w = req.write_id
        if not w.client_id:
            # A caller without a write id (any non-kvstore client) gets no session: no
            # retry de-duplication, and it cannot push real clients' sessions out.
            return b"", 0, 0
        if len(w.client_id) > MAX_CLIENT_ID_BYTES:
            # Session ids are b"s" + 8 bytes; the id is stored in every log entry and session
            # record, so an unbounded one would let a caller bloat both.
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"write_id.client_id must be at most {MAX_CLIENT_ID_BYTES} "
                               f"bytes, got {len(w.client_id)}")
        if w.seq == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "write_id.seq must be >= 1")
        if w.lowest_pending_seq > w.seq:
            # The session forgets every result below lowest_pending_seq: a write claiming a
            # higher one would drop its own result, and its retry would be refused as stale.
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"write_id.lowest_pending_seq ({w.lowest_pending_seq}) must "
                               f"not exceed write_id.seq ({w.seq})")
        return w.client_id, w.seq, w.lowest_pending_seq

    # -- answers -------------------------------------------------------------------------

    @staticmethod
    def header(node_id: str, applied: int, leader: str, term: int,
               revision: int = 0) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(node_id=node_id, applied_index=applied, leader_id=leader,
                                     term=term, revision=revision)

    @staticmethod
    def write_response(method: str, result: ApplyResult, header: kv_pb2.ResponseHeader) -> Any:
        """The answer to an applied write; raises RequestError (etcd's status) when the data
        model refused it (nothing changed). The header's revision is the store revision
        right after the write."""
        if result.error:
            raise mvcc_requests.mvcc_status(result.error)
        header.revision = result.revision
        if method == "RegisterSession":
            return kv_pb2.RegisterSessionResponse(header=header, client_id=result.client_id)
        if method == "Txn":
            # A duplicate (a retry of an applied write id) has no responses: sessions keep
            # which branch a write took, not what it answered.
            answer = rpc_pb2.TxnResponse()
            if result.response is not None:
                answer.CopyFrom(result.response)
            answer.succeeded = result.ok
            return kv_pb2.TxnResponse(header=header, result=answer,
                                      duplicate=result.duplicate)
        if method == "Compact":
            return kv_pb2.CompactResponse(header=header)
        if method == "Put":
            return kv_pb2.PutResponse(header=header)
        if method == "Delete":
            return kv_pb2.DeleteResponse(header=header, existed=result.ok)
        return kv_pb2.CompareAndSwapResponse(header=header, succeeded=result.ok)

    @staticmethod
    def alarm_response(raised: list[Alarm], header: kv_pb2.ResponseHeader) -> Any:
        return kv_pb2.AlarmResponse(header=header, alarms=[
            kv_pb2.AlarmMember(member=a.member, type=a.name) for a in raised])

    @staticmethod
    def read_response(found: bool, value: bytes, header: kv_pb2.ResponseHeader) -> Any:
        return kv_pb2.GetResponse(header=header, found=found, value=value)

    @staticmethod
    def range_response(method: str, result: rpc_pb2.RangeResponse,
                       header: kv_pb2.ResponseHeader) -> Any:
        """A Range's answer, or a Get's (the one key of its Range, with its revisions)."""
        if method == "Range":
            return kv_pb2.RangeResponse(header=header, result=result)
        if not result.kvs:
            return kv_pb2.GetResponse(header=header, found=False)
        kv = result.kvs[0]
        return kv_pb2.GetResponse(header=header, found=True, value=kv.value,
                                  create_revision=kv.create_revision,
                                  mod_revision=kv.mod_revision, version=kv.version)

    @staticmethod
    def mvcc_failure(message: str) -> RequestError:
        """etcd's status for an MvccError of a read (compacted or future revision)."""
        return mvcc_requests.mvcc_status(message)

    @staticmethod
    def op_result(method: str | None, outcome: Any) -> kv_pb2.OpResult:
        """One Batch operation's answer: its response, or its status as a unary call would
        have ended (a RequestError)."""
        if method is None:
            return kv_pb2.OpResult(code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                   message="empty operation")
        if isinstance(outcome, RequestError):
            meta = dict(outcome.metadata)
            return kv_pb2.OpResult(code=outcome.code.value[0], message=outcome.message,
                                   leader_id=meta.get(LEADER_ID_KEY, ""),
                                   leader_address=meta.get(LEADER_ADDRESS_KEY, ""))
        result = kv_pb2.OpResult()
        field = {v: k for k, v in OP_METHOD.items()}[method]
        getattr(result, field).CopyFrom(outcome)
        return result

    # -- outcomes to status codes --------------------------------------------------------

    @staticmethod
    def alarm_refusal(alarm_type: int) -> RequestError:
        """What a put or compare-and-swap gets while an alarm is raised (etcd's wording)."""
        if alarm_type == NOSPACE:
            return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "etcdserver: mvcc: database space exceeded")
        return RequestError(grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")

    def check_alarms(self, method: str, raised: list[Alarm],
                     op: Operation | None = None) -> None:
        """Refuse a put, compare-and-swap or Txn that stores a value up front while an alarm
        is raised, rather than growing the log with entries that will be refused when
        applied (deletes and reads go on, so space can be freed)."""
        stores = op.stores if op is not None else method in ("Put", "CompareAndSwap")
        if raised and stores:
            raise self.alarm_refusal(raised[0].type)

    def not_leader(self, leader: str) -> RequestError:
        address = self.address_of(leader) if leader else ""
        where = f"leader is {leader} at {address}" if leader else "leader unknown"
        return RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"node {self.node_id} is not the leader; {where}",
            ((LEADER_ID_KEY, leader), (LEADER_ADDRESS_KEY, address)),
        )

    def failure(self, err: BaseException) -> RequestError:
        """The status a request ends with when the runtime failed it with `err`."""
        if isinstance(err, RequestError):
            return err
        if isinstance(err, NotLeader):
            return self.not_leader(err.leader)
        if isinstance(err, LeadershipLost):
            return RequestError(grpc.StatusCode.UNAVAILABLE, str(err))
        if isinstance(err, StaleRequest):
            # Not retryable: the session already moved past this write id.
            return RequestError(grpc.StatusCode.ABORTED, str(err))
        if isinstance(err, AlarmRefused):
            return self.alarm_refusal(err.alarm_type)
        if isinstance(err, SessionExpired):
            return RequestError(grpc.StatusCode.NOT_FOUND, str(err))
        if isinstance(err, TimeoutError):
            return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                "no quorum answered before the deadline; a write may still apply")
        raise err
