"""NodeDriver: the one asyncio task that owns the Raft core and carries out its Readys.

Each loop turn: take every message, proposal and read request that arrived since the last
turn, feed them to the core in one go (so all proposals of a turn become one append, one
fsync and one message per follower), then carry out the Ready: a leader sends its appends
first and persists in parallel; everyone else persists first. Persisting and applying
committed entries is one LMDB transaction, run in a worker thread so the event loop keeps
accepting requests meanwhile (they form the next batch).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvstore.raft.core import RaftConfig
from kvstore.raft.errors import NotLeader
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import LogStorage
from kvstore.raft.types import Entry, HardState, Message, MessageType, Ready, Role, SnapshotMeta
from kvstore.state.commands import ApplyResult
from kvstore.storage import snapshot_file
from kvstore.storage.errors import StorageError

log = logging.getLogger(__name__)


class NodeStore(LogStorage, Protocol):
    def persist_and_apply(
        self, hard_state: HardState | None, entries: tuple[Entry, ...], committed: tuple[Entry, ...]
    ) -> list[ApplyResult]: ...

    def applied_index(self) -> int: ...

    def compact(self, upto: int) -> None: ...

    def write_snapshot(self, path: str) -> SnapshotMeta: ...

    def install_snapshot(self, data: bytes, hard_state: HardState | None) -> SnapshotMeta: ...


SendSnapshot = Callable[[str, str, int], Awaitable[None]]  # (peer, file path, term)


class LeadershipLost(Exception):
    """The request was accepted by a leader that lost its role before answering; a write
    may or may not be applied (the client retries it with the same write id)."""


class StaleRequest(Exception):
    """The write id is older than what its session still remembers."""


class Settable(Protocol):
    """What a waiter must offer: an asyncio.Future, or the simulator's promise."""

    def done(self) -> bool: ...

    def set_result(self, result: ApplyResult) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


def resolve_applied(
    waiting: dict[int, tuple[int, Settable]],
    committed: Sequence[Entry],
    results: Sequence[ApplyResult],
) -> None:
    """Answer the proposals waiting on `committed` entries, matched by (index, term) —
    never by order: an entry replaced after a leader change fails its waiter."""
    by_index = {r.index: r for r in results}
    for e in committed:
        entry_waiter = waiting.pop(e.index, None)
        if entry_waiter is None:
            continue
        term, fut = entry_waiter
        if fut.done():
            continue
        result = by_index.get(e.index)
        if e.term != term or result is None:
            fut.set_exception(LeadershipLost("the entry was replaced after a leader change"))
        elif result.stale:
            fut.set_exception(StaleRequest("write id older than its session remembers"))
        else:
            fut.set_result(result)


@dataclass
class _Proposal:
    data: bytes
    future: asyncio.Future[ApplyResult]


