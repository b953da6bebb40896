"""Sans-I/O core shared by :class:`KVClient` and :class:`AsyncKVClient`.

Everything that decides *what* to do lives here: which endpoint to try next
(leader hints, rotation), how long to back off, how long one attempt may take,
which write id a write carries, how a gRPC status maps to "retry" or "give up",
and which exception to raise at the end. The two client shells only perform the
I/O this core asks for (one gRPC call, or one sleep) and report the result back.
This keeps the sync and async clients from drifting apart, which is what
happened to redis-py's hand-kept twin clients (see EXAMPLES.md).

The core never reads a clock, sleeps, or opens a socket: callers pass ``now``
(a monotonic time in seconds) in, and randomness comes from an injected
``random.Random``. That makes every retry decision unit-testable.

Protocol of one call (both shells run exactly this loop)::

    call = core.start(op, now)
    try:
        while True:
            step = call.next_step(now)          # raises KVError when out of time
            if isinstance(step, Backoff): sleep(step.seconds); continue
            try: response = rpc(step.endpoint, call.method, call.request, step.timeout)
            except RpcError as e:
                error = call.on_failure(step.endpoint, failure_from_rpc_error(e), now)
                if error is not None: raise error
                continue
            result = call.on_success(step.endpoint, response)   # may raise KVError
            if result is CONTINUE: continue     # a phase ended; ask for the next step
            return result
    finally:
        call.close()

``call.method`` and ``call.request`` must be read per attempt: a write runs in two
phases. The cluster assigns client sessions (Raft thesis 6.3, RegisterClient): a write of
a client that holds no session first registers one (attempts of RegisterSession, with the
same retries, leader following and deadline), then gets its write id in that session and
sends the write. A session can be evicted by the cluster; a write naming it is then
refused with NOT_FOUND and not applied. The call drops that session and starts over in a
new one if none of its attempts can have been applied, else it raises SessionExpired.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Generic, TypeVar

import grpc

from kvstore.client.errors import (
    Compacted,
    CorruptCluster,
    FutureRevision,
    InvalidArgument,
    KVError,
    NoSpace,
    NotLeader,
    SessionExpired,
    StaleWrite,
    Timeout,
    Unavailable,
)
from kvstore.client.ranges import KeyLike, to_bytes
from kvstore.v1 import kv_pb2

DEFAULT_TIMEOUT = 10.0
# One attempt may not take the whole deadline: a hung (e.g. SIGSTOPped or
# partitioned) leader would otherwise eat the budget that a failover needs.
DEFAULT_ATTEMPT_TIMEOUT = 5.0
DEFAULT_BACKOFF_INITIAL = 0.010
DEFAULT_BACKOFF_MAX = 0.200
# Below this much remaining time an attempt cannot meaningfully complete.
MIN_ATTEMPT_SECONDS = 0.002

LEADER_ID_KEY = "kvstore-leader-id"
LEADER_ADDRESS_KEY = "kvstore-leader-address"

R = TypeVar("R")


# --------------------------------------------------------------------------- values


def parse_endpoint(text: str) -> str:
    """Validate one ``HOST:PORT`` (or ``[V6]:PORT``) and return it stripped.

    Raises ValueError with a message fit for a one-line CLI error.
    """
    endpoint = text.strip()
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"bad endpoint {text!r}: expected HOST:PORT")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"bad endpoint {text!r}: expected [IPV6]:PORT")
    elif ":" in host:
        raise ValueError(f"bad endpoint {text!r}: write IPv6 hosts as [ADDR]:PORT")
    if any(c.isspace() for c in host):
        raise ValueError(f"bad endpoint {text!r}: host contains whitespace")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad endpoint {text!r}: port must be 1..65535")
    return endpoint


def parse_endpoints(spec: str | Iterable[str]) -> list[str]:
    """Parse ``"h:p,h:p"`` or a list of ``"h:p"``; order kept, duplicates dropped."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    endpoints: list[str] = []
    for item in items:
        endpoint = parse_endpoint(item)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise ValueError("no endpoints given")
    return endpoints


@dataclass(frozen=True, slots=True)
class WriteId:
    """Identity of one logical write; every retry of it carries the same value."""

    client_id: bytes
    seq: int
    lowest_pending_seq: int

    def to_proto(self) -> kv_pb2.WriteId:
        return kv_pb2.WriteId(
            client_id=self.client_id, seq=self.seq, lowest_pending_seq=self.lowest_pending_seq
        )


