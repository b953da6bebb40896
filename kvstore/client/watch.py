"""Watches: every change to a key or range, in revision order, across reconnects.

    with client.watch("config/", prefix=True, prev_kv=True) as events:
        for event in events:            # blocks; ends when the watch is closed
            print(event.type, event.key, event.value, event.mod_revision)

The watch speaks etcd's Watch service (a bidirectional stream; see
:mod:`kvstore.client.etcd_face`). The promise to a caller is the one etcd makes, kept across
reconnects: every event after the start revision, once, in order. The client remembers
the next revision it needs (the last event's revision + 1, or the creating answer's header
revision + 1 for a watch "from now"); when a stream breaks (the member died, restarted, or
the connection dropped) it opens a new stream, on the next endpoint, *from that revision*,
and drops anything older should a server send it. All events of one revision arrive in one
answer, so a break can never split a revision. If the history needed was compacted
meanwhile, the gap cannot be filled: the watch raises :class:`Compacted` (with
``compact_revision``) instead of silently skipping, and the caller reads the state afresh.

Each (re)connection is one call of the client core: the client's deadline, backoff and
endpoint rotation apply to it, so a cluster that stays unreachable for longer than the
client's timeout ends the watch with Unavailable rather than hanging.

Events are read by a background thread (sync) or task (async) into an unbounded queue, so
the caller may close the watch from any thread and wait with a timeout (``get``). A watch
on a member that is alive but cut off from its cluster (partitioned, paused) sees no
events and is not detected as broken: etcd's clients have the same gap.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from kvstore.client._core import Backoff, Call, Operation, RpcFailure, failure_from_rpc_error
from kvstore.client.errors import Compacted, KVError
from kvstore.client.etcd_face import WATCH_PATH, AsyncFace, NoAnswer, SyncFace, fail_attempt
from kvstore.client.ranges import KeyLike, KeyValue, key_range
from kvstore.etcdpb import kv_pb2
from kvstore.etcdpb import rpc_pb2 as pb

_FILTERS = {"noput": pb.WatchCreateRequest.NOPUT, "nodelete": pb.WatchCreateRequest.NODELETE}
# A server that cancels the same watch this often in a row, with no event in between,
# means it: the cancel reason is raised instead of reconnecting again.
MAX_CANCELS = 3
_END = object()


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: ``type`` "PUT" or "DELETE", the key as it is after the change (a DELETE
    has an empty value and zero revisions besides ``mod_revision``, the deletion's), and,
    when the watch asked for ``prev_kv``, the key as it was before (None if it was absent)."""

    type: str
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0
    prev_kv: KeyValue | None = None

    @classmethod
    def from_proto(cls, event: Any) -> WatchEvent:
        kv = event.kv
        prev = KeyValue.from_proto(event.prev_kv) if event.HasField("prev_kv") else None
        kind = "DELETE" if event.type == kv_pb2.Event.DELETE else "PUT"
        return cls(kind, bytes(kv.key), bytes(kv.value), kv.create_revision,
                   kv.mod_revision, kv.version, kv.lease, prev)


def create_request(
    key: KeyLike, *, prefix: bool = False, range_end: KeyLike | None = None,
    prev_kv: bool = False, filters: Iterable[str | int] = (), progress_notify: bool = False,
) -> pb.WatchCreateRequest:
    """An etcd WatchCreateRequest without its start revision (the watch sets that).
    ``filters``: "noput" and/or "nodelete" (or etcd's enum values)."""
    k, end = key_range(key, range_end, prefix=prefix)
    kinds = []
    for f in filters:
        if isinstance(f, str):
            try:
                kinds.append(_FILTERS[f.lower().replace("_", "")])
            except KeyError:
                raise ValueError(f"unknown watch filter {f!r}: noput or nodelete") from None
        else:
            kinds.append(int(f))
    return pb.WatchCreateRequest(key=k, range_end=end, prev_kv=prev_kv, filters=kinds,
                                 progress_notify=progress_notify)


