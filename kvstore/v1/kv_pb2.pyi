from kvstore.etcdpb import rpc_pb2 as _rpc_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResponseHeader(_message.Message):
    __slots__ = ("node_id", "applied_index", "leader_id", "term", "revision")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    applied_index: int
    leader_id: str
    term: int
    revision: int
    def __init__(self, node_id: _Optional[str] = ..., applied_index: _Optional[int] = ..., leader_id: _Optional[str] = ..., term: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class WriteId(_message.Message):
    __slots__ = ("client_id", "seq", "lowest_pending_seq")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LOWEST_PENDING_SEQ_FIELD_NUMBER: _ClassVar[int]
    client_id: bytes
    seq: int
    lowest_pending_seq: int
    def __init__(self, client_id: _Optional[bytes] = ..., seq: _Optional[int] = ..., lowest_pending_seq: _Optional[int] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "write_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    write_id: WriteId
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., write_id: _Optional[_Union[WriteId, _Mapping]] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "stale", "revision")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    stale: bool
    revision: int
    def __init__(self, key: _Optional[bytes] = ..., stale: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("header", "found", "value", "create_revision", "mod_revision", "version")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    found: bool
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class RangeRequest(_message.Message):
    __slots__ = ("range", "stale")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    range: _rpc_pb2.RangeRequest
    stale: bool
    def __init__(self, range: _Optional[_Union[_rpc_pb2.RangeRequest, _Mapping]] = ..., stale: _Optional[bool] = ...) -> None: ...

class RangeResponse(_message.Message):
    __slots__ = ("header", "result")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    result: _rpc_pb2.RangeResponse
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., result: _Optional[_Union[_rpc_pb2.RangeResponse, _Mapping]] = ...) -> None: ...

class TxnRequest(_message.Message):
    __slots__ = ("write_id", "txn")
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    write_id: WriteId
    txn: _rpc_pb2.TxnRequest
    def __init__(self, write_id: _Optional[_Union[WriteId, _Mapping]] = ..., txn: _Optional[_Union[_rpc_pb2.TxnRequest, _Mapping]] = ...) -> None: ...

class TxnResponse(_message.Message):
    __slots__ = ("header", "result", "duplicate")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    result: _rpc_pb2.TxnResponse
    duplicate: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., result: _Optional[_Union[_rpc_pb2.TxnResponse, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ("revision", "physical")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_FIELD_NUMBER: _ClassVar[int]
    revision: int
    physical: bool
    def __init__(self, revision: _Optional[int] = ..., physical: _Optional[bool] = ...) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "write_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    write_id: WriteId
    def __init__(self, key: _Optional[bytes] = ..., write_id: _Optional[_Union[WriteId, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("header", "existed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    existed: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., existed: _Optional[bool] = ...) -> None: ...

class CompareAndSwapRequest(_message.Message):
    __slots__ = ("key", "expect_absent", "expected", "value", "write_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expect_absent: bool
    expected: bytes
    value: bytes
    write_id: WriteId
    def __init__(self, key: _Optional[bytes] = ..., expect_absent: _Optional[bool] = ..., expected: _Optional[bytes] = ..., value: _Optional[bytes] = ..., write_id: _Optional[_Union[WriteId, _Mapping]] = ...) -> None: ...

class CompareAndSwapResponse(_message.Message):
    __slots__ = ("header", "succeeded")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    succeeded: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., succeeded: _Optional[bool] = ...) -> None: ...

class RegisterSessionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterSessionResponse(_message.Message):
    __slots__ = ("header", "client_id")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    client_id: bytes
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., client_id: _Optional[bytes] = ...) -> None: ...

class AlarmRequest(_message.Message):
    __slots__ = ("action", "type", "member")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        GET: _ClassVar[AlarmRequest.Action]
        DEACTIVATE: _ClassVar[AlarmRequest.Action]
    GET: AlarmRequest.Action
    DEACTIVATE: AlarmRequest.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    action: AlarmRequest.Action
    type: str
    member: str
    def __init__(self, action: _Optional[_Union[AlarmRequest.Action, str]] = ..., type: _Optional[str] = ..., member: _Optional[str] = ...) -> None: ...

class AlarmMember(_message.Message):
    __slots__ = ("member", "type")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    member: str
    type: str
    def __init__(self, member: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class AlarmResponse(_message.Message):
    __slots__ = ("header", "alarms")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ALARMS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    alarms: _containers.RepeatedCompositeFieldContainer[AlarmMember]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., alarms: _Optional[_Iterable[_Union[AlarmMember, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerProgress(_message.Message):
    __slots__ = ("id", "address", "match_index", "next_index")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    match_index: int
    next_index: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., match_index: _Optional[int] = ..., next_index: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("id", "address", "role", "term", "commit_index", "applied_index", "leader_id", "leader_address", "first_log_index", "last_log_index", "shards", "peers", "snapshot_index", "log_bytes", "cluster_id", "voters", "learners")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FIRST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    role: str
    term: int
    commit_index: int
    applied_index: int
    leader_id: str
    leader_address: str
    first_log_index: int
    last_log_index: int
    shards: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerProgress]
    snapshot_index: int
    log_bytes: int
    cluster_id: str
    voters: _containers.RepeatedScalarFieldContainer[str]
    learners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., first_log_index: _Optional[int] = ..., last_log_index: _Optional[int] = ..., shards: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerProgress, _Mapping]]] = ..., snapshot_index: _Optional[int] = ..., log_bytes: _Optional[int] = ..., cluster_id: _Optional[str] = ..., voters: _Optional[_Iterable[str]] = ..., learners: _Optional[_Iterable[str]] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("put", "get", "delete", "cas", "range", "txn")
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    put: PutRequest
    get: GetRequest
    delete: DeleteRequest
    cas: CompareAndSwapRequest
    range: RangeRequest
    txn: TxnRequest
    def __init__(self, put: _Optional[_Union[PutRequest, _Mapping]] = ..., get: _Optional[_Union[GetRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., cas: _Optional[_Union[CompareAndSwapRequest, _Mapping]] = ..., range: _Optional[_Union[RangeRequest, _Mapping]] = ..., txn: _Optional[_Union[TxnRequest, _Mapping]] = ...) -> None: ...

class OpResult(_message.Message):
    __slots__ = ("code", "message", "leader_id", "leader_address", "put", "get", "delete", "cas", "range", "txn")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    leader_id: str
    leader_address: str
    put: PutResponse
    get: GetResponse
    delete: DeleteResponse
    cas: CompareAndSwapResponse
    range: RangeResponse
    txn: TxnResponse
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., put: _Optional[_Union[PutResponse, _Mapping]] = ..., get: _Optional[_Union[GetResponse, _Mapping]] = ..., delete: _Optional[_Union[DeleteResponse, _Mapping]] = ..., cas: _Optional[_Union[CompareAndSwapResponse, _Mapping]] = ..., range: _Optional[_Union[RangeResponse, _Mapping]] = ..., txn: _Optional[_Union[TxnResponse, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    def __init__(self, ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[OpResult]
    def __init__(self, results: _Optional[_Iterable[_Union[OpResult, _Mapping]]] = ...) -> None: ...
