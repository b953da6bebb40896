"""NodeDriver: the asyncio shell around the node runtime (kvstore.server.runtime).

The rules — batching a turn's inputs, turning a Ready into a plan, answering and failing
waiting requests, compaction, snapshot staging — live in NodeRuntime, which the simulator
drives too. This shell only does I/O: it wakes on input and ticks, carries each plan out
(a leader sends its appends first and persists in parallel; everyone else persists first),
runs the durable write in a worker thread so the event loop keeps accepting requests
meanwhile (they form the next batch), and streams snapshots to followers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from kvstore.raft.rawnode import Status
from kvstore.raft.types import Message, Role, SnapshotMeta
from kvstore.server import trace
from kvstore.server.outcomes import LeadershipLost, SessionExpired, StaleRequest, resolve_applied
from kvstore.server.reconfig import MembershipRefused
from kvstore.server.runtime import NodeRuntime, NodeStore, Plan, execute_write
from kvstore.server.watch_hub import WatchHub
from kvstore.state.commands import ApplyResult
from kvstore.state.membership import Member
from kvstore.storage.errors import OutOfSpaceError
from kvstore.v1 import raft_pb2

log = logging.getLogger(__name__)

__all__ = ["LeadershipLost", "MembershipRefused", "NodeDriver", "NodeStore", "SessionExpired",
           "StaleRequest", "resolve_applied"]


class DriverMetrics(Protocol):
    """Where the driver reports events for metrics (kvstore.server.metrics.NodeMetrics).
    Optional: a driver without one pays one None test per event, and this module does
    not depend on a metrics library."""

    def leader_seen(self, leader: str) -> None: ...

    def proposal(self, fut: asyncio.Future[ApplyResult]) -> None: ...

    def durable_write(self, seconds: float) -> None: ...  # called from the write thread

    def snapshot_sent(self, ok: bool) -> None: ...

    def snapshot_received(self) -> None: ...

    def snapshot_installed(self) -> None: ...

    def log_compacted(self) -> None: ...


class SnapshotSource(NodeStore, Protocol):
    """A store that can also write its state to a snapshot file (to stream to a peer)."""

    def write_snapshot(self, path: str) -> SnapshotMeta: ...


OUT_OF_SPACE_RETRY_SECONDS = 1.0
SendSnapshot = Callable[[str, str, int], Awaitable[None]]  # (peer, file path, term)


def min_lease_ttl(tick_seconds: float, election_ticks: int) -> int:
    """The shortest lease TTL granted: 1.5 longest election timeouts (randomized up to 2x
    election_ticks), at least 2 s (etcd's default minimum), so that keep-alives can cross
    a leader election."""
    return max(2, math.ceil(1.5 * 2 * election_ticks * tick_seconds))


class NodeDriver:
    def __init__(
        self,
        node_id: str,
        voters: Iterable[str],
        store: SnapshotSource,
        send: Callable[[Iterable[Message]], None],
        rng: random.Random,
        tick_seconds: float = 0.05,
        election_ticks: int = 6,
        snapshot_dir: str = "",
        snapshot_entries: int = 10_000,
        send_snapshot: SendSnapshot | None = None,
        resync_marker: str | None = None,
        join_marker: str | None = None,
        quota_bytes: int | None = None,
        metrics: DriverMetrics | None = None,
    ) -> None:
        self.node_id = node_id
        self.metrics = metrics
        self.store = store
        self._send = send
        self.tick_seconds = tick_seconds
        self.election_seconds = election_ticks * tick_seconds  # the shortest election timeout
        self._snapshot_dir = snapshot_dir
        self._send_snapshot = send_snapshot
        self._snapshots_out: dict[str, asyncio.Task[None]] = {}
        self._resync_marker = resync_marker
        self._join_marker = join_marker
        self.runtime = NodeRuntime(
            node_id, voters, store, rng,
            election_ticks=election_ticks,
            snapshot_entries=snapshot_entries,
            can_send_snapshots=send_snapshot is not None,
            resyncing=resync_marker is not None,
            joining=join_marker is not None,
            log=log.info,
            quota_bytes=quota_bytes,
            min_lease_ttl=min_lease_ttl(tick_seconds, election_ticks),
        )
        self._wake = asyncio.Event()
        # Watchers waiting for the store to reach a revision: (revision, future).
        # (revision, 0: current / 1: compacted, future)
        self._revision_waiters: list[tuple[int, int, asyncio.Future[int]]] = []
        # This member's watchers (the Watch service subscribes them).
        self.watch_hub = WatchHub(store)
        self._stopping = False
        self.out_of_space = ""  # the last out-of-space error while a write waits for space
        # Told the applied membership whenever it changes (the shell updates its transport,
        # peer gate and member book).
        self.on_membership: Callable[[list[Member]], None] | None = None
        self._membership_seen = self.runtime.membership_version
        # Proposals that may be answered as soon as their results are computed, before the
        # write applying them commits (see propose and NodeRuntime.answer_early).
        self._early: set[asyncio.Future[ApplyResult]] = set()
        # Done once the write behind answers given early is committed (see settled).
        self._settling: asyncio.Future[None] | None = None

    @property
    def role(self) -> Role:
        return self.runtime.role

    @property
    def leader(self) -> str:
        return self.runtime.leader

    @property
    def applied_index(self) -> int:
        return self.runtime.applied_index

    # -- inputs (called from gRPC handlers on the same event loop) ------------------------

    def deliver(self, msg: Message) -> None:
        if trace.ON:
            trace.event(f"recv {msg.type.name}")
        if self.runtime.deliver(msg):
            self._wake.set()

    def propose(self, data: bytes, *, answer_early: bool = False
                ) -> asyncio.Future[ApplyResult]:
        """Queue a command for the next batch; the future resolves once it is applied —
        with `answer_early`, once its result is computed, while the write applying it may
        still be committing (the entry is committed, so durable on a quorum: see
        NodeRuntime.answer_early). For key-value writes, whose answer is all the client
        sees of them; this node's local reads wait for that write (settled()), so a read
        here after the answer sees the write."""
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        if trace.ON:
            trace.event("propose")
            fut.add_done_callback(lambda _f: trace.event("answered"))
        if answer_early:
            self._early.add(fut)
            fut.add_done_callback(self._early.discard)
        if self.metrics is not None:
            self.metrics.proposal(fut)
        self.runtime.propose(data, fut)
        self._wake.set()
        return fut

    def read_index(self) -> asyncio.Future[int]:
        """A future for a linearizable read point: resolves once this node has applied
        through an index the leader confirmed after the request arrived."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if trace.ON:
            trace.event("read-index")
            fut.add_done_callback(lambda _f: trace.event("read-ready"))
        self.runtime.read_index(fut)
        self._wake.set()
        return fut

    async def change_membership(self, change: raft_pb2.ConfChange) -> list[Member]:
        """Propose one membership change on the leader and wait until it is applied here;
        returns the new membership. Raises NotLeader, MembershipRefused (nothing changed),
        LeadershipLost (it may or may not apply)."""
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self.runtime.propose_conf_change(change, fut)
        self._wake.set()
        result = await fut
        if result.error or result.members is None:
            raise MembershipRefused(result.error or "membership change not applied")
        return list(result.members)

    async def transfer_leadership(self, target: str, timeout: float) -> None:
        """Hand leadership to `target` and wait until it leads. Raises NotLeader,
        MembershipRefused (refused, or not done within `timeout` seconds)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.runtime.transfer_leadership(target, fut)
        self._wake.set()
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise MembershipRefused(f"leadership did not move to {target} within "
                                    f"{timeout:.1f} s", True) from None

    def members(self) -> list[Member]:
        """The applied membership (the bootstrap one until a change or snapshot)."""
        return list(self.runtime.members)

    def removed(self) -> bool:
        return self.runtime.removed()

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew a lease on the leader, counted from the keep-alive's arrival, once a
        ReadIndex round confirmed the leadership (see Lessor.keepalive for why). Returns
        the TTL; raises NotLeader, LeaseNotFound, LeadershipLost."""
        since = self.runtime.lessor.start_keepalive(lease_id)
        await self.read_index()
        return self.runtime.lessor.keepalive(lease_id, since)

    async def settled(self) -> None:
        """Return once no write whose proposals were answered early is still committing:
        a local (serializable) read must not see the state from before a write it may
        have been told about (CONTRACT-NOTES 7: a stale read on the leader sees a put
        once it returned)."""
        while self._settling is not None:
            await asyncio.shield(self._settling)

    async def wait_for_revision(self, revision: int, timeout: float,
                                compacted: bool = False) -> int:
        """The store's current revision (with `compacted`: its compacted revision) once it
        is >= `revision` (at once if it already is), or whatever it is after `timeout`
        seconds. Woken after every applied batch while someone waits: how a member that
        relayed a write from the leader answers only once it applied the write itself."""
        which = 1 if compacted else 0
        current = self.store.revisions()[which]
        if current >= revision:
            return current
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        entry = (revision, which, fut)
        self._revision_waiters.append(entry)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return self.store.revisions()[which]
        finally:
            if entry in self._revision_waiters:
                self._revision_waiters.remove(entry)

    def _wake_watchers(self, revisions: tuple[int, int]) -> None:
        still = []
        for revision, which, fut in self._revision_waiters:
            if revision <= revisions[which]:
                if not fut.done():
                    fut.set_result(revisions[which])
            else:
                still.append((revision, which, fut))
        self._revision_waiters = still

    def report_unreachable(self, peer: str) -> None:
        """The transport lost messages to `peer` (called on the event loop)."""
        self.runtime.report_unreachable(peer)
        self._wake.set()

    def deliver_snapshot(self, src: str, term: int, data: bytes) -> None:
        """A complete snapshot arrived from `src` (leader of `term`); raises ValueError if
        it is damaged. The core decides whether to install it."""
        self.runtime.deliver_snapshot(src, term, data)
        if self.metrics is not None:
            self.metrics.snapshot_received()
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            self.runtime.tick()
            self._wake.set()

    async def run(self) -> None:
        ticker = asyncio.create_task(self._ticker(), name="raft-ticker")
        rt = self.runtime
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                rt.feed()
                while (plan := rt.next_plan()) is not None:
                    if self.metrics is not None and plan.ready.soft_state is not None:
                        self.metrics.leader_seen(plan.ready.soft_state.leader)
                    results = await self._carry_out(plan)
                    rt.finish(plan, results)
                    self._settle()
                    if self.metrics is not None and plan.install is not None:
                        self.metrics.snapshot_installed()
                    if (results or plan.install is not None) and (
                            self.watch_hub.subs or self._revision_waiters):
                        revisions = self.store.revisions()  # one read for both
                        if self.watch_hub.subs:
                            self.watch_hub.publish(revisions[0])
                        if self._revision_waiters:
                            self._wake_watchers(revisions)
                    if rt.membership_version != self._membership_seen:
                        self._membership_seen = rt.membership_version
                        if self.on_membership is not None:
                            self.on_membership(list(rt.members))
                    if rt.join_finished() and self._join_marker is not None:
                        # The leader's state is installed: an ordinary member's data dir.
                        os.unlink(self._join_marker)
                        self._join_marker = None
                    if rt.resync_finished() and self._resync_marker is not None:
                        # A leader reached us and what it told us is on disk: from now on
                        # the data dir is an ordinary member's.
                        os.unlink(self._resync_marker)
                        self._resync_marker = None
                upto = rt.compaction_due()
                if upto is not None:
                    await asyncio.to_thread(self.store.compact, upto)
                    log.info("compacted the log up to index %d", upto)
                    if self.metrics is not None:
                        self.metrics.log_compacted()
        finally:
            ticker.cancel()
            for task in self._snapshots_out.values():
                task.cancel()
            rt.fail_all(LeadershipLost("node is shutting down"))
            self._settle()

    async def _carry_out(self, plan: Plan) -> list[ApplyResult]:
        if trace.ON:
            trace.event("plan")
        if plan.send_now:
            self._send(plan.send_now)
        for peer, term in plan.snapshot_to:
            self._snapshots_out[peer] = asyncio.create_task(self._stream_snapshot(peer, term))
        results: list[ApplyResult] = []
        if plan.needs_write:
            results = await self._write(plan)
        if trace.ON:
            trace.event("write-done")
        if plan.send_after:
            self._send(plan.send_after)
        return results

    def _answer_early(self, plan: Plan, results: list[ApplyResult]) -> None:
        """On the loop, while the plan's write commits in the worker thread."""
        if self.runtime.answer_early(plan, results, self._early.__contains__):
            if self._settling is None:
                self._settling = asyncio.get_running_loop().create_future()

    def _settle(self) -> None:
        if self._settling is not None:
            if not self._settling.done():
                self._settling.set_result(None)
            self._settling = None

    async def _write(self, plan: Plan) -> list[ApplyResult]:
        """The plan's durable write. Fail-stop on a storage error (an exception propagates
        and ends the node), except when the disk or the LMDB map is full: that write
        changed nothing, so it is retried until space is freed while the node keeps
        serving reads and status instead of dying and crash-looping on every restart."""
        delay = OUT_OF_SPACE_RETRY_SECONDS
        while True:
            try:
                results = await asyncio.to_thread(self._execute_write, plan,
                                                  self._early_hook(plan))
            except OutOfSpaceError as err:
                if self._stopping:
                    raise
                self.out_of_space = str(err)
                log.critical("%s; retrying in %.0f s (free disk space; reads keep working, "
                             "writes wait)", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self.out_of_space:
                log.warning("space is available again: writing resumed")
                self.out_of_space = ""
            return results

    def _early_hook(self, plan: Plan) -> Callable[[list[ApplyResult]], None] | None:
        """What the worker thread calls with the results before committing, if any of the
        plan's entries may be answered early."""
        if not self._early or not plan.ready.committed:
            return None
        loop = asyncio.get_running_loop()
        return lambda results: loop.call_soon_threadsafe(self._answer_early, plan, results)

    def _execute_write(self, plan: Plan,
                       on_applied: Callable[[list[ApplyResult]], None] | None = None,
                       ) -> list[ApplyResult]:
        """execute_write, timed for metrics in the worker thread itself, so the duration
        is the write's and not the wait for a thread or for the event loop."""
        if trace.ON:
            trace.event("write-start")
        start = time.perf_counter()
        try:
            results = execute_write(self.store, plan, on_applied)
        finally:
            if trace.ON:
                trace.event("write-end")
        if self.metrics is not None:
            self.metrics.durable_write(time.perf_counter() - start)
        return results

    # -- snapshots ----------------------------------------------------------------------

    async def _stream_snapshot(self, peer: str, term: int) -> None:
        """Write our state to a file (one LMDB read transaction) and stream it to `peer`;
        tell the runtime how it went."""
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
        if self.metrics is not None:  # (not reached when cancelled: the node is stopping)
            self.metrics.snapshot_sent(index is not None)
        self.runtime.snapshot_sent(peer, index)
        self._wake.set()

    # -- views ------------------------------------------------------------------------

    def status(self) -> Status:
        return self.runtime.status()