class WriteIds:
    """The client's session and its (client_id, seq) allocation; tracks which seqs are
    still in flight.

    The session id is assigned by the cluster (RegisterSession), never chosen here: an id
    the cluster does not hold is refused, which is what keeps a retry after the session's
    eviction from being applied twice. There is none until a call registers one, and none
    again after a call learns that it expired, until the next registration.

    ``lowest_pending_seq`` lets the servers forget the recorded results of
    writes this client will never retry again (Raft thesis 6.3). A seq leaves
    the pending set when its call ends, whatever the outcome: after that the
    client never sends it again. Seqs keep counting across sessions, so the
    pending set of one client is one set whatever sessions its calls are in (a
    lowest_pending_seq that is too low is merely less pruning). A lock makes
    this safe for a KVClient shared by threads; no I/O happens while it is held.
    """

    def __init__(self) -> None:
        self._client_id: bytes | None = None
        self._next_seq = 1
        self._pending: set[int] = set()
        self._registrar: object | None = None  # the call registering a session, if any
        self._lock = threading.Lock()

    @property
    def client_id(self) -> bytes | None:
        """The current session's id, or None while the client holds no session."""
        with self._lock:
            return self._client_id

    def adopt(self, client_id: bytes) -> bytes:
        """Use the session ``client_id`` unless the client already holds one; returns the
        session in use. Two calls that register at once keep the first; the other
        session is simply never used, and the cluster evicts it in time."""
        with self._lock:
            if self._client_id is None:
                self._client_id = client_id
            return self._client_id

    def forget(self, client_id: bytes) -> None:
        """The cluster no longer holds session ``client_id``: stop using it, unless a
        newer session has already replaced it."""
        with self._lock:
            if self._client_id == client_id:
                self._client_id = None

    @property
    def lowest_pending_seq(self) -> int:
        with self._lock:
            return min(self._pending) if self._pending else self._next_seq

    @property
    def pending(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._pending)

    def allocate(self, registered: bytes | None = None) -> WriteId | None:
        """A new write id in the current session, or None if the client holds none.

        ``registered``: a session the caller has just registered, adopted first (in the
        same critical section, so no concurrent ``forget`` can come in between).
        """
        with self._lock:
            if self._client_id is None:
                self._client_id = registered
            if self._client_id is None:
                return None
            seq = self._next_seq
            self._next_seq += 1
            self._pending.add(seq)
            return WriteId(self._client_id, seq, min(self._pending))

    def release(self, seq: int) -> None:
        with self._lock:
            self._pending.discard(seq)

    def claim_registration(self, caller: object) -> bool:
        """Whether `caller` may register a session now: one call of a client registers at a
        time, and the others wait for its session. Otherwise a burst of first writes would
        register a session each, and the unused ones would push other clients' live
        sessions out of a small session table."""
        with self._lock:
            if self._registrar is None or self._registrar is caller:
                self._registrar = caller
                return True
            return False

    def end_registration(self, caller: object) -> None:
        with self._lock:
            if self._registrar is caller:
                self._registrar = None


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Deadline and backoff settings of a client.

    Backoff is exponential with "equal jitter": attempt n waits a uniform time in
    [b/2, b] with b = min(backoff_max, backoff_initial * 2**n), so retries spread
    out without ever collapsing to zero or exceeding the cap.
    """

    timeout: float = DEFAULT_TIMEOUT
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.attempt_timeout <= 0:
            raise ValueError("attempt_timeout must be positive")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")

    def backoff(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.backoff_max, self.backoff_initial * (2 ** min(retry, 30)))
        return rng.uniform(ceiling / 2, ceiling)


# --------------------------------------------------------------------------- routing


# Membership following (see Router.refresh_due): at most one member list refresh per
# REFRESH_MIN_INTERVAL after trouble (a failed attempt, a leader change), and one per
# REFRESH_PERIOD anyway.
REFRESH_MIN_INTERVAL = 1.0
REFRESH_PERIOD = 30.0


class Router:
    """Which endpoint a call should try; shared by all calls of one client.

    Remembers the last node that acted as leader so that later calls go there
    first. Addresses learned from leader hints are added to the rotation, so a
    client given only a follower's address still finds the leader.

    Membership changes: the shells refresh the rotation from the cluster's member list
    (``refresh_due`` says when, ``adopt_members`` applies the answer), so that a client
    made with the first members' addresses still works once they have all been replaced.
    Why on trouble and not only on a timer: a failover or a dead endpoint is when a
    membership change is likely to be what happened, and a refresh then costs one RPC.
    """

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("no endpoints given")
        self.configured: tuple[str, ...] = tuple(endpoints)
        self._endpoints: list[str] = list(endpoints)
        self._leader: str | None = None
        self._lock = threading.Lock()
        self._refresh_wanted = False
        self._last_refresh: float | None = None
        self._last_leader: str | None = None  # unlike _leader, not forgotten on failure

    def refresh_due(self, now: float) -> bool:
        """True (and the refresh counted as done) if the shell should ask for the member
        list now: after trouble, at most every REFRESH_MIN_INTERVAL; else every
        REFRESH_PERIOD (the first period starts at the first question, so a short-lived
        client never pays for one)."""
        with self._lock:
            last = self._last_refresh
            if last is None:
                self._last_refresh = now
                due = self._refresh_wanted
            else:
                since = now - last
                due = ((self._refresh_wanted and since >= REFRESH_MIN_INTERVAL)
                       or since >= REFRESH_PERIOD)
            if due:
                self._last_refresh = now
                self._refresh_wanted = False
            return due

    def refresh_targets(self) -> list[str]:
        """Where to ask for the member list: the leader first, then the rotation."""
        with self._lock:
            first = [self._leader] if self._leader else []
            return first + [e for e in self._endpoints if e != self._leader]

    def adopt_members(self, addresses: Sequence[str], complete: bool) -> None:
        """The client addresses of the cluster's voters. ``complete``: every voter's
        address is known, so endpoints not among them belong to removed (or never
        existing) members and leave the rotation; otherwise new ones are only added."""
        if not addresses:
            return
        with self._lock:
            if complete:
                kept = [e for e in self._endpoints if e in addresses]
                self._endpoints = kept + [a for a in addresses if a not in kept]
                if self._leader not in self._endpoints:
                    self._leader = None
            else:
                self._endpoints += [a for a in addresses if a not in self._endpoints]

    @property
    def endpoints(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._endpoints)

    @property
    def leader(self) -> str | None:
        return self._leader

    def first_choice(self) -> str:
        with self._lock:
            return self._leader or self._endpoints[0]

    def learn_leader(self, address: str) -> None:
        with self._lock:
            if address not in self._endpoints:
                self._endpoints.append(address)
            if self._last_leader is not None and self._last_leader != address:
                self._refresh_wanted = True  # a failover
            self._leader = self._last_leader = address

    def forget_leader(self, address: str) -> None:
        with self._lock:
            if self._leader == address:
                self._leader = None

    def note_trouble(self) -> None:
        """An attempt failed (no answer, unavailable): the member list may have changed."""
        with self._lock:
            self._refresh_wanted = True

    def next_after(self, address: str) -> str:
        with self._lock:
            try:
                i = self._endpoints.index(address)
            except ValueError:
                return self._endpoints[0]
            return self._endpoints[(i + 1) % len(self._endpoints)]


# --------------------------------------------------------------------------- steps and failures


@dataclass(frozen=True, slots=True)
class Attempt:
    """Send the call's request to ``endpoint`` with a gRPC timeout of ``timeout`` s."""

    endpoint: str
    timeout: float
    number: int