class NodeDriver:
    def __init__(
        self,
        node_id: str,
        voters: Iterable[str],
        store: NodeStore,
        send: Callable[[Iterable[Message]], None],
        rng: random.Random,
        tick_seconds: float = 0.05,
        election_ticks: int = 6,
        snapshot_dir: str = "",
        snapshot_entries: int = 10_000,
        send_snapshot: SendSnapshot | None = None,
        resync_marker: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self._send = send
        self.tick_seconds = tick_seconds
        # Compact once this many applied entries are in the log, keeping a fifth of them
        # as a tail so that briefly lagging followers catch up from the log, not a snapshot.
        self.snapshot_entries = snapshot_entries
        self._snapshot_dir = snapshot_dir
        self._send_snapshot = send_snapshot
        self._snapshots_out: dict[str, asyncio.Task[None]] = {}
        self._snapshot_reports: list[tuple[str, int | None]] = []
        self._staged: dict[SnapshotMeta, bytes] = {}
        self._unreachable: list[str] = []
        cfg = RaftConfig(
            node_id=node_id,
            voters=tuple(voters),
            election_ticks=election_ticks,
            applied=store.applied_index(),
            passive_until_contact=resync_marker is not None,
        )
        self._resync_marker = resync_marker
        self.raw = RawNode(cfg, store, rng, logger=log.info)
        self.role = Role.FOLLOWER
        self.leader = ""
        self.applied_index = store.applied_index()
        self._inbox: list[Message] = []
        self._proposals: list[_Proposal] = []
        self._read_requests: list[asyncio.Future[int]] = []
        self._ticks_due = 0
        self._wake = asyncio.Event()
        self._stopping = False
        # Futures of entries proposed by us as leader, keyed by index (never by order).
        self._waiting_entries: dict[int, tuple[int, asyncio.Future[ApplyResult]]] = {}
        self._read_ids = itertools.count(1)
        self._waiting_read_ids: dict[int, asyncio.Future[int]] = {}
        self._waiting_apply: list[tuple[int, asyncio.Future[int]]] = []

    # -- inputs (called from gRPC handlers on the same event loop) ------------------------

    def deliver(self, msg: Message) -> None:
        self._inbox.append(msg)
        self._wake.set()

    def propose(self, data: bytes) -> asyncio.Future[ApplyResult]:
        """Queue a command for the next batch; the future resolves once it is applied."""
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        if self.role != Role.LEADER:
            fut.set_exception(NotLeader(self.leader))
            return fut
        self._proposals.append(_Proposal(data, fut))
        self._wake.set()
        return fut

    def read_index(self) -> asyncio.Future[int]:
        """A future for a linearizable read point: resolves once this node has applied
        through an index the leader confirmed after the request arrived."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.role != Role.LEADER:
            fut.set_exception(NotLeader(self.leader))
            return fut
        self._read_requests.append(fut)
        self._wake.set()
        return fut

    def report_unreachable(self, peer: str) -> None:
        """The transport lost messages to `peer` (called on the event loop)."""
        if peer not in self._unreachable:
            self._unreachable.append(peer)
            self._wake.set()

    def deliver_snapshot(self, src: str, term: int, data: bytes) -> None:
        """A complete snapshot arrived from `src` (leader of `term`); raises ValueError if
        it is damaged. The core decides whether to install it."""
        try:
            header, _ = snapshot_file.read(data)
        except StorageError as err:
            raise ValueError(f"snapshot from {src} rejected: {err}") from None
        meta = SnapshotMeta(header.index, header.term)
        self._staged[meta] = data
        self.deliver(Message(MessageType.SNAP, src, self.node_id, term,
                             log_term=meta.term, index=meta.index))

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            self._ticks_due += 1
            self._wake.set()

    async def run(self) -> None:
        ticker = asyncio.create_task(self._ticker(), name="raft-ticker")
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                self._feed_inputs()
                while self.raw.has_ready():
                    rd = self.raw.ready()
                    await self._carry_out(rd)
                    self.raw.advance(rd)
                    if self._resync_marker is not None and not self.raw.raft.passive:
                        # A leader reached us and what it told us is on disk: from now on
                        # the data dir is an ordinary member's.
                        os.unlink(self._resync_marker)
                        self._resync_marker = None
                await self._maybe_compact()
        finally:
            ticker.cancel()
            for task in self._snapshots_out.values():
                task.cancel()
            self._fail_all(LeadershipLost("node is shutting down"))

    def _feed_inputs(self) -> None:
        raw = self.raw
        ticks, self._ticks_due = self._ticks_due, 0
        for _ in range(min(ticks, 3)):  # after a stall, don't fire a burst of elections
            raw.tick()
        msgs, self._inbox = self._inbox, []
        for m in msgs:
            raw.step(m)
        reports, self._snapshot_reports = self._snapshot_reports, []
        for peer, index in reports:
            raw.report_snapshot(peer, index)
        lost, self._unreachable = self._unreachable, []
        for peer in lost:
            raw.report_unreachable(peer)
        props, self._proposals = self._proposals, []
        props = [p for p in props if not p.future.done()]
        if props:
            try:
                first, term = raw.propose([p.data for p in props])
            except NotLeader as err:
                for p in props:
                    p.future.set_exception(NotLeader(err.leader))
            else:
                for i, p in enumerate(props):
                    self._waiting_entries[first + i] = (term, p.future)
        reads, self._read_requests = self._read_requests, []
        for fut in reads:
            if fut.done():
                continue
            rid = next(self._read_ids)
            try:
                raw.read_index(rid)
            except NotLeader as err:
                fut.set_exception(NotLeader(err.leader))
            else:
                self._waiting_read_ids[rid] = fut

    async def _carry_out(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
        messages = [m for m in rd.messages if m.type != MessageType.SNAP]
        for m in rd.messages:
            if m.type == MessageType.SNAP:
                self._start_snapshot(m.dst, m.term)
        if rd.send_before_persist and messages:
            self._send(messages)
        results: list[ApplyResult] = []
        hard_state = rd.hard_state
        if rd.snapshot is not None:
            data = self._staged.pop(rd.snapshot)
            await asyncio.to_thread(self.store.install_snapshot, data, hard_state)
            log.info("installed snapshot at index %d (term %d)", rd.snapshot.index,
                     rd.snapshot.term)
            self.applied_index = rd.snapshot.index
            hard_state = None
        for meta in [m for m in self._staged if m.index <= self.applied_index]:
            del self._staged[meta]  # superseded: we are already past it
        if hard_state is not None or rd.entries or rd.committed:
            # Fail-stop: an exception here (disk error) propagates and ends the node.
            results = await asyncio.to_thread(
                self.store.persist_and_apply, hard_state, rd.entries, rd.committed
            )
        if not rd.send_before_persist and messages:
            self._send(messages)
        if rd.committed:
            self.applied_index = rd.committed[-1].index
            self._resolve_applied(rd.committed, results)
        for rs in rd.read_states:
            fut = self._waiting_read_ids.pop(rs.request_id, None)
            if fut is not None and not fut.done():
                self._waiting_apply.append((rs.index, fut))
        for rid in rd.dropped_reads:
            fut = self._waiting_read_ids.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(LeadershipLost("leadership lost before the read was confirmed"))
        self._release_reads()

    def _resolve_applied(self, committed: tuple[Entry, ...], results: list[ApplyResult]) -> None:
        resolve_applied(self._waiting_entries, committed, results)

    # -- compaction and snapshots --------------------------------------------------------

    async def _maybe_compact(self) -> None:
        first = self.store.first_index()
        if self.applied_index - first + 1 < self.snapshot_entries:
            return
        upto = self.applied_index - self.snapshot_entries // 5
        if upto >= first:
            await asyncio.to_thread(self.store.compact, upto)
            log.info("compacted the log up to index %d", upto)

    def _start_snapshot(self, peer: str, term: int) -> None:
        if self._send_snapshot is None:
            self._snapshot_reports.append((peer, None))
            return
        running = self._snapshots_out.get(peer)
        if running is not None and not running.done():
            return
        self._snapshots_out[peer] = asyncio.create_task(self._stream_snapshot(peer, term))

    async def _stream_snapshot(self, peer: str, term: int) -> None:
        """Write our state to a file (one LMDB read transaction) and stream it to `peer`;
        tell the core how it went."""
        assert self._send_snapshot is not None
        path = os.path.join(self._snapshot_dir, f"snapshot-to-{peer}.tmp")
        index: int | None = None
        try:
            meta = await asyncio.to_thread(self.store.write_snapshot, path)
            log.info("sending snapshot at index %d to %s", meta.index, peer)
            await self._send_snapshot(peer, path, term)
            index = meta.index
        except Exception as err:  # any failure: the core retries later
            log.warning("snapshot to %s failed: %s", peer, err)
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._snapshot_reports.append((peer, index))
        self._wake.set()

    def _release_reads(self) -> None:
        if not self._waiting_apply:
            return
        still = []
        for index, fut in self._waiting_apply:
            if fut.done():
                continue
            if index <= self.applied_index:
                fut.set_result(index)
            else:
                still.append((index, fut))
        self._waiting_apply = still

    def _on_soft_state(self, role: Role, leader: str) -> None:
        was_leader = self.role == Role.LEADER
        self.role, self.leader = role, leader
        log.info("%s is now %s (leader %s)", self.node_id, role.label, leader or "unknown")
        if was_leader and role != Role.LEADER:
            self._fail_all(LeadershipLost("leadership lost; the write may or may not apply"))

    def _fail_all(self, err: Exception) -> None:
        for _, fut in self._waiting_entries.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting_entries.clear()
        for p in self._proposals:
            if not p.future.done():
                p.future.set_exception(err)
        self._proposals.clear()
        for fut in [*self._read_requests, *self._waiting_read_ids.values(),
                    *(f for _, f in self._waiting_apply)]:
            if not fut.done():
                fut.set_exception(err)
        self._read_requests.clear()
        self._waiting_read_ids.clear()
        self._waiting_apply.clear()

    # -- views ------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        r = self.raw.raft
        peers = {}
        if r.role == Role.LEADER:
            peers = {p: (pr.match, pr.next) for p, pr in r.prs.items() if p != r.id}
        return {
            "role": r.role.label,
            "term": r.term,
            "commit_index": r.log.committed,
            "applied_index": self.applied_index,
            "leader_id": r.leader,
            "first_log_index": r.log.first_index(),
            "last_log_index": r.log.last_index(),
            "snapshot_index": r.log.first_index() - 1,
            "peers": peers,
        }
