"""The watch hub: one shared read per applied batch for caught-up watchers, history reads
for the others, and nothing lost or repeated when a watcher falls behind and catches up."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.etcdpb import rpc_pb2
from kvstore.raft.types import Entry, HardState
from kvstore.server.watch_hub import WatchHub
from kvstore.state.commands import encode_compact, encode_txn
from kvstore.state.mvcc import MvccError
from kvstore.storage.memory_store import MemoryNodeStore


async def _direct(fn, *args, **kwargs):  # noqa: ANN001, ANN202 - no thread in tests
    return fn(*args, **kwargs)


class Cluster:
    def __init__(self) -> None:
        self.store = MemoryNodeStore(shards=4, vnodes=8)
        self.index = 0

    def put(self, *pairs: tuple[bytes, bytes]) -> None:
        txn = rpc_pb2.TxnRequest()
        for k, v in pairs:
            txn.success.add().request_put.CopyFrom(rpc_pb2.PutRequest(key=k, value=v))
        self.apply(encode_txn(b"", 0, 0, txn))

    def apply(self, data: bytes) -> None:
        self.index += 1
        e = [Entry(term=1, index=self.index, data=data)]
        self.store.persist_and_apply(HardState(term=1, commit=self.index), e, e)


def _revs(events) -> list[tuple[bytes, int]]:  # noqa: ANN001
    return [(e.kv.key, e.kv.mod_revision) for e in events]


def test_synced_watchers_share_one_read_per_batch() -> None:
    async def main() -> None:
        c = Cluster()
        hub = WatchHub(c.store, read=_direct)
        subs = [hub.subscribe(b"a", b"", 0) for _ in range(50)]
        other = hub.subscribe(b"b", b"c", 0, prev_kv=True)
        c.put((b"a", b"1"), (b"b", b"x"))  # revision 2, two keys
        hub.publish()
        c.put((b"b", b"y"))
        hub.publish()
        assert hub.shared_reads == 2
        for s in subs:
            assert _revs(await hub.next_events(s)) == [(b"a", 2)]
        got = await hub.next_events(other)
        assert _revs(got) == [(b"b", 2), (b"b", 3)]
        assert got[1].prev_kv.value == b"x"

    asyncio.run(main())


def test_a_slow_watcher_reads_history_and_loses_nothing() -> None:
    async def main() -> None:
        c = Cluster()
        hub = WatchHub(c.store, max_buffer=5, read=_direct)
        sub = hub.subscribe(b"k", b"l", 0)
        for i in range(12):  # more than the buffer holds: it falls back to history
            c.put((b"k%d" % (i % 3), b"v"))
            hub.publish()
        assert not sub.synced
        seen = []
        while len(seen) < 12:
            seen += await hub.next_events(sub, limit=4)
        assert [r for _, r in _revs(seen)] == list(range(2, 14))
        assert sub.synced  # caught up: back on the shared feed
        c.put((b"k9", b"v"))
        hub.publish()
        assert _revs(await hub.next_events(sub)) == [(b"k9", 14)]

    asyncio.run(main())


def test_start_in_the_past_then_live_and_compaction() -> None:
    async def main() -> None:
        c = Cluster()
        c.put((b"x", b"1"))
        c.put((b"x", b"2"))
        hub = WatchHub(c.store, read=_direct)
        sub = hub.subscribe(b"x", b"", 2)
        assert _revs(await hub.next_events(sub)) == [(b"x", 2), (b"x", 3)]
        c.put((b"x", b"3"))
        hub.publish()
        assert _revs(await hub.next_events(sub)) == [(b"x", 4)]
        c.apply(encode_compact(4))
        late = hub.subscribe(b"x", b"", 3)
        with pytest.raises(MvccError):
            await hub.next_events(late)
        hub.unsubscribe(sub)
        assert await hub.next_events(sub) == []

    asyncio.run(main())