@dataclass(frozen=True, slots=True)
class Backoff:
    """Sleep ``seconds`` and then ask for the next step."""

    seconds: float


Step = Attempt | Backoff


class Continue(Enum):
    """What ``Call.on_success`` returns when the answer ended a phase of the call rather
    than the call (a session was registered): the shell asks ``next_step`` again."""

    CONTINUE = "continue"


CONTINUE: Final = Continue.CONTINUE
REGISTER_METHOD = "RegisterSession"
# What a node answers (RESOURCE_EXHAUSTED) to a put while the NOSPACE alarm is raised; any
# other RESOURCE_EXHAUSTED is gRPC's "message larger than max".
NOSPACE_DETAILS = "database space exceeded"
# etcd's NOT_FOUND for a put naming a lease the cluster does not hold: unlike the NOT_FOUND
# of an evicted session, a new session would not help.
LEASE_NOT_FOUND = "requested lease not found"
REGISTRATION_WAIT = 0.005  # seconds a write waits while another call registers the session


@dataclass(frozen=True, slots=True)
class RpcFailure:
    """What the shell saw when an attempt failed, stripped of grpc object types."""

    code: grpc.StatusCode
    details: str = ""
    leader_id: str = ""
    leader_address: str = ""

    def describe(self) -> str:
        return f"{self.code.name}: {self.details}" if self.details else self.code.name


