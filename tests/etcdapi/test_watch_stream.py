"""The Watch service in process: the real WatchHub over a small in-memory change log, served
on a loopback gRPC server (or driven directly, for the slow-client cases where gRPC's own
buffers would hide the send queue). etcd's rules: ids, errors, compaction, progress,
filters, fragments; and a slow client only lags, never loses, repeats or reorders."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from kvstore.etcdapi import watch_service
from kvstore.etcdapi.methods import WATCH, generic_handler, stub
from kvstore.etcdapi.watch_service import (
    EtcdWatchService,
    WatchStream,
    fragments,
    revision_chunks,
)
from kvstore.etcdpb import kv_pb2
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.server.watch_hub import WatchHub
from kvstore.state.mvcc import ERR_COMPACTED, MvccError, in_range

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


class Log:
    """A change log with etcd's revisions (store.events' contract) and a WatchHub."""

    def __init__(self, max_buffer: int = 1024) -> None:
        self.current, self.compacted = 1, 0
        self.log: list[kv_pb2.Event] = []
        self.hub = WatchHub(self, max_buffer=max_buffer, read=self._read)

    @staticmethod
    async def _read(fn: Any, *args: Any, **kw: Any) -> Any:
        return fn(*args, **kw)

    def revisions(self) -> tuple[int, int]:
        return self.current, self.compacted

    def write(self, *changes: tuple[bytes, bytes | None]) -> int:
        """One revision: (key, value) puts and (key, None) deletes; published."""
        self.current += 1
        for key, value in changes:
            kv = kv_pb2.KeyValue(key=key, mod_revision=self.current)
            if value is not None:
                kv.value, kv.create_revision, kv.version = value, self.current, 1
            self.log.append(kv_pb2.Event(type=PUT if value is not None else DELETE, kv=kv))
        self.hub.publish()
        return self.current

    def events(self, start_rev: int, key: bytes, range_end: bytes, *, prev_kv: bool = False,
               limit: int = 1000) -> tuple[list[kv_pb2.Event], int]:
        if 0 < start_rev <= self.compacted:
            raise MvccError(ERR_COMPACTED)
        out: list[kv_pb2.Event] = []
        for ev in self.log:
            if ev.kv.mod_revision < start_rev or not in_range(ev.kv.key, key, range_end):
                continue
            if len(out) >= limit and ev.kv.mod_revision != out[-1].kv.mod_revision:
                return out, out[-1].kv.mod_revision + 1
            out.append(ev)
        return out, self.current + 1


class Driver:
    """NodeDriver.settled: open unless a test holds it (a write answered early and
    still committing)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    async def settled(self) -> None:
        await self.open.wait()


class Node:
    """The parts of EtcdNode a watch stream uses."""

    def __init__(self, log: Log) -> None:
        self.store = log
        self.driver = Driver()

    def header(self, revision: int | None = None) -> pb.ResponseHeader:
        return pb.ResponseHeader(member_id=7, revision=self.current()
                                 if revision is None else revision)

    def current(self) -> int:
        return self.store.current


def create(key: bytes, range_end: bytes = b"", **kw: Any) -> pb.WatchRequest:
    return pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=range_end,
                                                                **kw))


@contextlib.asynccontextmanager
async def serving(node: Node) -> AsyncIterator[Any]:
    """The watch service of `node` on a loopback port; yields a Watch stub."""
    service = EtcdWatchService(node, node.store.hub, progress_interval=0.05,  # type: ignore[arg-type]
                               max_bytes=400)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((generic_handler(WATCH, service.handlers()),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield stub(channel, WATCH)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Log, Any]]:
    log = Log()
    async with serving(Node(log)) as watch:
        yield log, watch


async def read(call: Any, n: int = 1) -> list[pb.WatchResponse]:
    return [await asyncio.wait_for(call.read(), 10) for _ in range(n)]


def keys(resp: pb.WatchResponse) -> list[tuple[int, bytes, int]]:
    return [(ev.type, ev.kv.key, ev.kv.mod_revision) for ev in resp.events]


