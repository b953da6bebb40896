"""etcd's Watch service (a bidirectional stream) served from this member's applied state.

Any member serves watches, followers included, with no forwarding: every member applies
the same log, so its change log (store.events) holds the same events at the same
revisions, only possibly a little later. Watchers are subscriptions of the node's
WatchHub (kvstore/server/watch_hub.py): caught-up watchers share one change-log read per
applied batch; a watcher that starts in the past or falls behind reads history on its own.

One WatchStream per call: a reader task handles the client's create, cancel and
progress requests in order; one task per watch takes its events from the hub and queues
responses; the handler yields the queue. The queue is bounded, so a slow client only
makes its own watches' cursors lag (the hub then drops their buffers and they re-read the
change log later; a compaction meanwhile cancels them with compact_revision). A cursor
advances only past what was queued, so no event is lost, repeated or reordered.

etcd 3.5's behaviour is kept where a client can see it (checked against a real etcd):
watch ids (auto ids count up from 0 per stream; a client-chosen id in use, or an empty
range, answers created+canceled with watch_id -1 and etcd's reason); the created
response's header revision is the current one and start_revision 0 means the next;
a compacted start revision answers created, then canceled with compact_revision (header
revision 0, as etcd); a cancel of an unknown id is not answered; a progress request is
answered with watch_id -1; a stream stays open after the client half-closes it;
responses are fragmented only for watches that asked (etcd's sendFragments). One
response holds the events of one hub batch (one revision when live, up to READ_LIMIT
events of whole revisions when catching up), as etcd's synced/unsynced split does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from kvstore.etcdapi.common import EtcdNode, mvcc_failure
from kvstore.etcdpb import kv_pb2
from kvstore.etcdpb import rpc_pb2 as pb
from kvstore.server.watch_hub import Subscription
from kvstore.state.mvcc import ERR_COMPACTED, MvccError

log = logging.getLogger("kvstore.etcdapi.watch")

# etcd's --max-request-bytes default: the size past which a response is split.
MAX_RESPONSE_BYTES = 1536 * 1024
# etcd's --experimental-watch-progress-notify-interval default.
DEFAULT_PROGRESS_INTERVAL = 600.0
# Responses queued for one stream's client (etcd buffers 16 control responses).
SEND_QUEUE = 16
READ_LIMIT = 1000  # events per hub read

AUTO_WATCH_ID = 0
INVALID_WATCH_ID = -1
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
# etcd sends no cancel_reason with compact_revision; clients check compact_revision first
# (clientv3's Err()), so a reason only helps people reading the stream.
REASON_COMPACTED = mvcc_failure(ERR_COMPACTED).message


class Hub(Protocol):
    """The parts of kvstore.server.watch_hub.WatchHub a stream uses."""

    published: int

    def subscribe(self, key: bytes, range_end: bytes, start_rev: int,
                  prev_kv: bool = False) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    async def next_events(self, sub: Subscription, limit: int = READ_LIMIT
                          ) -> list[kv_pb2.Event]: ...


@dataclass(eq=False)
class Watch:
    id: int
    sub: Subscription
    drop: frozenset[int]  # event types the filters remove
    progress_notify: bool
    fragment: bool
    task: asyncio.Task[None] | None = None
    # First revision of a batch taken from the hub but not yet queued (None: none).
    pending_from: int | None = None
    sent_since_tick: bool = False


def _dropped_types(filters: Iterable[int]) -> frozenset[int]:
    drop = set()
    for f in filters:
        if f == pb.WatchCreateRequest.NOPUT:
            drop.add(kv_pb2.Event.PUT)
        elif f == pb.WatchCreateRequest.NODELETE:
            drop.add(kv_pb2.Event.DELETE)
    return frozenset(drop)


def fragments(resp: pb.WatchResponse, max_bytes: int) -> list[pb.WatchResponse]:
    """etcd's sendFragments: pieces of ``resp`` under ``max_bytes`` (at least one event
    each), all but the last with fragment=true; unsplit when small or of one event."""
    if resp.ByteSize() < max_bytes or len(resp.events) < 2:
        return [resp]
    out: list[pb.WatchResponse] = []
    events = list(resp.events)
    idx = 0
    while True:
        cur = pb.WatchResponse()
        cur.CopyFrom(resp)
        del cur.events[:]
        cur.fragment = True
        for ev in events[idx:]:
            cur.events.append(ev)
            if len(cur.events) > 1 and cur.ByteSize() >= max_bytes:
                del cur.events[-1]
                break
            idx += 1
        if idx == len(events):
            cur.fragment = False
        out.append(cur)
        if not cur.fragment:
            return out


def revision_chunks(events: list[kv_pb2.Event], max_bytes: int) -> list[list[kv_pb2.Event]]:
    """``events`` cut at revision boundaries into pieces of about ``max_bytes`` at most
    (a single revision is never cut), so that a watch that did not ask for fragments
    still gets messages a default gRPC client accepts."""
    chunks: list[list[kv_pb2.Event]] = [[]]
    size = 0
    for i, ev in enumerate(events):
        starts_revision = i > 0 and ev.kv.mod_revision != events[i - 1].kv.mod_revision
        ev_size = ev.ByteSize() + 8
        if starts_revision and chunks[-1] and size + ev_size > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(ev)
        size += ev_size
    return chunks


class WatchStream:
    """One Watch call: its watches, its reader and its send queue."""

    def __init__(self, node: EtcdNode, hub: Hub, progress_interval: float,
                 max_bytes: int) -> None:
        self.node = node
        self.hub = hub
        self.progress_interval = progress_interval
        self.max_bytes = max_bytes
        self.watches: dict[int, Watch] = {}
        self.next_id = 0
        self.out: asyncio.Queue[pb.WatchResponse] = asyncio.Queue(maxsize=SEND_QUEUE)

    async def serve(self, requests: AsyncIterator[pb.WatchRequest]
                    ) -> AsyncIterator[pb.WatchResponse]:
        reader = asyncio.create_task(self._read_requests(requests), name="etcd-watch-reader")
        ticker = asyncio.create_task(self._progress_ticker(), name="etcd-watch-progress")
        try:
            while True:
                yield await self.out.get()
        finally:
            reader.cancel()
            ticker.cancel()
            for w in list(self.watches.values()):
                self._stop(w)
            self.watches.clear()

    # -- requests ------------------------------------------------------------------------

    async def _read_requests(self, requests: AsyncIterator[pb.WatchRequest]) -> None:
        """The client's requests, in order. When the client half-closes, the stream stays
        open (etcd's recvLoop ends, its watches go on)."""
        try:
            async for req in requests:
                kind = req.WhichOneof("request_union")
                if kind == "create_request":
                    await self._create(req.create_request)
                elif kind == "cancel_request":
                    await self._cancel(req.cancel_request.watch_id)
                elif kind == "progress_request":
                    await self._send(pb.WatchResponse(header=self.node.header(
                        self.progress_revision()), watch_id=INVALID_WATCH_ID))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - the client went away mid-read, or a bug
            log.debug("watch stream reader ended: %r", err)

    async def _create(self, creq: pb.WatchCreateRequest) -> None:
        key = creq.key or b"\x00"  # etcd: an empty key is the smallest one
        range_end = creq.range_end
        # A write answered early (NodeDriver.propose) may still be committing: "from now
        # on" must start after it, as it would on etcd once the client had the answer.
        await self.node.driver.settled()
        current = self.node.store.revisions()[0]
        error = ""
        if range_end and range_end != b"\x00" and key >= range_end:
            error = ERR_EMPTY_RANGE
        elif creq.watch_id != AUTO_WATCH_ID and creq.watch_id in self.watches:
            error = ERR_DUPLICATE_ID
        if error:
            await self._send(pb.WatchResponse(header=self.node.header(current),
                                              watch_id=INVALID_WATCH_ID, created=True,
                                              canceled=True, cancel_reason=error))
            return
        wid = creq.watch_id if creq.watch_id != AUTO_WATCH_ID else self._auto_id()
        start = creq.start_revision if creq.start_revision else current + 1
        start = max(start, 1)
        sub = self.hub.subscribe(key, range_end, start, prev_kv=creq.prev_kv)
        w = Watch(wid, sub, _dropped_types(creq.filters), creq.progress_notify,
                  creq.fragment)
        self.watches[wid] = w
        try:
            await self._send(pb.WatchResponse(header=self.node.header(current),
                                              watch_id=wid, created=True))
        except BaseException:
            self._forget(w)
            raise
        w.task = asyncio.create_task(self._serve_watch(w), name=f"etcd-watch-{wid}")

    def _auto_id(self) -> int:
        while self.next_id in self.watches:
            self.next_id += 1
        wid = self.next_id
        self.next_id += 1
        return wid

    async def _cancel(self, wid: int) -> None:
        w = self.watches.get(wid)
        if w is None:
            return  # etcd answers a cancel of an unknown watch with nothing
        self._forget(w)
        self._stop(w)
        await self._send(pb.WatchResponse(header=self.node.header(), watch_id=wid,
                                          canceled=True))

    def _forget(self, w: Watch) -> None:
        if self.watches.get(w.id) is w:
            del self.watches[w.id]
        self.hub.unsubscribe(w.sub)

    def _stop(self, w: Watch) -> None:
        self.hub.unsubscribe(w.sub)
        if w.task is not None and w.task is not asyncio.current_task():
            w.task.cancel()

    async def _send(self, resp: pb.WatchResponse) -> None:
        await self.out.put(resp)

    # -- one watch -----------------------------------------------------------------------

    async def _serve_watch(self, w: Watch) -> None:
        """Take the watch's events from the hub and queue them, filtered, a batch per
        response (split when too large)."""
        try:
            while True:
                events = await self.hub.next_events(w.sub, READ_LIMIT)
                if not events:
                    return  # unsubscribed
                w.pending_from = events[0].kv.mod_revision
                revision = self._caught_up_revision(w)
                kept = [ev for ev in events if ev.type not in w.drop]
                for resp in self._responses(w, kept, revision):
                    await self._send(resp)
                    w.sent_since_tick = True
                w.pending_from = None
        except MvccError as err:
            self._forget(w)
            if err.message == ERR_COMPACTED:
                compacted = self.node.store.revisions()[1]
                resp = pb.WatchResponse(header=self.node.header(0), watch_id=w.id,
                                        canceled=True, compact_revision=compacted,
                                        cancel_reason=REASON_COMPACTED)
            else:
                resp = pb.WatchResponse(header=self.node.header(), watch_id=w.id,
                                        canceled=True,
                                        cancel_reason=mvcc_failure(err.message).message)
            await self._send(resp)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # A bug must not end the client's other watches silently: this one is
            # cancelled with the reason.
            log.exception("watch %d failed", w.id)
            self._forget(w)
            await self._send(pb.WatchResponse(header=self.node.header(), watch_id=w.id,
                                              canceled=True,
                                              cancel_reason=f"kvstore: watch failed: {err}"))

    def _responses(self, w: Watch, events: list[kv_pb2.Event],
                   revision: int) -> list[pb.WatchResponse]:
        if not events:
            return []
        if w.fragment:
            resp = pb.WatchResponse(header=self.node.header(revision), watch_id=w.id,
                                    events=events)
            return fragments(resp, self.max_bytes)
        chunks = revision_chunks(events, self.max_bytes)
        return [pb.WatchResponse(
            header=self.node.header(revision if i == len(chunks) - 1
                                    else chunk[-1].kv.mod_revision),
            watch_id=w.id, events=chunk) for i, chunk in enumerate(chunks)]

    # -- progress ------------------------------------------------------------------------

    def _caught_up_revision(self, w: Watch) -> int:
        """The revision through which every event of ``w`` was taken from the hub."""
        sub = w.sub
        revision = sub.next_rev - 1
        if sub.synced and not sub.buffer:
            revision = max(revision, self.hub.published)
        return revision

    def _safe_revision(self, w: Watch) -> int:
        """The revision through which every event of ``w`` is queued for the client."""
        if w.pending_from is not None:
            return w.pending_from - 1
        return self._caught_up_revision(w)

    def progress_revision(self) -> int:
        """What a progress response may promise: every event at or below it was queued
        before it, for every watch of the stream (etcd 3.5.9+ defers its answer until all
        watches are synced; this answers at once with what is true now)."""
        current = self.node.store.revisions()[0]
        return min([current, *(self._safe_revision(w) for w in self.watches.values())])

    async def _progress_ticker(self) -> None:
        """etcd's progress_notify: every interval, each watch that asked for it, is
        caught up, and sent nothing since the last tick gets an empty response with the
        revision it is known to be current at."""
        while True:
            await asyncio.sleep(self.progress_interval)
            current = self.node.store.revisions()[0]
            for w in list(self.watches.values()):
                idle = not w.sent_since_tick
                w.sent_since_tick = False
                if not (w.progress_notify and idle and w.task is not None
                        and w.pending_from is None and w.sub.synced and not w.sub.buffer):
                    continue
                revision = min(current, self._safe_revision(w))
                with contextlib.suppress(asyncio.QueueFull):
                    # Never wait: a client too slow to take its events needs no progress.
                    self.out.put_nowait(pb.WatchResponse(
                        header=self.node.header(revision), watch_id=w.id))


class EtcdWatchService:
    def __init__(self, node: EtcdNode, hub: Hub | None = None,
                 progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
                 max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.node = node
        self.hub: Hub = hub if hub is not None else node.driver.watch_hub
        self.progress_interval = progress_interval
        self.max_bytes = max_bytes

    def handlers(self) -> dict[str, Any]:
        return {"Watch": self.watch}

    async def watch(self, requests: AsyncIterator[pb.WatchRequest],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchResponse]:
        stream = WatchStream(self.node, self.hub, self.progress_interval, self.max_bytes)
        async for resp in stream.serve(requests):
            yield resp
