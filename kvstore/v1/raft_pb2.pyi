from kvstore.etcdpb import rpc_pb2 as _rpc_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntryType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_NORMAL: _ClassVar[EntryType]
    ENTRY_NOOP: _ClassVar[EntryType]
    ENTRY_CONF_CHANGE: _ClassVar[EntryType]

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MSG_UNKNOWN: _ClassVar[MessageType]
    MSG_APP: _ClassVar[MessageType]
    MSG_APP_RESP: _ClassVar[MessageType]
    MSG_VOTE: _ClassVar[MessageType]
    MSG_VOTE_RESP: _ClassVar[MessageType]
    MSG_PRE_VOTE: _ClassVar[MessageType]
    MSG_PRE_VOTE_RESP: _ClassVar[MessageType]
    MSG_HEARTBEAT: _ClassVar[MessageType]
    MSG_HEARTBEAT_RESP: _ClassVar[MessageType]
    MSG_SNAP: _ClassVar[MessageType]
    MSG_TIMEOUT_NOW: _ClassVar[MessageType]

class ConfChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONF_UNKNOWN: _ClassVar[ConfChangeType]
    CONF_ADD_VOTER: _ClassVar[ConfChangeType]
    CONF_ADD_LEARNER: _ClassVar[ConfChangeType]
    CONF_PROMOTE: _ClassVar[ConfChangeType]
    CONF_REMOVE: _ClassVar[ConfChangeType]
    CONF_UPDATE: _ClassVar[ConfChangeType]
ENTRY_NORMAL: EntryType
ENTRY_NOOP: EntryType
ENTRY_CONF_CHANGE: EntryType
MSG_UNKNOWN: MessageType
MSG_APP: MessageType
MSG_APP_RESP: MessageType
MSG_VOTE: MessageType
MSG_VOTE_RESP: MessageType
MSG_PRE_VOTE: MessageType
MSG_PRE_VOTE_RESP: MessageType
MSG_HEARTBEAT: MessageType
MSG_HEARTBEAT_RESP: MessageType
MSG_SNAP: MessageType
MSG_TIMEOUT_NOW: MessageType
CONF_UNKNOWN: ConfChangeType
CONF_ADD_VOTER: ConfChangeType
CONF_ADD_LEARNER: ConfChangeType
CONF_PROMOTE: ConfChangeType
CONF_REMOVE: ConfChangeType
CONF_UPDATE: ConfChangeType

class Entry(_message.Message):
    __slots__ = ("term", "index", "type", "data")
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    term: int
    index: int
    type: EntryType
    data: bytes
    def __init__(self, term: _Optional[int] = ..., index: _Optional[int] = ..., type: _Optional[_Union[EntryType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("type", "to", "term", "log_term", "index", "entries", "commit", "reject", "reject_hint", "hint_term", "context", "rebuilding", "needs_snapshot")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    HINT_TERM_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REBUILDING_FIELD_NUMBER: _ClassVar[int]
    NEEDS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    type: MessageType
    to: str
    term: int
    log_term: int
    index: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    commit: int
    reject: bool
    reject_hint: int
    hint_term: int
    context: int
    rebuilding: bool
    needs_snapshot: bool
    def __init__(self, type: _Optional[_Union[MessageType, str]] = ..., to: _Optional[str] = ..., term: _Optional[int] = ..., log_term: _Optional[int] = ..., index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., hint_term: _Optional[int] = ..., context: _Optional[int] = ..., rebuilding: _Optional[bool] = ..., needs_snapshot: _Optional[bool] = ..., **kwargs) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class StreamAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("term", "data")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    term: int
    data: bytes
    def __init__(self, term: _Optional[int] = ..., data: _Optional[bytes] = ..., **kwargs) -> None: ...

class SnapshotAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Command(_message.Message):
    __slots__ = ("client_id", "seq", "lowest_pending_seq", "put", "delete", "cas", "register", "alarm", "hash_check", "txn", "compact", "lease_grant", "lease_revoke")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LOWEST_PENDING_SEQ_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    HASH_CHECK_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    COMPACT_FIELD_NUMBER: _ClassVar[int]
    LEASE_GRANT_FIELD_NUMBER: _ClassVar[int]
    LEASE_REVOKE_FIELD_NUMBER: _ClassVar[int]
    client_id: bytes
    seq: int
    lowest_pending_seq: int
    put: PutOp
    delete: DeleteOp
    cas: CasOp
    register: RegisterOp
    alarm: AlarmOp
    hash_check: HashCheckOp
    txn: _rpc_pb2.TxnRequest
    compact: _rpc_pb2.CompactionRequest
    lease_grant: _rpc_pb2.LeaseGrantRequest
    lease_revoke: _rpc_pb2.LeaseRevokeRequest
    def __init__(self, client_id: _Optional[bytes] = ..., seq: _Optional[int] = ..., lowest_pending_seq: _Optional[int] = ..., put: _Optional[_Union[PutOp, _Mapping]] = ..., delete: _Optional[_Union[DeleteOp, _Mapping]] = ..., cas: _Optional[_Union[CasOp, _Mapping]] = ..., register: _Optional[_Union[RegisterOp, _Mapping]] = ..., alarm: _Optional[_Union[AlarmOp, _Mapping]] = ..., hash_check: _Optional[_Union[HashCheckOp, _Mapping]] = ..., txn: _Optional[_Union[_rpc_pb2.TxnRequest, _Mapping]] = ..., compact: _Optional[_Union[_rpc_pb2.CompactionRequest, _Mapping]] = ..., lease_grant: _Optional[_Union[_rpc_pb2.LeaseGrantRequest, _Mapping]] = ..., lease_revoke: _Optional[_Union[_rpc_pb2.LeaseRevokeRequest, _Mapping]] = ...) -> None: ...

class HashCheckOp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterOp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AlarmOp(_message.Message):
    __slots__ = ("action", "type", "member")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTIVATE: _ClassVar[AlarmOp.Action]
        DEACTIVATE: _ClassVar[AlarmOp.Action]
    ACTIVATE: AlarmOp.Action
    DEACTIVATE: AlarmOp.Action
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[AlarmOp.Type]
        NOSPACE: _ClassVar[AlarmOp.Type]
        CORRUPT: _ClassVar[AlarmOp.Type]
    NONE: AlarmOp.Type
    NOSPACE: AlarmOp.Type
    CORRUPT: AlarmOp.Type
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    action: AlarmOp.Action
    type: AlarmOp.Type
    member: str
    def __init__(self, action: _Optional[_Union[AlarmOp.Action, str]] = ..., type: _Optional[_Union[AlarmOp.Type, str]] = ..., member: _Optional[str] = ...) -> None: ...

class PutOp(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class DeleteOp(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class CasOp(_message.Message):
    __slots__ = ("key", "expect_absent", "expected", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expect_absent: bool
    expected: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., expect_absent: _Optional[bool] = ..., expected: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("ok",)
    OK_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    def __init__(self, ok: _Optional[bool] = ...) -> None: ...

class ConfChange(_message.Message):
    __slots__ = ("type", "node_id", "peer_address")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    type: ConfChangeType
    node_id: str
    peer_address: str
    def __init__(self, type: _Optional[_Union[ConfChangeType, str]] = ..., node_id: _Optional[str] = ..., peer_address: _Optional[str] = ...) -> None: ...

class MemberRecord(_message.Message):
    __slots__ = ("peer_address", "learner", "removed")
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    peer_address: str
    learner: bool
    removed: bool
    def __init__(self, peer_address: _Optional[str] = ..., learner: _Optional[bool] = ..., removed: _Optional[bool] = ...) -> None: ...