async def test_ids_errors_cancel_and_progress(served: tuple[Log, Any]) -> None:
    log, watch = served
    log.write((b"a", b"1"))
    call = watch.Watch()
    await call.write(create(b"a"))
    await call.write(create(b"a", watch_id=7))
    await call.write(create(b"a", watch_id=7))
    await call.write(create(b"z", b"a"))
    await call.write(create(b"a"))
    first = await read(call, 5)
    assert [(r.watch_id, r.created, r.canceled, r.cancel_reason) for r in first] == [
        (0, True, False, ""), (7, True, False, ""),
        (-1, True, True, "mvcc: duplicate watch ID provided on the WatchStream"),
        (-1, True, True, "mvcc: watcher range is empty"), (1, True, False, "")]
    assert {r.header.revision for r in first} == {2}
    await call.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=99)))
    await call.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=7)))
    await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
    cancel, progress = await read(call, 2)  # nothing for the unknown id
    assert (cancel.watch_id, cancel.canceled) == (7, True)
    assert (progress.watch_id, progress.header.revision, len(progress.events)) == (-1, 2, 0)
    rev = log.write((b"a", b"2"))
    got = {r.watch_id: keys(r) for r in await read(call, 2)}
    assert got == {0: [(PUT, b"a", rev)], 1: [(PUT, b"a", rev)]}
    await call.done_writing()  # etcd keeps the stream open
    rev = log.write((b"a", None))
    assert {r.watch_id for r in await read(call, 2)} == {0, 1}
    call.cancel()


async def test_replay_filters_prev_kv_and_compaction(served: tuple[Log, Any]) -> None:
    log, watch = served
    r1 = log.write((b"p/a", b"1"), (b"p/b", b"1"))
    r2 = log.write((b"p/a", None), (b"q", b"x"))
    call = watch.Watch()
    await call.write(create(b"p/", b"p0", start_revision=r1))
    await call.write(create(b"p/", b"p0", start_revision=r1, watch_id=5,
                            filters=[pb.WatchCreateRequest.NOPUT]))
    await call.write(create(b"", b"\x00", start_revision=r1, watch_id=6,
                            filters=[pb.WatchCreateRequest.NODELETE]))
    resps = await read(call, 6)
    by_id: dict[int, list[Any]] = {}
    for r in resps:
        if not r.created:
            by_id.setdefault(r.watch_id, []).extend(keys(r))
    assert by_id == {0: [(PUT, b"p/a", r1), (PUT, b"p/b", r1), (DELETE, b"p/a", r2)],
                     5: [(DELETE, b"p/a", r2)],
                     6: [(PUT, b"p/a", r1), (PUT, b"p/b", r1), (PUT, b"q", r2)]}
    log.compacted = r2
    await call.write(create(b"p/", b"p0", start_revision=r1, watch_id=9))
    created, canceled = await read(call, 2)
    assert created.created and created.watch_id == 9
    assert (canceled.watch_id, canceled.canceled, canceled.compact_revision,
            canceled.header.revision) == (9, True, r2, 0)
    assert canceled.cancel_reason == "etcdserver: mvcc: required revision has been compacted"
    call.cancel()


async def test_progress_notify_when_idle(served: tuple[Log, Any]) -> None:
    log, watch = served
    call = watch.Watch()
    await call.write(create(b"k", progress_notify=True))
    await call.write(create(b"other"))  # never notified: it did not ask
    await read(call, 2)
    rev = log.write((b"unrelated", b"1"))
    # The watch is idle: within a few intervals an empty response with its id and the
    # revision every event of it up to which was sent.
    (note,) = await read(call)
    assert (note.watch_id, len(note.events), note.created) == (0, 0, False)
    assert note.header.revision in (rev - 1, rev)
    note = (await read(call))[0]
    assert (note.watch_id, note.header.revision) == (0, rev)
    call.cancel()


async def test_fragments_only_when_asked(served: tuple[Log, Any]) -> None:
    log, watch = served
    call = watch.Watch()
    await call.write(create(b"f/", b"f0", fragment=True))
    await call.write(create(b"f/", b"f0", watch_id=3))
    await read(call, 2)
    big = [(f"f/{i}".encode(), b"v" * 100) for i in range(8)]  # one revision, ~1 KB
    rev = log.write(*big)
    resps = await read(call, 4)
    frags = [r for r in resps if r.watch_id == 0]
    while sum(len(r.events) for r in frags) < 8:
        frags += [r for r in await read(call) if r.watch_id == 0]
    assert len(frags) > 1 and [r.fragment for r in frags] == [True] * (len(frags) - 1) + [False]
    assert [k for r in frags for k in keys(r)] == [(PUT, k, rev) for k, _ in big]
    whole = [r for r in resps if r.watch_id == 3]
    assert len(whole) == 1 and len(whole[0].events) == 8 and not whole[0].fragment
    call.cancel()


