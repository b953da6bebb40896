from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DigestRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DigestResponse(_message.Message):
    __slots__ = ("node_id", "applied_index", "shard_digests")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    applied_index: int
    shard_digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., applied_index: _Optional[int] = ..., shard_digests: _Optional[_Iterable[str]] = ...) -> None: ...

class SetFaultsRequest(_message.Message):
    __slots__ = ("drop_to", "drop_from")
    DROP_TO_FIELD_NUMBER: _ClassVar[int]
    DROP_FROM_FIELD_NUMBER: _ClassVar[int]
    drop_to: _containers.RepeatedScalarFieldContainer[str]
    drop_from: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, drop_to: _Optional[_Iterable[str]] = ..., drop_from: _Optional[_Iterable[str]] = ...) -> None: ...

class SetFaultsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HashCheckRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class HashCheckResponse(_message.Message):
    __slots__ = ("found", "digest")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    found: bool
    digest: str
    def __init__(self, found: _Optional[bool] = ..., digest: _Optional[str] = ...) -> None: ...