def failure_from_rpc_error(error: Any) -> RpcFailure:
    """Convert a grpc.RpcError / grpc.aio.AioRpcError (same duck type) to RpcFailure."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else None
    metadata: dict[str, str] = {}
    get_trailing = getattr(error, "trailing_metadata", None)
    trailing = get_trailing() if callable(get_trailing) else None
    for item in trailing or ():
        key, value = item[0], item[1]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        metadata[str(key).lower()] = str(value)
    return RpcFailure(
        code=code,
        details=str(details or "").strip().replace("\n", " "),
        leader_id=metadata.get(LEADER_ID_KEY, ""),
        leader_address=metadata.get(LEADER_ADDRESS_KEY, ""),
    )


# How a client connects, for the hint on a connection the server broke off (see below).
PLAINTEXT, SERVER_TLS, MUTUAL_TLS = "plaintext", "tls", "mutual-tls"


def connection_hint(failure: RpcFailure, security: str) -> str:
    """A hint for a connection a node closed while it was being set up.

    gRPC reports a TLS handshake that the *server* refused (a plaintext client, no or
    an untrusted client certificate) only as "Socket closed" at connect time, which
    reads like a crash. A refusal by the client (the server's certificate is not
    signed by our CA) comes with its own clear "CERTIFICATE_VERIFY_FAILED" and needs
    no hint. Returns "" when there is nothing to add.
    """
    if not _never_sent(failure) or "socket closed" not in failure.details.lower():
        return ""
    if security == PLAINTEXT:
        why = "it may require TLS: give its CA certificate, --cacert or TLSConfig(ca=...)"
    elif security == SERVER_TLS:
        why = "it may require a client certificate: --cert and --key"
    else:
        why = "it may not trust this client certificate"
    return f" (the node closed the connection during setup; {why})"


def _never_sent(failure: RpcFailure) -> bool:
    """True if gRPC reports that no connection was made, so no server saw the request.

    gRPC core words a refused/unroutable connection as "failed to connect to all
    addresses"; every other UNAVAILABLE may come after the request was sent.
    """
    return (
        failure.code is grpc.StatusCode.UNAVAILABLE
        and "failed to connect" in failure.details.lower()
    )


class _Kind(Enum):
    """How a failed attempt is treated."""

    NOT_LEADER = "not leader"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"


_RETRYABLE: dict[grpc.StatusCode, _Kind] = {
    grpc.StatusCode.FAILED_PRECONDITION: _Kind.NOT_LEADER,
    grpc.StatusCode.UNAVAILABLE: _Kind.UNAVAILABLE,
    # CANCELLED reaches a client when the server shuts down mid-call.
    grpc.StatusCode.CANCELLED: _Kind.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: _Kind.TIMEOUT,
}


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class GetResult:
    """A read's value plus which node answered and how far its state machine had got."""

    key: bytes
    value: bytes | None
    found: bool
    node: str
    applied_index: int
    create_revision: int = 0  # 0 when not found
    mod_revision: int = 0
    version: int = 0
    revision: int = 0  # the store revision the read was served at


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node's view of the cluster, or ``reachable=False`` if it did not answer."""

    id: str | None
    address: str
    role: str  # "leader" | "follower" | "candidate" | "down"
    term: int | None
    commit_index: int | None
    applied_index: int | None
    leader_id: str | None
    reachable: bool
    leader_address: str | None = None
    error: str | None = None
    snapshot_index: int | None = None  # the log holds entries after this index only
    last_log_index: int | None = None
    log_bytes: int | None = None
    followers: tuple[FollowerProgress, ...] = ()  # reported by the leader only
    cluster_id: str | None = None
    voters: tuple[str, ...] = ()  # the applied membership, as this node knows it
    learners: tuple[str, ...] = ()

    @property
    def learner(self) -> bool:
        """True if this node is a learner (it replicates but does not vote)."""
        return self.id is not None and self.id in self.learners

    def to_json(self) -> dict[str, Any]:
        """The fields of the `status --json` contract, in contract order, then the
        operator's extras (log size, snapshot index, follower progress)."""
        return {
            "id": self.id,
            "address": self.address,
            "role": self.role,
            "term": self.term,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "leader_id": self.leader_id,
            "reachable": self.reachable,
            "snapshot_index": self.snapshot_index,
            "last_log_index": self.last_log_index,
            "log_bytes": self.log_bytes,
            "followers": [
                {"id": f.id, "match_index": f.match_index, "lag": f.lag} for f in self.followers
            ],
            "learner": self.learner,
            "voters": list(self.voters),
            "learners": list(self.learners),
        }


@dataclass(frozen=True, slots=True)
class FollowerProgress:
    """How far a follower's log matches the leader's; `lag` entries are still to go."""

    id: str
    match_index: int
    lag: int


@dataclass(frozen=True)
class Operation(Generic[R]):
    """One client operation: which RPC, how to build its request, how to read the reply.

    ``build`` receives the write id (None for reads) so that the id is allocated
    only when a call has a session to send it in, and is released when it ends.
    """

    name: str
    method: str
    build: Callable[[WriteId | None], Any]
    parse: Callable[[Any], R]
    is_write: bool = False
    pinned: str | None = None  # stale reads go to this endpoint only
    timeout: float | None = None  # overrides the client's timeout for this call