def test_fragment_and_chunk_helpers() -> None:
    evs = [kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k%d" % i, value=b"x" * 50,
                                            mod_revision=10 + i // 2)) for i in range(6)]
    resp = pb.WatchResponse(watch_id=1, events=evs)
    assert fragments(resp, 10_000) == [resp]
    parts = fragments(resp, 150)
    assert [e for p in parts for e in p.events] == evs and not parts[-1].fragment
    chunks = revision_chunks(evs, 150)
    assert [e for c in chunks for e in c] == evs and len(chunks) == 3
    assert all(len({e.kv.mod_revision for e in c}) == 1 for c in chunks)


async def _drain(gen: AsyncIterator[pb.WatchResponse], until: Any) -> list[pb.WatchResponse]:
    out: list[pb.WatchResponse] = []
    while not until(out):
        out.append(await asyncio.wait_for(gen.__anext__(), 10))
    return out


async def _requests(*reqs: pb.WatchRequest) -> AsyncIterator[pb.WatchRequest]:
    for r in reqs:
        yield r
    await asyncio.Event().wait()  # the client keeps its side open


def _events(resps: list[pb.WatchResponse]) -> list[tuple[bytes, int]]:
    return [(e.kv.value, e.kv.mod_revision) for r in resps for e in r.events]


async def test_a_slow_client_lags_without_losing_or_repeating() -> None:
    log = Log(max_buffer=20)
    stream = WatchStream(Node(log), log.hub, 600.0, 1 << 20)  # type: ignore[arg-type]
    gen = stream.serve(_requests(create(b"s")))
    created = await _drain(gen, lambda out: len(out) == 1)
    assert created[0].created
    written = [(str(i).encode(), log.write((b"s", str(i).encode()))) for i in range(500)]
    await asyncio.sleep(0)
    # Nothing is read: the send queue and the hub's buffer stay bounded.
    (w,) = stream.watches.values()
    assert stream.out.qsize() <= stream.out.maxsize and len(w.sub.buffer) <= 20
    got = await _drain(gen, lambda out: len(_events(out)) >= 500)
    assert _events(got) == written
    assert stream.progress_revision() == log.current
    await gen.aclose()
    assert not log.hub.subs


async def test_a_slow_client_overtaken_by_compaction_is_canceled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_service, "READ_LIMIT", 3)  # many small responses
    log = Log(max_buffer=5)
    stream = WatchStream(Node(log), log.hub, 600.0, 1 << 20)  # type: ignore[arg-type]
    gen = stream.serve(_requests(create(b"s")))
    await _drain(gen, lambda out: len(out) == 1)
    for i in range(200):
        log.write((b"s", str(i).encode()))
    await asyncio.sleep(0.1)
    (w,) = stream.watches.values()
    assert w.sub.next_rev < log.current  # its task waits for the client: it lags
    log.compacted = log.current - 1
    got = await _drain(gen, lambda out: bool(out) and out[-1].canceled)
    revs = [rev for _v, rev in _events(got)]
    assert revs == list(range(2, 2 + len(revs)))  # a gap-free prefix, then the cancel
    assert got[-1].compact_revision == log.compacted and not stream.watches
    await gen.aclose()


async def test_a_watch_from_now_starts_after_a_write_still_committing() -> None:
    """A put answered early may still be committing when its client creates a watch with
    no start revision: the watch waits for it (NodeDriver.settled), so it starts after
    the put, as on etcd, and does not report the client's own write back to it."""
    log = Log()
    node = Node(log)
    node.driver.open.clear()  # a write answered early is committing
    async with serving(node) as watch:
        call = watch.Watch()
        await call.write(create(b"a"))
        await asyncio.sleep(0.1)  # the create request is in, waiting
        committed = log.write((b"a", b"1"))  # ... until the write commits
        node.driver.open.set()
        (created,) = await read(call)
        assert (created.created, created.header.revision) == (True, committed)
        later = log.write((b"a", b"2"))
        assert [keys(r) for r in await read(call)] == [[(PUT, b"a", later)]]
        await call.done_writing()
