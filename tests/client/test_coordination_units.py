"""The sans-I/O parts of watch, leases and the recipes, without any server: what an answer
means to a watch, when keep-alives go out, and which requests the lock algorithm sends (and
that it cleans up after a timeout)."""

from __future__ import annotations

from typing import Any

import click
import pytest

from kvstore.cli.coord import event_json, event_line, lease_id
from kvstore.client import Compacted, KVError, LockTimeout
from kvstore.client import _recipes as recipes
from kvstore.client.etcd_face import NoAnswer
from kvstore.client.leases import RETRY_SECONDS, KeepAliveSchedule
from kvstore.client.ranges import KeyValue
from kvstore.client.watch import MAX_CANCELS, WatchEvent, WatchState, create_request
from kvstore.etcdpb import kv_pb2
from kvstore.etcdpb import rpc_pb2 as pb


def response(revision: int = 0, *, created: bool = False, canceled: bool = False,
             compact: int = 0, reason: str = "", events: list[Any] = ()) -> pb.WatchResponse:
    return pb.WatchResponse(header=pb.ResponseHeader(revision=revision), created=created,
                            canceled=canceled, compact_revision=compact, cancel_reason=reason,
                            events=list(events))


def put_event(key: bytes, value: bytes, revision: int) -> kv_pb2.Event:
    return kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_pb2.KeyValue(
        key=key, value=value, create_revision=revision, mod_revision=revision, version=1))


# --------------------------------------------------------------------------- watch state


def test_watch_from_now_resumes_after_the_creation_revision() -> None:
    state = WatchState(create_request("k", prefix=True, prev_kv=True))
    assert state.create().create_request.start_revision == 0
    state.on_created("n1", response(41, created=True))
    assert state.next_revision == 42
    resumed = state.create().create_request
    assert (resumed.start_revision, resumed.prev_kv, resumed.range_end) == (42, True, b"l")


def test_watch_drops_what_it_has_seen_and_advances() -> None:
    state = WatchState(create_request("k"), start_revision=5)
    got = state.on_response("n1", response(7, events=[put_event(b"k", b"a", 5),
                                                      put_event(b"k", b"b", 6)]))
    assert [e.value for e in got] == [b"a", b"b"] and state.next_revision == 7
    # A server that resends older events after a resume: dropped, nothing repeated.
    again = state.on_response("n2", response(8, events=[put_event(b"k", b"b", 6),
                                                        put_event(b"k", b"c", 7)]))
    assert [e.value for e in again] == [b"c"] and state.next_revision == 8
    assert state.on_response("n2", response(9)) == [] and state.next_revision == 8


def test_watch_compacted_is_an_error_with_the_compact_revision() -> None:
    state = WatchState(create_request("k"), start_revision=3)
    with pytest.raises(Compacted) as info:
        state.on_response("n1", response(20, canceled=True, compact=10))
    assert info.value.compact_revision == 10 and "revision 3" in str(info.value)


def test_watch_cancel_reconnects_until_it_persists() -> None:
    state = WatchState(create_request("k"), start_revision=3)
    for _ in range(MAX_CANCELS - 1):
        with pytest.raises(NoAnswer):
            state.on_response("n1", response(5, canceled=True, reason="slow watcher"))
    with pytest.raises(KVError, match="slow watcher"):
        state.on_response("n1", response(5, canceled=True, reason="slow watcher"))
    refused = WatchState(create_request("k"))
    with pytest.raises(KVError, match="invalid"):
        refused.on_created("n1", response(5, created=True, canceled=True, reason="invalid"))


def test_watch_filters() -> None:
    spec = create_request("k", filters=["noput", "NODELETE"])
    assert list(spec.filters) == [pb.WatchCreateRequest.NOPUT, pb.WatchCreateRequest.NODELETE]
    with pytest.raises(ValueError, match="unknown watch filter"):
        create_request("k", filters=["nothing"])


# --------------------------------------------------------------------------- keep-alive timing


def test_keepalive_schedule() -> None:
    s = KeepAliveSchedule(9, granted_at=100.0)
    assert (s.next_at, s.expires_at) == (103.0, 109.0)
    s.answered(9, sent_at=103.5)  # counted from when the keep-alive was sent
    assert (s.next_at, s.expires_at) == (106.5, 112.5)
    s.failed(now=110.0)  # retried soon, never after the lease could have expired
    assert s.next_at == pytest.approx(110.0 + min(RETRY_SECONDS, 2.5 / 3))
    assert s.remaining(113.0) < 0


# --------------------------------------------------------------------------- the lock recipe