class Call(Generic[R]):
    """Retry state of one operation, from first attempt to result or exception."""

    def __init__(
        self,
        op: Operation[R],
        *,
        router: Router,
        policy: RetryPolicy,
        rng: random.Random,
        write_ids: WriteIds,
        now: float,
        security: str = PLAINTEXT,
    ) -> None:
        self.op = op
        self._security = security
        self._router = router
        self._policy = policy
        self._rng = rng
        self._write_ids = write_ids
        self.timeout = op.timeout if op.timeout is not None else policy.timeout
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        self.deadline = now + self.timeout
        self.write_id: WriteId | None = None
        self._retired: list[WriteId] = []
        self._registering = False
        self.request: Any = None
        if op.is_write:
            self._start_write(None)
        else:
            self.request = op.build(None)
        self._next_endpoint = op.pinned or router.first_choice()
        self._pending_delay = 0.0
        self._backoffs = 0
        self._hint_follows = 0
        self._attempts = 0
        self._tried: list[str] = []
        self._last_failure: tuple[str, RpcFailure, _Kind] | None = None
        self._maybe_applied = False
        self._closed = False

    @property
    def method(self) -> str:
        """The RPC of the next attempt: RegisterSession while the call opens a session."""
        return REGISTER_METHOD if self._registering else self.op.method

    @property
    def registering(self) -> bool:
        """True while this write call is opening a session (before it has a write id)."""
        return self._registering

    @property
    def retired_write_ids(self) -> tuple[WriteId, ...]:
        """Write ids this call gave up because their session had expired; the cluster
        refused each, and no attempt with it can have been applied."""
        return tuple(self._retired)

    @property
    def attempts(self) -> int:
        return self._attempts

    def next_step(self, now: float) -> Step:
        """The next thing to do; raises Timeout/Unavailable once the deadline is spent."""
        remaining = self.deadline - now
        if self._pending_delay > 0:
            delay, self._pending_delay = self._pending_delay, 0.0
            if delay + MIN_ATTEMPT_SECONDS >= remaining:
                raise self._out_of_time()
            return Backoff(delay)
        if remaining <= MIN_ATTEMPT_SECONDS:
            raise self._out_of_time()
        if self._registering:
            self._start_write(None)  # another call may have registered a session meanwhile
            if self._registering and not self._write_ids.claim_registration(self):
                return Backoff(REGISTRATION_WAIT)  # another call of ours is registering
        self._attempts += 1
        endpoint = self._next_endpoint
        if endpoint not in self._tried:
            self._tried.append(endpoint)
        return Attempt(endpoint, min(remaining, self._policy.attempt_timeout), self._attempts)

    def on_success(self, endpoint: str, response: Any) -> R | Continue:
        """The attempt succeeded. Returns the call's result, or CONTINUE when the answer
        registered a session and the write itself is still to be sent. Raises KVError for
        a registration answer without a session id (a broken server)."""
        if self.op.pinned is None:
            # Only leader-routed calls prove leadership; a stale read does not.
            self._router.learn_leader(endpoint)
        if self._registering:
            client_id = bytes(response.client_id)
            if not client_id:
                self.close()
                raise KVError(f"{self.op.name}: {endpoint} registered a session without an id")
            self._start_write(client_id)
            # Leader found: the write starts with the retry budget of a fresh call.
            self._backoffs = 0
            self._hint_follows = 0
            return CONTINUE
        self.close()
        return self.op.parse(response)

    def on_failure(self, endpoint: str, failure: RpcFailure, now: float) -> KVError | None:
        """Record a failed attempt. Returns the exception to raise, or None to go on."""
        kind = _RETRYABLE.get(failure.code)
        if kind is None:
            if (failure.code is grpc.StatusCode.NOT_FOUND and self.write_id is not None
                    and LEASE_NOT_FOUND not in failure.details):
                return self._session_expired(endpoint, failure)
            self.close()
            return self._fatal(endpoint, failure)
        self._last_failure = (endpoint, failure, kind)
        if kind is not _Kind.NOT_LEADER and self.write_id is not None and not _never_sent(
            failure
        ):
            # The write reached (or may have reached) a node that could have proposed it.
            # (A registration that may have been applied only leaves an unused session.)
            self._maybe_applied = True
        if kind is _Kind.NOT_LEADER:
            if self.op.pinned is not None:
                self.close()
                return self._not_leader(endpoint, failure)
            self._after_not_leader(endpoint, failure)
        else:
            self._hint_follows = 0
            self._router.forget_leader(endpoint)
            self._router.note_trouble()
            if self.op.pinned is None:
                self._next_endpoint = self._router.next_after(endpoint)
            self._schedule_backoff()
        return None

    def close(self) -> None:
        """End the call: its write id will never be sent again. Idempotent."""
        if not self._closed:
            self._closed = True
            self._write_ids.end_registration(self)
            if self.write_id is not None:
                self._write_ids.release(self.write_id.seq)

    # -- internals

    def _start_write(self, registered: bytes | None) -> None:
        """Enter the write phase if the client holds a session (or ``registered`` was just
        registered): allocate the write id and build the request. Otherwise (re)enter the
        register phase."""
        write_id = self._write_ids.allocate(registered)
        if write_id is None:
            self._registering = True
            self.request = kv_pb2.RegisterSessionRequest()
            return
        self._registering = False
        self._write_ids.end_registration(self)
        self.write_id = write_id
        self.request = self.op.build(write_id)

    def _session_expired(self, endpoint: str, failure: RpcFailure) -> KVError | None:
        """NOT_FOUND: the cluster does not hold the write's session (evicted), and did not
        apply this attempt. Later writes need a new session. If no earlier attempt can have
        been applied either, the write starts over in a new session; otherwise retrying
        could apply it twice, so the caller learns that it may have been applied."""
        write_id = self.write_id
        assert write_id is not None
        self._write_ids.forget(write_id.client_id)
        if self._maybe_applied:
            self.close()
            return SessionExpired(
                f"{self.op.name}: the client's session expired on {endpoint} "
                f"({failure.describe()}); an earlier attempt may have been applied",
                maybe_applied=True,
            )
        self._retired.append(write_id)
        self._write_ids.release(write_id.seq)
        self.write_id = None
        self._start_write(None)
        # The node that answered applied the refusal, so it was the leader: go back to it,
        # after a backoff, so that clients competing for session slots do not spin.
        self._next_endpoint = endpoint
        self._schedule_backoff()
        return None

    def _after_not_leader(self, endpoint: str, failure: RpcFailure) -> None:
        hint = failure.leader_address
        self._router.forget_leader(endpoint)
        if hint and hint != endpoint:
            self._router.learn_leader(hint)
            self._next_endpoint = hint
            self._hint_follows += 1
            # Follow a fresh hint at once; if hints keep bouncing (stale views during
            # an election), fall back to backing off.
            if self._hint_follows <= len(self._router.endpoints):
                return
        else:
            self._next_endpoint = self._router.next_after(endpoint)
        self._schedule_backoff()

    def _schedule_backoff(self) -> None:
        self._pending_delay = self._policy.backoff(self._backoffs, self._rng)
        self._backoffs += 1

    def _tried_text(self) -> str:
        plural = "attempt" if self._attempts == 1 else "attempts"
        return f"tried {', '.join(self._tried) or 'nothing'} ({self._attempts} {plural})"

    def _out_of_time(self) -> KVError:
        self.close()
        applied = self._maybe_applied
        if self._last_failure is None:
            return Timeout(
                f"{self.op.name}: deadline of {self.timeout:g}s passed before any attempt",
                maybe_applied=applied,
            )
        endpoint, failure, kind = self._last_failure
        hint = connection_hint(failure, self._security)
        last = f"last error from {endpoint}: {failure.describe()}{hint}"
        if kind is _Kind.UNAVAILABLE:
            return Unavailable(
                f"{self.op.name}: no node could serve it within {self.timeout:g}s; "
                f"{self._tried_text()}; {last}",
                maybe_applied=applied,
            )
        what = "no leader found" if kind is _Kind.NOT_LEADER else "no answer"
        return Timeout(
            f"{self.op.name} timed out after {self.timeout:g}s ({what}); "
            f"{self._tried_text()}; {last}",
            maybe_applied=applied,
        )

    def _not_leader(self, endpoint: str, failure: RpcFailure) -> NotLeader:
        leader = failure.leader_id or failure.leader_address or "unknown"
        return NotLeader(
            f"{self.op.name}: {endpoint} is not the leader (leader: {leader})",
            leader_id=failure.leader_id,
            leader_address=failure.leader_address,
            maybe_applied=self._maybe_applied,
        )

    def _fatal(self, endpoint: str, failure: RpcFailure) -> KVError:
        if (failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED
                and NOSPACE_DETAILS in failure.details.lower()):
            # Refused because the NOSPACE alarm is raised, before or instead of being
            # applied: this attempt did nothing. (A retry of an applied earlier attempt would
            # have got its recorded result, unless refused up front: hence _maybe_applied.)
            return NoSpace(f"{self.op.name} refused by {endpoint}: {failure.describe()}",
                           maybe_applied=self._maybe_applied)
        if failure.code is grpc.StatusCode.DATA_LOSS:
            # The CORRUPT alarm is raised: refused like NOSPACE above.
            return CorruptCluster(
                f"{self.op.name} refused by {endpoint}: {failure.describe()}",
                maybe_applied=self._maybe_applied)
        if failure.code is grpc.StatusCode.OUT_OF_RANGE:
            # A read at (or a compaction to) a revision the store cannot serve; refused
            # before anything changed, by every node alike.
            kind = FutureRevision if "future" in failure.details else Compacted
            return kind(f"{self.op.name} refused by {endpoint}: {failure.describe()}",
                        maybe_applied=self._maybe_applied)
        if (failure.code is grpc.StatusCode.NOT_FOUND
                and LEASE_NOT_FOUND in failure.details):
            return InvalidArgument(f"{self.op.name} rejected by {endpoint}: "
                                   f"{failure.describe()}", maybe_applied=self._maybe_applied)
        if failure.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
            # RESOURCE_EXHAUSTED here means "message larger than the receiver's limit".
            # Validation runs before anything is proposed, and every retry sends the same
            # request, so no earlier attempt can have been applied either.
            return InvalidArgument(
                f"{self.op.name} rejected by {endpoint}: {failure.describe()}",
                maybe_applied=False,
            )
        if failure.code is grpc.StatusCode.ABORTED and self.write_id is not None:
            # The server's session has forgotten this write id ("write id older than its
            # session remembers"): retrying gets the same answer, and an earlier attempt
            # (or a write under the same id) may have been applied.
            return StaleWrite(f"{self.op.name} refused by {endpoint}: {failure.describe()}")
        # An unexpected status to a registration leaves at most an unused session.
        unsure = self.write_id is not None and failure.code is not grpc.StatusCode.UNIMPLEMENTED
        return KVError(
            f"{self.op.name} failed on {endpoint}: {failure.describe()}",
            maybe_applied=self._maybe_applied or unsure,
        )