class WatchState:
    """Sans-I/O progress of one logical watch: the next revision it needs, what to send to
    (re)create it, and what an answer means (events to deliver, or an error to raise)."""

    def __init__(self, spec: pb.WatchCreateRequest, start_revision: int = 0) -> None:
        if start_revision < 0:
            raise ValueError("start_revision must be >= 0 (0: from now on)")
        self.spec = spec
        self.next_revision = start_revision  # 0 until the first creation answers
        self.cancels = 0  # server cancels in a row without an event

    def create(self) -> pb.WatchRequest:
        request = pb.WatchCreateRequest()
        request.CopyFrom(self.spec)
        request.start_revision = self.next_revision
        return pb.WatchRequest(create_request=request)

    def on_created(self, endpoint: str, response: Any) -> None:
        """The first answer on a new stream; raises if it is a refusal."""
        if response.canceled or not response.created:
            self._refused(endpoint, response)
        if self.next_revision == 0:
            # "From now": the events after the revision the watch was created at.
            self.next_revision = response.header.revision + 1

    def on_response(self, endpoint: str, response: Any) -> list[WatchEvent]:
        """The events of one answer that the watcher has not seen (none for a progress
        notification). Raises Compacted, or KVError for a cancel that persists; returns
        None-like empty list for a cancel worth a reconnect (``cancelled`` then True)."""
        if response.canceled or response.compact_revision:
            self._refused(endpoint, response)
        events = [WatchEvent.from_proto(e) for e in response.events
                  if e.kv.mod_revision >= self.next_revision]
        if events:
            self.cancels = 0
            self.next_revision = events[-1].mod_revision + 1
        return events

    def _refused(self, endpoint: str, response: Any) -> None:
        if response.compact_revision:
            error = Compacted(
                f"watch: revision {self.next_revision} was compacted on {endpoint} (compact "
                f"revision {response.compact_revision}); the events in between are gone: "
                "read the current state and watch again from its revision")
            error.compact_revision = response.compact_revision
            raise error
        self.cancels += 1
        reason = response.cancel_reason or "cancelled by the server"
        if self.cancels >= MAX_CANCELS or response.created:
            raise KVError(f"watch cancelled by {endpoint}: {reason}")
        raise NoAnswer(RpcFailure(grpc.StatusCode.UNAVAILABLE, f"watch cancelled: {reason}"))


def _episode(timeout: float | None) -> Operation[Any]:
    return Operation(name="watch", method="Watch", build=lambda _w: None, parse=lambda r: r,
                     timeout=timeout)


def _moved_on(face: SyncFace | AsyncFace, endpoint: str) -> None:
    """After a broken stream, prefer the next endpoint: the member may be gone."""
    router = face.core.router
    router.forget_leader(endpoint)
    router.learn_leader(router.next_after(endpoint))


class _Base:
    def __init__(self, spec: pb.WatchCreateRequest, start_revision: int) -> None:
        self.state = WatchState(spec, start_revision)
        self.endpoint = ""  # where the current stream is
        self.reconnects = 0  # streams opened after the first, for tests and diagnostics
        self._closed = False
        self._start_error: BaseException | None = None  # what kept the watch from starting
        self._started = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _report(self, exc: Exception) -> None:
        """An error that ended the watch: raised by the constructor/start if the watch never
        started, else delivered to the caller after the events before it."""
        error = exc if isinstance(exc, KVError) else KVError(
            f"watch failed: {type(exc).__name__}: {exc}")
        if not self._started:
            self._start_error = error
        else:
            self._events.put_nowait(error)

    @property
    def next_revision(self) -> int:
        """The revision the watch would resume from (0 before it is created)."""
        return self.state.next_revision


class Watch(_Base):
    """A running watch (see the module docstring); made by ``KVClient.watch``, which has
    returned only once the watch exists on a member, so later writes are seen. Iterate it
    for events; ``get(timeout)`` waits at most ``timeout``; ``close()`` from any thread."""

    def __init__(self, face: SyncFace, spec: pb.WatchCreateRequest,
                 start_revision: int = 0) -> None:
        super().__init__(spec, start_revision)
        self._face = face
        self._events: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._requests: queue.Queue[Any] | None = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="kvstore-watch", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._finished = True
            raise self._start_error

    # -- the caller's side

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        event = self.get()
        if event is None:  # pragma: no cover - get() without timeout never times out
            raise StopIteration
        return event

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, or None if none came within ``timeout`` seconds. Raises
        StopIteration once the watch is closed, and the error that ended it if one did."""
        if self._finished:
            raise StopIteration
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END or isinstance(item, BaseException):
            self._finished = True
            if isinstance(item, BaseException) and not self._closed:
                raise item
            raise StopIteration
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop watching (idempotent); a blocked iteration ends."""
        with self._lock:
            self._closed = True
            self._stop.set()
            self._hang_up()
        self._events.put(_END)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the reader thread

    def _hang_up(self) -> None:
        if self._requests is not None:
            self._requests.put(None)
        if self._stream is not None:
            self._stream.cancel()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._connect():
                    return
                self._started = True
                self._ready.set()
                self._read()
        except Exception as exc:  # noqa: BLE001 - reported to the caller, not lost
            self._report(exc)
        finally:
            self._events.put(_END)
            self._ready.set()

    def _connect(self) -> bool:
        call: Call[Any] = self._face.core.start(_episode(None), time.monotonic())
        try:
            while True:
                step = call.next_step(time.monotonic())
                if isinstance(step, Backoff):
                    if self._stop.wait(step.seconds):
                        return False
                    continue
                try:
                    self._open(step.endpoint, step.timeout)
                except grpc.RpcError as exc:
                    failure = failure_from_rpc_error(exc)
                except NoAnswer as exc:
                    failure = exc.failure
                else:
                    call.on_success(step.endpoint, None)
                    return True
                if self._stop.is_set():
                    return False
                error = fail_attempt(call, step.endpoint, failure)
                if error is not None:
                    raise error
        finally:
            call.close()

    def _open(self, endpoint: str, timeout: float) -> None:
        requests: queue.Queue[Any] = queue.Queue()
        requests.put(self.state.create())

        def outgoing() -> Iterator[pb.WatchRequest]:
            while (item := requests.get()) is not None:
                yield item

        method = self._face.channel(endpoint).stream_stream(
            WATCH_PATH, request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.WatchResponse.FromString)
        with self._lock:
            if self._closed:
                raise NoAnswer(RpcFailure(grpc.StatusCode.CANCELLED, "closed"))
            stream = method(outgoing())
            self._stream, self._requests = stream, requests
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            stream.cancel()

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            first = next(stream, None)
        except grpc.RpcError:
            if not expired.is_set():
                raise
            first = None
        finally:
            timer.cancel()
        if first is None:
            self._drop(stream)
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired.is_set() else (
                grpc.StatusCode.UNAVAILABLE)
            raise NoAnswer(RpcFailure(code, "no answer to the watch's creation"))
        try:
            self.state.on_created(endpoint, first)
        except BaseException:
            self._drop(stream)
            raise
        if self.endpoint:
            self.reconnects += 1
        self.endpoint = endpoint

    def _drop(self, stream: Any) -> None:
        with self._lock:
            if self._stream is stream:
                self._hang_up()
                self._stream = self._requests = None

    def _read(self) -> None:
        stream, endpoint = self._stream, self.endpoint
        try:
            for response in stream:
                for event in self.state.on_response(endpoint, response):
                    self._events.put(event)
        except (grpc.RpcError, NoAnswer):
            pass
        finally:
            self._drop(stream)
        if not self._stop.is_set():
            _moved_on(self._face, endpoint)