def txn_answer(succeeded: bool, revision: int, first: list[Any], owner: list[Any]
               ) -> pb.TxnResponse:
    return pb.TxnResponse(header=pb.ResponseHeader(revision=revision), succeeded=succeeded,
                          responses=[
                              pb.ResponseOp(response_range=pb.RangeResponse(kvs=first)),
                              pb.ResponseOp(response_range=pb.RangeResponse(kvs=owner))])


def kv(key: bytes, create: int) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=key, create_revision=create, mod_revision=create)


def test_lock_uncontended_takes_one_txn() -> None:
    steps = recipes.lock(b"job/", 0xABC)
    txn = next(steps)
    assert isinstance(txn, recipes.TxnStep)
    compare = txn.request.compare[0]
    assert (compare.key, compare.target, compare.create_revision) == (
        b"job/abc", pb.Compare.CREATE, 0)
    assert txn.request.success[0].request_put.lease == 0xABC
    with pytest.raises(StopIteration) as done:
        steps.send(txn_answer(True, 10, [], [kv(b"job/abc", 10)]))
    assert done.value.value == (b"job/abc", 10)


def test_lock_waits_for_the_key_ahead_then_checks_its_own() -> None:
    steps = recipes.lock(b"job/", 0xABC)
    next(steps)
    look = steps.send(txn_answer(True, 10, [], [kv(b"job/1", 4)]))
    assert isinstance(look, recipes.RangeStep)
    assert (look.request.max_create_revision, look.request.sort_order, look.request.limit) == (
        9, pb.RangeRequest.DESCEND, 1)
    watch = steps.send(pb.RangeResponse(header=pb.ResponseHeader(revision=12),
                                        kvs=[kv(b"job/2", 7)]))
    assert watch == recipes.OpenWatch(b"job/2", 12)
    wait = steps.send("watch-handle")
    assert wait == recipes.NextEvent("watch-handle", None)
    gone = WatchEvent("DELETE", b"job/2", b"", 0, 13, 0)
    assert steps.send(gone) == recipes.CloseWatch("watch-handle")
    again = steps.send(None)
    assert isinstance(again, recipes.RangeStep)
    mine = steps.send(pb.RangeResponse(header=pb.ResponseHeader(revision=14)))
    assert mine.request.key == b"job/abc"
    with pytest.raises(StopIteration) as done:
        steps.send(pb.RangeResponse(kvs=[kv(b"job/abc", 10)]))
    assert done.value.value == (b"job/abc", 10)


def test_lock_timeout_deletes_its_key() -> None:
    steps = recipes.lock(b"job/", 0xABC, deadline=1.0)
    next(steps)
    steps.send(txn_answer(True, 10, [], [kv(b"job/1", 4)]))
    steps.send(pb.RangeResponse(header=pb.ResponseHeader(revision=12), kvs=[kv(b"job/1", 4)]))
    steps.send("w")
    cleanup = steps.send(None)  # NextEvent answered None: the deadline passed
    assert isinstance(cleanup, recipes.TxnStep)
    assert cleanup.request.success[0].request_delete_range.key == b"job/abc"
    with pytest.raises(LockTimeout):
        steps.send(pb.TxnResponse())


def test_lock_reuses_the_key_of_its_lease() -> None:
    steps = recipes.lock(b"job/", 0xABC)
    next(steps)
    with pytest.raises(StopIteration) as done:
        steps.send(txn_answer(False, 30, [kv(b"job/abc", 10)], [kv(b"job/abc", 10)]))
    assert done.value.value == (b"job/abc", 10)


# --------------------------------------------------------------------------- CLI formatting


def test_cli_event_formats_and_lease_ids() -> None:
    prev = KeyValue(b"k", b"old", 3, 3, 1)
    event = WatchEvent("PUT", b"k", b"new", 3, 5, 2, 0, prev)
    assert event_line(event, prev_kv=True) == b"PUT k new (prev old)"
    assert event_line(WatchEvent("DELETE", b"k", b"", 0, 6, 0), prev_kv=False) == b"DELETE k"
    doc = event_json(event, prev_kv=True)
    assert (doc["type"], doc["key"], doc["value"], doc["mod_revision"], doc["prev_value"]) == (
        "PUT", "k", "new", 5, "old")
    assert event_json(WatchEvent("DELETE", b"k", b"", 0, 6, 0), True)["value"] is None
    assert lease_id("694d7e1f3a2b0c11") == 0x694D7E1F3A2B0C11 == lease_id("0x694d7e1f3a2b0c11")
    for bad in ("xyz", "0", "ffffffffffffffff"):
        with pytest.raises(click.BadParameter):
            lease_id(bad)