# --------------------------------------------------------------------------- the core


def _header_fields(response: Any) -> tuple[str, int]:
    header = response.header
    return header.node_id, header.applied_index


class ClientCore:
    """Per-client state (endpoints, leader, write ids, policy) and operation factories."""

    def __init__(
        self,
        endpoints: str | Iterable[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        rng: random.Random | None = None,
        security: str = PLAINTEXT,
    ) -> None:
        self.policy = RetryPolicy(timeout, attempt_timeout, backoff_initial, backoff_max)
        self.security = security  # PLAINTEXT, SERVER_TLS or MUTUAL_TLS: only for hints
        self.router = Router(parse_endpoints(endpoints))
        self.write_ids = WriteIds()
        self.rng = rng if rng is not None else random.Random()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints the client was configured with (not those learned from hints)."""
        return self.router.configured

    def start(self, op: Operation[R], now: float) -> Call[R]:
        return Call(
            op,
            router=self.router,
            policy=self.policy,
            rng=self.rng,
            write_ids=self.write_ids,
            now=now,
            security=self.security,
        )

    # -- operations

    def put(self, key: KeyLike, value: KeyLike, timeout: float | None = None) -> Operation[None]:
        k, v = to_bytes(key, "key"), to_bytes(value, "value")
        return Operation(
            name="put",
            method="Put",
            build=lambda wid: kv_pb2.PutRequest(key=k, value=v, write_id=_wid(wid)),
            parse=lambda _response: None,
            is_write=True,
            timeout=timeout,
        )

    def get(
        self, key: KeyLike, *, stale: bool = False, revision: int = 0,
        timeout: float | None = None,
    ) -> Operation[GetResult]:
        k = to_bytes(key, "key")
        if revision < 0:
            raise ValueError("revision must be >= 0 (0: the latest)")

        def parse(response: Any) -> GetResult:
            node, applied = _header_fields(response)
            found = bool(response.found)
            return GetResult(k, bytes(response.value) if found else None, found, node, applied,
                             response.create_revision, response.mod_revision,
                             response.version, response.header.revision)

        return Operation(
            name="stale get" if stale else "get",
            method="Get",
            build=lambda _wid: kv_pb2.GetRequest(key=k, stale=stale, revision=revision),
            parse=parse,
            pinned=self.router.configured[0] if stale else None,
            timeout=timeout,
        )

    def delete(self, key: KeyLike, timeout: float | None = None) -> Operation[bool]:
        k = to_bytes(key, "key")
        return Operation(
            name="delete",
            method="Delete",
            build=lambda wid: kv_pb2.DeleteRequest(key=k, write_id=_wid(wid)),
            parse=lambda response: bool(response.existed),
            is_write=True,
            timeout=timeout,
        )

    def cas(
        self,
        key: KeyLike,
        expected: KeyLike | None,
        new: KeyLike,
        timeout: float | None = None,
    ) -> Operation[bool]:
        k, v = to_bytes(key, "key"), to_bytes(new, "value")
        exp = None if expected is None else to_bytes(expected, "expected")
        return Operation(
            name="cas",
            method="CompareAndSwap",
            build=lambda wid: kv_pb2.CompareAndSwapRequest(
                key=k,
                expect_absent=exp is None,
                expected=exp or b"",
                value=v,
                write_id=_wid(wid),
            ),
            parse=lambda response: bool(response.succeeded),
            is_write=True,
            timeout=timeout,
        )

    def alarms(self, timeout: float | None = None) -> Operation[list[tuple[str, str]]]:
        """The raised cluster alarms as (type, member), read linearizably via the leader."""
        return Operation(
            name="alarm list",
            method="Alarm",
            build=lambda _wid: kv_pb2.AlarmRequest(action=kv_pb2.AlarmRequest.GET),
            parse=_alarm_list,
            timeout=timeout,
        )

    def disarm(
        self, alarm_type: str = "", member: str = "", timeout: float | None = None
    ) -> Operation[list[tuple[str, str]]]:
        """Clear alarms of ``alarm_type`` ("" = every type) for ``member`` ("" = every
        member); the result is the alarms left. Not a session write: clearing is
        idempotent, so a retry that reaches the log twice does no harm."""
        return Operation(
            name="alarm disarm",
            method="Alarm",
            build=lambda _wid: kv_pb2.AlarmRequest(
                action=kv_pb2.AlarmRequest.DEACTIVATE, type=alarm_type, member=member
            ),
            parse=_alarm_list,
            timeout=timeout,
        )

    # -- status (one unretried Status RPC per configured endpoint, in parallel)

    def status_timeout(self, timeout: float | None) -> float:
        return timeout if timeout is not None else self.policy.timeout

    @staticmethod
    def status_request() -> kv_pb2.StatusRequest:
        return kv_pb2.StatusRequest()

    @staticmethod
    def node_status(endpoint: str, response: Any) -> NodeStatus:
        last = response.last_log_index
        return NodeStatus(
            id=response.id or None,
            address=endpoint,
            role=response.role or "unknown",
            term=response.term,
            commit_index=response.commit_index,
            applied_index=response.applied_index,
            leader_id=response.leader_id or None,
            reachable=True,
            leader_address=response.leader_address or None,
            snapshot_index=response.snapshot_index,
            last_log_index=response.last_log_index,
            log_bytes=response.log_bytes,
            followers=tuple(
                FollowerProgress(p.id, p.match_index, max(0, last - p.match_index))
                for p in response.peers
            ),
            cluster_id=response.cluster_id or None,
            voters=tuple(response.voters),
            learners=tuple(response.learners),
        )

    @staticmethod
    def unreachable(
        endpoint: str, failure: RpcFailure | str, security: str = PLAINTEXT
    ) -> NodeStatus:
        """A node that did not answer Status (``security``: how we connected, for hints)."""
        if isinstance(failure, str):
            error = failure
        else:
            error = failure.describe() + connection_hint(failure, security)
        return NodeStatus(
            id=None,
            address=endpoint,
            role="down",
            term=None,
            commit_index=None,
            applied_index=None,
            leader_id=None,
            reachable=False,
            error=error,
        )


def _alarm_list(response: Any) -> list[tuple[str, str]]:
    return [(a.type, a.member) for a in response.alarms]


def _wid(write_id: WriteId | None) -> kv_pb2.WriteId:
    assert write_id is not None, "writes always get a write id"
    return write_id.to_proto()


# Channel options shared by both shells.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Never route loopback/cluster traffic through an HTTP proxy from the environment.
    ("grpc.enable_http_proxy", 0),
    # A restarted node should be reachable again quickly; gRPC's default reconnect
    # backoff (1 s growing to 120 s) would make a recovered node look dead for long.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Values may be configured above gRPC's 4 MiB default receive limit.
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)


__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_TIMEOUT",
    "MUTUAL_TLS",
    "NOSPACE_DETAILS",
    "PLAINTEXT",
    "SERVER_TLS",
    "Attempt",
    "Backoff",
    "CONTINUE",
    "Call",
    "ClientCore",
    "Continue",
    "GetResult",
    "NodeStatus",
    "Operation",
    "REGISTER_METHOD",
    "RetryPolicy",
    "Router",
    "RpcFailure",
    "Step",
    "WriteId",
    "WriteIds",
    "connection_hint",
    "failure_from_rpc_error",
    "parse_endpoint",
    "parse_endpoints",
    "to_bytes",
]