class AsyncWatch(_Base):
    """The asyncio watch: ``async with client.watch(...) as w: async for event in w``.
    The stream is created on entering (or on the first iteration), then read by a task."""

    def __init__(self, face: AsyncFace, spec: pb.WatchCreateRequest,
                 start_revision: int = 0) -> None:
        super().__init__(spec, start_revision)
        self._face = face
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stream: Any = None
        self._finished = False

    async def start(self) -> AsyncWatch:
        """Create the watch on a member (idempotent); raises what prevented it."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            await self._ready.wait()
            if self._start_error is not None:
                self._finished = True
                raise self._start_error
        return self

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            event = await self.get()
        except StopIteration:
            raise StopAsyncIteration from None
        assert event is not None
        return event

    async def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, or None after ``timeout`` seconds without one; StopIteration
        once closed; the error that ended the watch if one did."""
        await self.start()
        if self._finished:
            raise StopIteration
        try:
            item = await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            return None
        if item is _END or isinstance(item, BaseException):
            self._finished = True
            if isinstance(item, BaseException) and not self._closed:
                raise item
            raise StopIteration
        return item  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Stop watching (idempotent)."""
        self._closed = True
        if self._stream is not None:
            self._stream.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing
                pass
        self._events.put_nowait(_END)

    async def __aenter__(self) -> AsyncWatch:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _run(self) -> None:
        try:
            while not self._closed:
                await self._connect()
                self._started = True
                self._ready.set()
                await self._read()
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - reported to the caller, not lost
            self._report(exc)
        finally:
            if self._stream is not None:
                self._stream.cancel()
            self._events.put_nowait(_END)
            self._ready.set()

    async def _connect(self) -> None:
        call: Call[Any] = self._face.core.start(_episode(None), time.monotonic())
        try:
            while True:
                step = call.next_step(time.monotonic())
                if isinstance(step, Backoff):
                    await asyncio.sleep(step.seconds)
                    continue
                try:
                    await self._open(step.endpoint, step.timeout)
                except grpc.RpcError as exc:
                    failure = failure_from_rpc_error(exc)
                except NoAnswer as exc:
                    failure = exc.failure
                else:
                    call.on_success(step.endpoint, None)
                    return
                error = fail_attempt(call, step.endpoint, failure)
                if error is not None:
                    raise error
        finally:
            call.close()

    async def _open(self, endpoint: str, timeout: float) -> None:
        method = self._face.channel(endpoint).stream_stream(
            WATCH_PATH, request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.WatchResponse.FromString)
        stream = method()
        self._stream = stream
        try:
            await stream.write(self.state.create())
            try:
                first = await asyncio.wait_for(stream.read(), timeout)
            except TimeoutError:
                raise NoAnswer(RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                          "no answer to the watch's creation")) from None
            if first is grpc.aio.EOF:
                raise NoAnswer(RpcFailure(grpc.StatusCode.UNAVAILABLE,
                                          "watch stream ended before it was created"))
            self.state.on_created(endpoint, first)
        except BaseException:
            stream.cancel()
            self._stream = None
            raise
        if self.endpoint:
            self.reconnects += 1
        self.endpoint = endpoint

    async def _read(self) -> None:
        stream, endpoint = self._stream, self.endpoint
        try:
            while (response := await stream.read()) is not grpc.aio.EOF:
                for event in self.state.on_response(endpoint, response):
                    self._events.put_nowait(event)
        except (grpc.RpcError, NoAnswer):
            pass
        finally:
            stream.cancel()
            self._stream = None
        if not self._closed:
            _moved_on(self._face, endpoint)


__all__ = ["AsyncWatch", "Watch", "WatchEvent", "WatchState", "create_request"]
