"""Unit tests of the sans-I/O client core: no sockets, no sleeps, a virtual clock."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest

from kvstore.client import (
    CorruptCluster,
    InvalidArgument,
    KVError,
    NoSpace,
    NotLeader,
    SessionExpired,
    StaleWrite,
    Timeout,
    Unavailable,
)
from kvstore.client._core import (
    CONTINUE,
    Attempt,
    Backoff,
    Call,
    ClientCore,
    RetryPolicy,
    RpcFailure,
    failure_from_rpc_error,
    parse_endpoint,
    parse_endpoints,
)
from kvstore.v1 import kv_pb2

A, B, C = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"
SC = grpc.StatusCode


SESSION = b"s" + (7).to_bytes(8, "big")


def core(endpoints: list[str] | None = None, *, session: bytes | None = SESSION,
         **kw: Any) -> ClientCore:
    """A client core; by default it already holds `session`, as after its first write."""
    kw.setdefault("rng", random.Random(1))
    c = ClientCore(endpoints or [A, B, C], **kw)
    if session is not None:
        c.write_ids.adopt(session)
    return c


def not_leader(leader_id: str = "", address: str = "") -> RpcFailure:
    return RpcFailure(SC.FAILED_PRECONDITION, "not leader", leader_id, address)


UNAVAILABLE = RpcFailure(SC.UNAVAILABLE, "no quorum")
REFUSED = RpcFailure(SC.UNAVAILABLE, "failed to connect to all addresses; Connection refused")


def attempt(call: Call[Any], now: float = 0.0) -> Attempt:
    step = call.next_step(now)
    assert isinstance(step, Attempt), step
    return step


def backoff(call: Call[Any], now: float = 0.0) -> Backoff:
    step = call.next_step(now)
    assert isinstance(step, Backoff), step
    return step


def put_response() -> kv_pb2.PutResponse:
    return kv_pb2.PutResponse(header=kv_pb2.ResponseHeader(node_id="n2", applied_index=7))


# --------------------------------------------------------------------------- routing


def test_first_attempt_goes_to_first_endpoint_then_follows_leader_hint_at_once() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    assert attempt(call).endpoint == A
    assert call.on_failure(A, not_leader("n2", B), 0.0) is None
    step = attempt(call)  # no backoff before following a fresh hint
    assert step.endpoint == B
    call.on_success(B, put_response())
    # The next call starts at the leader it learned.
    assert attempt(c.start(c.put("k", "v"), now=1.0), 1.0).endpoint == B


def test_hint_to_an_address_not_configured_is_followed_and_remembered() -> None:
    d = "127.0.0.1:7009"
    c = core([A])
    call = c.start(c.get("k"), now=0.0)
    attempt(call)
    call.on_failure(A, not_leader("n9", d), 0.0)
    assert attempt(call).endpoint == d
    assert c.router.endpoints == (A, d)
    assert c.endpoints == (A,)  # status still asks only the configured endpoints


def test_unavailable_rotates_through_endpoints_with_backoff() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    seen = []
    for _ in range(4):
        step = attempt(call)
        seen.append(step.endpoint)
        assert call.on_failure(step.endpoint, UNAVAILABLE, 0.0) is None
        backoff(call)
    assert seen == [A, B, C, A]


def test_not_leader_without_hint_rotates_with_backoff() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    call.on_failure(A, not_leader(), 0.0)
    backoff(call)
    assert attempt(call).endpoint == B


def test_bouncing_hints_fall_back_to_backoff() -> None:
    c = core([A, B])
    call = c.start(c.put("k", "v"), now=0.0)
    immediate = 0
    for _ in range(6):
        step = call.next_step(0.0)
        if isinstance(step, Backoff):
            break
        immediate += 1
        other = B if step.endpoint == A else A
        call.on_failure(step.endpoint, not_leader("x", other), 0.0)
    else:
        pytest.fail("hints that bounce between two nodes must eventually back off")
    assert immediate <= 3


def test_unavailable_on_the_leader_forgets_it() -> None:
    c = core()
    c.router.learn_leader(B)
    call = c.start(c.put("k", "v"), now=0.0)
    assert attempt(call).endpoint == B
    call.on_failure(B, UNAVAILABLE, 0.0)
    assert c.router.leader is None
    backoff(call)
    assert attempt(call).endpoint == C


# --------------------------------------------------------------------------- backoff and deadline


@pytest.mark.parametrize("seed", range(20))
def test_backoff_is_jittered_exponential_and_capped(seed: int) -> None:
    policy = RetryPolicy(timeout=10, backoff_initial=0.01, backoff_max=0.2)
    rng = random.Random(seed)
    for n in range(40):
        ceiling = min(0.2, 0.01 * 2**n)
        delay = policy.backoff(n, rng)
        assert ceiling / 2 <= delay <= ceiling <= 0.2


def test_retry_loop_backoff_delays_stay_within_bounds() -> None:
    c = core(timeout=1000.0)
    call = c.start(c.put("k", "v"), now=0.0)
    delays = []
    for _ in range(30):
        step = attempt(call)
        call.on_failure(step.endpoint, UNAVAILABLE, 0.0)
        delays.append(backoff(call).seconds)
    assert 0.005 <= delays[0] <= 0.01
    assert all(0.005 <= d <= 0.2 for d in delays)
    assert max(delays[10:]) > 0.1  # it does grow towards the cap


def test_deadline_ends_the_call_with_unavailable_naming_what_was_tried() -> None:
    c = core(timeout=2.0, attempt_timeout=0.5)
    now = 100.0
    call = c.start(c.put("k", "v"), now=now)
    with pytest.raises(Unavailable) as info:
        while True:
            step = call.next_step(now)
            if isinstance(step, Backoff):
                now += step.seconds
                continue
            assert step.timeout <= min(0.5, call.deadline - now) + 1e-9
            now += 0.05  # each refused attempt takes a little while
            call.on_failure(step.endpoint, UNAVAILABLE, now)
    assert now <= call.deadline
    message = str(info.value)
    assert A in message and B in message and C in message
    assert "no quorum" in message
    assert info.value.maybe_applied  # an UNAVAILABLE write may have been applied
    assert c.write_ids.pending == frozenset()


def test_attempt_timeout_never_exceeds_remaining_time() -> None:
    c = core(timeout=3.0, attempt_timeout=5.0)
    call = c.start(c.get("k"), now=10.0)
    assert attempt(call, 10.0).timeout == pytest.approx(3.0)
    call.on_failure(A, RpcFailure(SC.DEADLINE_EXCEEDED, "slow"), 12.9)
    with pytest.raises(Timeout):
        for _ in range(3):
            step = call.next_step(12.999)
            assert not isinstance(step, Attempt) or step.timeout <= 0.001 + 1e-9


def test_last_error_decides_timeout_or_unavailable() -> None:
    c = core(timeout=1.0)
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    call.on_failure(A, RpcFailure(SC.DEADLINE_EXCEEDED, "deadline"), 1.0)
    with pytest.raises(Timeout) as info:
        call.next_step(1.0)
    assert info.value.maybe_applied

    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    call.on_failure(A, not_leader(), 0.0)
    with pytest.raises(Timeout) as t:
        call.next_step(1.0)
    assert not t.value.maybe_applied  # only NotLeader answers: certainly not applied
    assert "no leader" in str(t.value)


def test_refused_connection_means_not_applied() -> None:
    c = core([A], timeout=1.0)
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    call.on_failure(A, REFUSED, 0.0)
    with pytest.raises(Unavailable) as info:
        call.next_step(1.0)
    assert not info.value.maybe_applied


def test_nonpositive_timeout_is_rejected() -> None:
    with pytest.raises(ValueError):
        core(timeout=0)
    c = core()
    with pytest.raises(ValueError):
        c.start(c.get("k", timeout=-1.0), now=0.0)


# --------------------------------------------------------------------------- write ids


def test_every_retry_carries_the_same_write_id() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    sent = []
    for failure in (not_leader("n2", B), UNAVAILABLE, not_leader("n3", C)):
        step = call.next_step(0.0)
        if isinstance(step, Backoff):
            step = attempt(call)
        sent.append(kv_pb2.PutRequest.FromString(call.request.SerializeToString()).write_id)
        call.on_failure(step.endpoint, failure, 0.0)
    assert len({w.SerializeToString() for w in sent}) == 1
    assert sent[0].client_id == SESSION and sent[0].seq == 1
    assert call.request.key == b"k" and call.request.value == b"v"


def test_seq_increments_per_write_and_reads_take_none() -> None:
    c = core()
    seqs = []
    for op in (c.put("a", "1"), c.get("a"), c.delete("a"), c.cas("a", None, "2")):
        call = c.start(op, now=0.0)
        seqs.append(call.write_id.seq if call.write_id else None)
        call.close()
    assert seqs == [1, None, 2, 3]


def test_lowest_pending_seq_tracks_the_oldest_write_in_flight() -> None:
    c = core()
    first = c.start(c.put("a", "1"), now=0.0)
    second = c.start(c.put("b", "2"), now=0.0)
    assert (first.write_id.seq, first.write_id.lowest_pending_seq) == (1, 1)
    assert (second.write_id.seq, second.write_id.lowest_pending_seq) == (2, 1)
    attempt(first)
    first.on_success(A, put_response())
    third = c.start(c.put("c", "3"), now=0.0)
    assert (third.write_id.seq, third.write_id.lowest_pending_seq) == (3, 2)
    second.close()
    third.close()
    assert c.write_ids.pending == frozenset()
    assert c.write_ids.lowest_pending_seq == 4  # nothing in flight: the next seq


def test_failed_calls_release_their_seq() -> None:
    c = core()
    call = c.start(c.put("", "v"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.INVALID_ARGUMENT, "key must be 1..4096 bytes"), 0.0)
    assert isinstance(error, InvalidArgument)
    assert c.write_ids.pending == frozenset()


# --------------------------------------------------------------------------- sessions

NOT_FOUND = RpcFailure(SC.NOT_FOUND, "client session not found (evicted or never registered)")


def registered(index: int) -> kv_pb2.RegisterSessionResponse:
    return kv_pb2.RegisterSessionResponse(
        header=kv_pb2.ResponseHeader(node_id="n2", applied_index=index),
        client_id=b"s" + index.to_bytes(8, "big"),
    )


def session(index: int) -> bytes:
    return b"s" + index.to_bytes(8, "big")


def test_first_write_registers_a_session_then_sends_the_write_in_it() -> None:
    c = core(session=None)
    call = c.start(c.put("k", "v"), now=0.0)
    assert call.registering and call.write_id is None
    assert call.method == "RegisterSession"
    assert isinstance(call.request, kv_pb2.RegisterSessionRequest)
    assert attempt(call).endpoint == A
    assert call.on_failure(A, not_leader("n2", B), 0.0) is None  # same leader following
    assert attempt(call).endpoint == B
    assert call.on_success(B, registered(12)) is CONTINUE
    assert not call.registering and call.method == "Put"
    assert call.write_id is not None
    assert (call.write_id.client_id, call.write_id.seq) == (session(12), 1)
    assert call.request.write_id.client_id == session(12) and call.request.key == b"k"
    step = attempt(call)  # the write goes to the leader at once
    assert step.endpoint == B
    assert call.on_success(B, put_response()) is None
    assert c.write_ids.client_id == session(12)
    # Later writes use the session directly; reads never register.
    later = c.start(c.delete("k"), now=0.0)
    assert later.method == "Delete" and later.write_id.client_id == session(12)
    assert c.start(c.get("k"), now=0.0).method == "Get"


def test_reads_of_a_client_without_session_do_not_register() -> None:
    c = core(session=None)
    call = c.start(c.get("k"), now=0.0)
    assert call.method == "Get" and not call.registering
    assert c.start(c.get("k", stale=True), now=0.0).method == "Get"


def test_failed_registrations_are_retried_and_never_make_a_write_maybe_applied() -> None:
    c = core(session=None, timeout=1.0)
    call = c.start(c.put("k", "v"), now=0.0)
    now = 0.0
    with pytest.raises(Unavailable) as info:
        while True:
            step = call.next_step(now)
            if isinstance(step, Backoff):
                now += step.seconds
                continue
            assert call.method == "RegisterSession"
            now += 0.01
            assert call.on_failure(step.endpoint, UNAVAILABLE, now) is None
    assert not info.value.maybe_applied  # only registrations were ever sent
    assert call.attempts > 3
    assert c.write_ids.client_id is None and c.write_ids.pending == frozenset()


def test_one_call_registers_at_a_time_and_the_others_use_its_session() -> None:
    c = core(session=None)
    first = c.start(c.put("a", "1"), now=0.0)
    second = c.start(c.put("b", "2"), now=0.0)
    attempt(first)
    assert first.method == "RegisterSession"
    backoff(second)  # waits: only one session is registered for a burst of first writes
    assert first.on_success(A, registered(3)) is CONTINUE
    step = attempt(second)
    assert second.method == "Put" and second.write_id.client_id == session(3)
    assert second.on_success(step.endpoint, put_response()) is None
    assert first.write_id.client_id == session(3)
    assert (first.write_id.seq, second.write_id.seq) == (1, 2)


def test_a_waiting_call_registers_once_the_registering_call_gives_up() -> None:
    c = core(session=None)
    first = c.start(c.put("a", "1", timeout=1.0), now=0.0)
    second = c.start(c.put("b", "2"), now=0.0)
    attempt(first)
    backoff(second)
    first.close()  # its deadline passed without a session
    attempt(second)
    assert second.method == "RegisterSession"


def test_concurrent_registrations_keep_the_first_session() -> None:
    """Two clients' worth of registrations cannot happen through one core any more, but the
    session store still keeps the first if two answers race (e.g. a late answer)."""
    c = core(session=None)
    first = c.start(c.put("a", "1"), now=0.0)
    attempt(first)
    c.write_ids.adopt(session(3))  # a session registered by another route meanwhile
    assert first.on_success(A, registered(4)) is CONTINUE  # session 4 is left unused
    assert first.write_id.client_id == session(3)
    assert c.write_ids.client_id == session(3)


def test_expired_session_without_maybe_applied_attempts_registers_again_transparently() -> None:
    c = core()
    call = c.start(c.cas("k", None, "v"), now=0.0)
    old = call.write_id
    assert old is not None and old.client_id == SESSION
    attempt(call)
    assert call.on_failure(A, not_leader("n2", B), 0.0) is None  # never proposed
    attempt(call)
    assert call.on_failure(B, NOT_FOUND, 0.0) is None  # refused, not applied: start over
    assert c.write_ids.client_id is None  # later writes need a new session too
    assert call.retired_write_ids == (old,)
    assert c.write_ids.pending == frozenset()  # the refused write id is never sent again
    assert call.registering and call.method == "RegisterSession"
    backoff(call)
    assert attempt(call).endpoint == B  # the node that answered is the leader
    assert call.on_success(B, registered(40)) is CONTINUE
    new = call.write_id
    assert new is not None and (new.client_id, new.seq) == (session(40), 2)
    attempt(call)
    assert call.on_success(B, kv_pb2.CompareAndSwapResponse(succeeded=True)) is True
    assert c.write_ids.client_id == session(40)


def test_expired_session_after_a_maybe_applied_attempt_raises_session_expired() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    assert call.on_failure(A, UNAVAILABLE, 0.0) is None  # may have been proposed
    backoff(call)
    attempt(call)
    error = call.on_failure(B, NOT_FOUND, 0.0)
    assert isinstance(error, SessionExpired) and error.maybe_applied
    assert "session" in str(error) and B in str(error)
    assert call.retired_write_ids == ()
    assert c.write_ids.client_id is None and c.write_ids.pending == frozenset()
    # The client goes on in a new session.
    nxt = c.start(c.put("k", "v2"), now=0.0)
    assert nxt.registering


def test_expiry_forgets_only_the_session_still_in_use() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    # Meanwhile another call learned that the session expired and registered a new one.
    c.write_ids.forget(SESSION)
    c.write_ids.adopt(session(50))
    assert call.on_failure(A, NOT_FOUND, 0.0) is None
    assert c.write_ids.client_id == session(50)
    assert not call.registering and call.write_id.client_id == session(50)
    assert call.write_id.seq == 2


def test_not_found_on_a_read_or_a_registration_is_a_plain_error() -> None:
    c = core()
    call = c.start(c.get("k"), now=0.0)
    attempt(call)
    error = call.on_failure(A, NOT_FOUND, 0.0)
    assert type(error) is KVError and not error.maybe_applied
    c = core(session=None)
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.UNIMPLEMENTED, "old server"), 0.0)
    assert type(error) is KVError and not error.maybe_applied


def test_registration_answer_without_a_session_id_is_an_error() -> None:
    c = core(session=None)
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    with pytest.raises(KVError):
        call.on_success(A, kv_pb2.RegisterSessionResponse())
    assert c.write_ids.client_id is None and c.write_ids.pending == frozenset()


# --------------------------------------------------------------------------- status mapping


def test_invalid_argument_is_never_retried() -> None:
    c = core()
    call = c.start(c.put("", "v"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.INVALID_ARGUMENT, "empty key"), 0.0)
    assert isinstance(error, InvalidArgument) and not error.maybe_applied
    assert "empty key" in str(error)


def test_invalid_argument_is_never_maybe_applied_even_after_an_unsure_attempt() -> None:
    """README: InvalidArgument means definitely not applied. Validation happens before a
    write is proposed and every retry sends the same request, so an earlier UNAVAILABLE
    attempt cannot have applied it either."""
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    assert call.on_failure(A, UNAVAILABLE, 0.0) is None
    backoff(call)
    attempt(call)
    error = call.on_failure(B, RpcFailure(SC.RESOURCE_EXHAUSTED, "larger than max"), 0.0)
    assert isinstance(error, InvalidArgument) and not error.maybe_applied


def test_stale_write_is_raised_at_once_and_may_have_been_applied() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    assert call.on_failure(A, UNAVAILABLE, 0.0) is None
    backoff(call)
    attempt(call)
    failure = RpcFailure(SC.ABORTED, "write id older than its session remembers")
    error = call.on_failure(B, failure, 0.0)
    assert isinstance(error, StaleWrite) and error.maybe_applied
    assert "write id older than its session remembers" in str(error)
    assert call.attempts == 2
    assert c.write_ids.pending == frozenset()  # the call is over: its id is never resent


def test_stale_write_on_a_first_attempt_is_not_retried_either() -> None:
    c = core()
    call = c.start(c.cas("k", None, "v"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.ABORTED, "write id older"), 0.0)
    assert isinstance(error, StaleWrite) and error.maybe_applied
    assert not isinstance(error, (NotLeader, Unavailable, Timeout, InvalidArgument))


def test_aborted_on_a_read_is_a_plain_error() -> None:
    c = core()
    call = c.start(c.get("k"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.ABORTED, "?"), 0.0)
    assert type(error) is KVError and not error.maybe_applied


def test_message_too_large_maps_to_invalid_argument() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.RESOURCE_EXHAUSTED, "larger than max"), 0.0)
    assert isinstance(error, InvalidArgument)


NOSPACE = RpcFailure(SC.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
CORRUPT = RpcFailure(SC.DATA_LOSS, "etcdserver: corrupt cluster")


@pytest.mark.parametrize(("failure", "kind"), [(NOSPACE, NoSpace), (CORRUPT, CorruptCluster)])
def test_alarm_refusal_is_raised_at_once_and_not_applied(
    failure: RpcFailure, kind: type[KVError]
) -> None:
    """A put refused under an alarm did nothing; retrying cannot help until an operator
    acts, so the call ends at its first such answer."""
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    error = call.on_failure(A, failure, 0.0)
    assert isinstance(error, kind) and not error.maybe_applied
    assert not isinstance(error, InvalidArgument)
    assert failure.details in str(error)
    assert call.attempts == 1 and c.write_ids.pending == frozenset()


@pytest.mark.parametrize(("failure", "kind"), [(NOSPACE, NoSpace), (CORRUPT, CorruptCluster)])
def test_alarm_refusal_after_an_unsure_attempt_may_have_been_applied(
    failure: RpcFailure, kind: type[KVError]
) -> None:
    """An earlier UNAVAILABLE attempt may have been committed before the alarm went up;
    the refusal of the retry does not undo that."""
    c = core()
    call = c.start(c.cas("k", None, "v"), now=0.0)
    attempt(call)
    assert call.on_failure(A, UNAVAILABLE, 0.0) is None
    backoff(call)
    attempt(call)
    error = call.on_failure(B, failure, 0.0)
    assert isinstance(error, kind) and error.maybe_applied


def test_other_resource_exhausted_stays_invalid_argument() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.RESOURCE_EXHAUSTED,
                                          "Received message larger than max"), 0.0)
    assert isinstance(error, InvalidArgument) and not isinstance(error, NoSpace)


def test_alarm_list_is_a_leader_routed_read_without_a_write_id() -> None:
    c = core(session=None)
    call = c.start(c.alarms(), now=0.0)
    assert call.method == "Alarm" and call.write_id is None
    assert call.request.action == kv_pb2.AlarmRequest.GET
    assert attempt(call).endpoint == A
    assert call.on_failure(A, not_leader("n2", B), 0.0) is None
    assert attempt(call).endpoint == B
    response = kv_pb2.AlarmResponse(alarms=[kv_pb2.AlarmMember(member="n1", type="NOSPACE"),
                                            kv_pb2.AlarmMember(member="n3", type="CORRUPT")])
    assert call.on_success(B, response) == [("NOSPACE", "n1"), ("CORRUPT", "n3")]
    assert c.write_ids.client_id is None  # no session was registered for it


def test_disarm_request_names_type_and_member_and_returns_the_alarms_left() -> None:
    c = core()
    call = c.start(c.disarm("NOSPACE", "n1"), now=0.0)
    assert call.method == "Alarm" and call.write_id is None
    req = call.request
    assert (req.action, req.type, req.member) == (kv_pb2.AlarmRequest.DEACTIVATE, "NOSPACE", "n1")
    attempt(call)
    assert call.on_success(A, kv_pb2.AlarmResponse()) == []
    everything = c.start(c.disarm(), now=0.0).request
    assert (everything.type, everything.member) == ("", "")


def test_unexpected_status_is_a_plain_kverror_and_not_retried() -> None:
    c = core()
    call = c.start(c.put("k", "v"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.INTERNAL, "boom"), 0.0)
    assert type(error) is KVError and error.maybe_applied
    call = c.start(c.get("k"), now=0.0)
    attempt(call)
    error = call.on_failure(A, RpcFailure(SC.UNIMPLEMENTED, ""), 0.0)
    assert type(error) is KVError and not error.maybe_applied


def test_stale_get_is_pinned_to_the_first_endpoint() -> None:
    c = core()
    c.router.learn_leader(C)
    call = c.start(c.get("k", stale=True), now=0.0)
    assert call.request.stale
    assert attempt(call).endpoint == A
    call.on_failure(A, UNAVAILABLE, 0.0)
    backoff(call)
    assert attempt(call).endpoint == A
    error = call.on_failure(A, not_leader("n3", C), 0.0)
    assert isinstance(error, NotLeader)
    assert (error.leader_id, error.leader_address) == ("n3", C)


def test_stale_success_does_not_make_the_node_leader() -> None:
    c = core()
    call = c.start(c.get("k", stale=True), now=0.0)
    attempt(call)
    resp = kv_pb2.GetResponse(
        header=kv_pb2.ResponseHeader(node_id="n1", applied_index=3), found=True, value=b"v"
    )
    result = call.on_success(A, resp)
    assert (result.value, result.found, result.node, result.applied_index) == (b"v", True, "n1", 3)
    assert c.router.leader is None


def test_cas_request_encodes_expect_absent() -> None:
    c = core()
    absent = c.start(c.cas("k", None, "new"), now=0.0).request
    present = c.start(c.cas("k", "old", "new"), now=0.0).request
    assert absent.expect_absent and absent.expected == b""
    assert not present.expect_absent and present.expected == b"old"


def test_failure_from_rpc_error_reads_code_details_and_leader_metadata() -> None:
    class FakeError:
        def code(self) -> grpc.StatusCode:
            return SC.FAILED_PRECONDITION

        def details(self) -> str:
            return "not the\nleader"

        def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
            return (("kvstore-leader-id", "n2"), ("kvstore-leader-address", B.encode()))

    failure = failure_from_rpc_error(FakeError())
    assert failure == RpcFailure(SC.FAILED_PRECONDITION, "not the leader", "n2", B)
    assert failure_from_rpc_error(object()).code is SC.UNKNOWN


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "text", ["", "host", ":7001", "host:", "host:0", "host:70000", "host:x", "::1:7001", "a b:1"]
)
def test_bad_endpoints_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_endpoint_lists_are_parsed_in_order_without_duplicates() -> None:
    assert parse_endpoints(f"{A}, {B},{A}") == [A, B]
    assert parse_endpoints(["[::1]:7001"]) == ["[::1]:7001"]
    with pytest.raises(ValueError):
        parse_endpoints([])


def test_keys_must_be_bytes_or_str() -> None:
    c = core()
    assert c.start(c.put("ключ", b"v"), now=0.0).request.key == "ключ".encode()
    with pytest.raises(TypeError):
        c.put(123, "v")  # type: ignore[arg-type]
