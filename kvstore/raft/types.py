"""Plain data types of the Raft core: entries, hard state, messages, Ready.

Everything here is immutable and free of I/O. Node ids are short strings ("n1").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EntryType(IntEnum):
    NORMAL = 0  # data is an encoded state-machine command
    NOOP = 1  # appended by a new leader at the start of its term (thesis 6.4)
    CONF_CHANGE = 2  # a single-server membership change; takes effect when applied


class MessageType(IntEnum):
    # Values match kvstore.v1.MessageType on the wire.
    APP = 1
    APP_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    # Leader -> runtime -> follower: "this follower needs the state machine". The leader's
    # runtime streams its current state (InstallSnapshot RPC); the follower's runtime then
    # steps a SNAP message whose index/log_term say what the snapshot covers.
    SNAP = 9
    # Leader transfer (thesis 3.10): the leader tells an up-to-date voter to campaign now,
    # without pre-vote; its vote requests then carry context=FORCE_VOTE so that voters
    # which heard from the (old) leader recently do not ignore them.
    TIMEOUT_NOW = 10


FORCE_VOTE = 1  # VOTE.context of a campaign started by TIMEOUT_NOW


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3

    @property
    def label(self) -> str:
        """The name shown to users; a pre-candidate is still a follower to them."""
        return {0: "follower", 1: "candidate", 2: "candidate", 3: "leader"}[int(self)]


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it is sent."""

    term: int = 0
    vote: str = ""
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    src: str
    dst: str
    term: int
    log_term: int = 0  # APP: term of entry `index`; (PRE_)VOTE: term of the last entry
    index: int = 0  # APP: index preceding `entries`; (PRE_)VOTE: last index; APP_RESP: match
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0  # APP_RESP reject: the follower's suggested next probe index
    hint_term: int = 0  # APP_RESP reject: term of the follower's entry at reject_hint
    context: int = 0  # HEARTBEAT(_RESP): ReadIndex round being confirmed
    # APP_RESP / HEARTBEAT_RESP: the follower restarted on an empty data dir (resync) and has
    # not yet received data from a leader. Only such an answer may lower the leader's match
    # for it: any other answer below match is stale (duplicated or reordered).
    rebuilding: bool = False
    # APP_RESP / HEARTBEAT_RESP: a joining node that has not installed a snapshot yet.
    needs_snapshot: bool = False
    # SNAP to a follower's core only (made by its runtime, never read off the wire): the
    # received state machine, carried to the Ready that installs it.
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the runtime shows to users; never persisted."""

    role: Role
    leader: str


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex request is safe to serve once applied_index >= index."""

    index: int
    request_id: int


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """A state-machine snapshot covering every entry up to `index` (of term `term`)."""

    index: int
    term: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A received state-machine snapshot: what it covers and its bytes (opaque to the core:
    the runtime's store checks and installs them)."""

    meta: SnapshotMeta
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Ready:
    """Work the runtime must do, in this order (see RawNode.ready):

    1. If `send_before_persist` (the node is the leader) send `messages` now, in parallel
       with step 2; otherwise send them only after step 2 completes.
    2. If `snapshot` is set, install it first: replace the state machine with the received
       snapshot and the log with an empty one that starts after snapshot.index. Persist
       `hard_state` (if set) and `entries` in one durable write; when `entries` start at an
       index that already exists, that index and everything after it are replaced.
    3. Apply `committed` in order, after they are durable locally.
    4. Serve `read_states` once the applied index reaches each one's index.
    5. Call advance(ready).
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    send_before_persist: bool
    dropped_reads: tuple[int, ...] = field(default=())
    snapshot: Snapshot | None = None

    @property
    def must_sync(self) -> bool:
        return self.hard_state is not None or bool(self.entries) or self.snapshot is not None
