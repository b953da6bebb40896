"""One member's watchers: new changes read once per applied batch and handed to every
watcher that is caught up; watchers that are behind read their own way through history.

This is etcd's split of synced and unsynced watchers. A watcher that is caught up
("synced") gets the events of each applied batch from one shared read of the change log,
so a thousand watchers cost one store read per batch, not a thousand. A watcher that
starts in the past, or whose client reads slower than the cluster writes (its buffer would
pass `max_buffer` events), is "unsynced": it reads the change log from its own position,
a batch at a time, until it reaches the hub's position, and then joins the synced ones.
Nothing is dropped: a watcher that falls behind only stops holding events in memory, the
change log still has them (until a compaction, which it is then told about).

Positions never split a revision: a watcher's next revision always starts a revision.
All methods run on the event loop; store reads of history go to a worker thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from kvstore.etcdpb import kv_pb2
from kvstore.state.mvcc import MvccError, in_range

T = TypeVar("T")
MAX_BUFFER = 1024  # events a synced watcher may hold before it reads on its own
READ_LIMIT = 1000  # events per history read


class EventStore(Protocol):
    def revisions(self) -> tuple[int, int]: ...

    def events(self, start_rev: int, key: bytes, range_end: bytes, *, prev_kv: bool = False,
               limit: int = 1000) -> tuple[list[kv_pb2.Event], int]: ...


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


class Subscription:
    """One watcher's position and the events handed to it but not yet taken."""

    def __init__(self, key: bytes, range_end: bytes, next_rev: int, prev_kv: bool) -> None:
        self.key = key
        self.range_end = range_end
        self.prev_kv = prev_kv
        self.next_rev = next_rev  # the first revision not yet taken by the watcher
        self.buffer: deque[kv_pb2.Event] = deque()
        self.synced = False
        self.closed = False
        self.wake = asyncio.Event()

    def matches(self, ev: kv_pb2.Event) -> bool:
        return in_range(ev.kv.key, self.key, self.range_end)


class WatchHub:
    def __init__(self, store: EventStore, max_buffer: int = MAX_BUFFER,
                 read: Callable[..., Any] = _in_thread) -> None:
        self.store = store
        self.max_buffer = max_buffer
        self._read = read
        self.published = store.revisions()[0]  # changes up to here were handed out
        self.subs: set[Subscription] = set()
        self.shared_reads = 0  # store reads made by publish (for tests and metrics)

    def subscribe(self, key: bytes, range_end: bytes, start_rev: int,
                  prev_kv: bool = False) -> Subscription:
        """A watcher from `start_rev` (0: from the next change on)."""
        if not self.subs:  # nobody was published to: our position may be stale
            self.published = self.store.revisions()[0]
        sub = Subscription(key, range_end, start_rev or self.published + 1, prev_kv)
        sub.synced = sub.next_rev > self.published
        self.subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        sub.wake.set()
        self.subs.discard(sub)

    def publish(self, current: int | None = None) -> None:
        """Hand the changes applied since the last call to every synced watcher (called
        by the node after each applied batch, with the store's current revision if it
        has read it; one store read for all of them)."""
        if current is None:
            current = self.store.revisions()[0]
        if current <= self.published:
            return
        synced = [s for s in self.subs if s.synced]
        if synced:
            try:
                events, _ = self.store.events(self.published + 1, b"\x00", b"\x00",
                                              prev_kv=any(s.prev_kv for s in synced),
                                              limit=1 << 62)
            except MvccError:
                # A snapshot from the leader replaced our state past compacted history:
                # each watcher finds out from its own read (and is told it was compacted).
                for sub in synced:
                    sub.synced = False
                    sub.wake.set()
                events = []
            self.shared_reads += 1
            for sub in synced:
                if sub.synced:
                    self._hand(sub, events)
        self.published = current

    def _hand(self, sub: Subscription, events: list[kv_pb2.Event]) -> None:
        mine = [ev for ev in events if ev.kv.mod_revision >= sub.next_rev and sub.matches(ev)]
        if not mine:
            return
        if len(sub.buffer) + len(mine) > self.max_buffer:
            # Too slow to keep in memory: read from the change log instead, from the first
            # revision it has not taken (the buffer only ever holds whole revisions).
            sub.synced = False
            sub.buffer.clear()
        else:
            for ev in mine:
                if not sub.prev_kv:
                    ev = _without_prev(ev)
                sub.buffer.append(ev)
        sub.wake.set()

    async def next_events(self, sub: Subscription, limit: int = READ_LIMIT
                          ) -> list[kv_pb2.Event]:
        """The watcher's next events, in order (at least one revision's worth; waits for
        changes). Raises MvccError when compaction removed history it still needs, and
        returns [] once it is unsubscribed."""
        while not sub.closed:
            if sub.buffer:
                return self._take(sub, limit)
            if not sub.synced:
                events, nxt = await self._read(self.store.events, sub.next_rev, sub.key,
                                               sub.range_end, prev_kv=sub.prev_kv,
                                               limit=limit)
                if sub.closed:
                    return []
                if sub.synced:  # (not while we read: only this task syncs it)
                    continue
                sub.next_rev = max(sub.next_rev, nxt)
                if nxt > self.published:
                    sub.synced = True  # later changes come from publish
                if events:
                    return events
                continue
            sub.wake.clear()
            await sub.wake.wait()
        return []

    @staticmethod
    def _take(sub: Subscription, limit: int) -> list[kv_pb2.Event]:
        out: list[kv_pb2.Event] = []
        while sub.buffer:
            ev = sub.buffer[0]
            if len(out) >= limit and ev.kv.mod_revision != out[-1].kv.mod_revision:
                break
            out.append(sub.buffer.popleft())
        sub.next_rev = out[-1].kv.mod_revision + 1
        return out


def _without_prev(ev: kv_pb2.Event) -> kv_pb2.Event:
    if not ev.HasField("prev_kv"):
        return ev
    copy = kv_pb2.Event()
    copy.CopyFrom(ev)
    copy.ClearField("prev_kv")
    return copy
