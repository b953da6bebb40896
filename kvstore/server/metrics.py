"""Prometheus metrics of one node, named as etcd names them (prefix ``kvstore_``).

Why two kinds of series:
  * Gauges that describe the node's state right now (leader, commit and applied indexes,
    follower lag, database size, watchers, leases, revisions) are computed when scraped,
    by NodeCollector reading the driver's Status and the store. Nothing is updated on the
    hot path for them, and a scrape costs one Status, a few LMDB read transactions and a
    stat of the database file (the lease count scans the lease table).
  * Counters and histograms of events the state does not remember (leader changes,
    failed proposals, durable-write durations, snapshots, log compactions, heartbeat round
    trips) are observed by NodeMetrics, which NodeDriver calls through its optional
    ``metrics`` hook (kvstore/server/node.py; None costs one attribute test per event).
    Counters are plain ints read at scrape time; histograms are prometheus_client's
    (thread-safe: the durable write is timed in the worker thread that runs it).

Every node has its own CollectorRegistry rather than prometheus_client's global one, so
that several nodes can run in one process (tests) and nothing else a library registers
globally leaks into a node's /metrics.

The series and what they measure are listed in README ("Metrics and health").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvstore.raft.rawnode import Status
from kvstore.raft.types import Message, MessageType, Role

# etcd's buckets for disk durations: prometheus.ExponentialBuckets(0.001, 2, 14), 1 ms..8 s.
DISK_BUCKETS = tuple(0.001 * 2**k for k in range(14))
# etcd's buckets for peer round trips: ExponentialBuckets(0.0001, 2, 16), 0.1 ms..3.3 s.
RTT_BUCKETS = tuple(0.0001 * 2**k for k in range(16))
# Unanswered heartbeats remembered per peer (more means the peer is not answering).
MAX_OUTSTANDING_HEARTBEATS = 64
# A heartbeat unanswered for this long is forgotten, so a peer coming back after an outage
# does not record its downtime as one round trip.
HEARTBEAT_ANSWER_LIMIT = 10.0


class MetricsStore(Protocol):
    """What the collector reads of the node's store (LmdbNodeStore offers all of it)."""

    def size_bytes(self) -> int: ...

    def file_bytes(self) -> int: ...

    def revisions(self) -> tuple[int, int]: ...

    def leases(self) -> list[tuple[int, int]]: ...


class NodeMetrics:
    """The event counters and histograms of one node, and its registry.

    Implements kvstore.server.node.DriverMetrics; every hook is O(1) and runs on the event
    loop except ``durable_write``, which the driver calls from its write thread."""

    def __init__(self, node_id: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry()
        self.wal_fsync = Histogram(
            "kvstore_disk_wal_fsync_duration_seconds",
            "Duration of the durable write of a Raft Ready: one LMDB write transaction that "
            "appends the log entries, records the hard state, applies the committed entries "
            "and commits with one fsync. The log (etcd's WAL) and the state (etcd's backend) "
            "are the same transaction, so kvstore_disk_backend_commit_duration_seconds "
            "observes the same durations.",
            buckets=DISK_BUCKETS, registry=self.registry)
        self.backend_commit = Histogram(
            "kvstore_disk_backend_commit_duration_seconds",
            "Duration of the durable write of a Raft Ready (the same LMDB transaction as "
            "kvstore_disk_wal_fsync_duration_seconds: log append, apply and one fsync).",
            buckets=DISK_BUCKETS, registry=self.registry)
        self.peer_rtt = Histogram(
            "kvstore_network_peer_round_trip_time_seconds",
            "Leader only: time from handing a Raft heartbeat for peer To to the transport to "
            "receiving its answer, which includes the peer's queueing and the turn of its "
            "event loop that answers it.",
            ["To"], buckets=RTT_BUCKETS, registry=self.registry)
        self.round_trips = PeerRoundTrips(self.peer_rtt, clock)
        self.leader_changes = 0
        self.proposals_pending = 0
        self.proposals_failed = 0
        self.snapshots_sent = 0
        self.snapshot_send_failures = 0
        self.snapshots_received = 0
        self.snapshots_installed = 0
        self.log_compactions = 0
        self._leader = ""

    # -- DriverMetrics hooks ------------------------------------------------------------

    def leader_seen(self, leader: str) -> None:
        """A Ready's soft state named ``leader`` ("" if none). Counted as etcd counts
        leader_changes_seen: every time a leader is known and differs from the last one
        seen (so A, none, A counts twice)."""
        if leader and leader != self._leader:
            self.leader_changes += 1
        self._leader = leader

    def proposal(self, fut: asyncio.Future[Any]) -> None:
        """A client write was proposed: pending until its future settles; failed if it
        settles with an error (not leader, leadership lost, stale, refused by an alarm)."""
        self.proposals_pending += 1
        fut.add_done_callback(self._proposal_done)

    def _proposal_done(self, fut: asyncio.Future[Any]) -> None:
        self.proposals_pending -= 1
        if not fut.cancelled() and fut.exception() is not None:
            self.proposals_failed += 1

    def durable_write(self, seconds: float) -> None:
        self.wal_fsync.observe(seconds)
        self.backend_commit.observe(seconds)

    def snapshot_sent(self, ok: bool) -> None:
        if ok:
            self.snapshots_sent += 1
        else:
            self.snapshot_send_failures += 1

    def snapshot_received(self) -> None:
        self.snapshots_received += 1

    def snapshot_installed(self) -> None:
        self.snapshots_installed += 1

    def log_compacted(self) -> None:
        self.log_compactions += 1

    def counters(self) -> Iterator[Metric]:
        """The event counters as metric families (for NodeCollector)."""
        yield _counter("kvstore_server_leader_changes_seen_total",
                       "Leader changes seen by this node.", self.leader_changes)
        yield _counter("kvstore_server_proposals_failed_total",
                       "Client writes proposed here that failed (not leader, leadership lost "
                       "before they applied, refused by an alarm, stale or expired session).",
                       self.proposals_failed)
        yield _gauge("kvstore_server_proposals_pending",
                     "Client writes proposed here and not yet answered.",
                     self.proposals_pending)
        yield _counter("kvstore_server_snapshots_sent_total",
                       "Snapshots this node streamed to a follower completely.",
                       self.snapshots_sent)
        yield _counter("kvstore_server_snapshot_send_failures_total",
                       "Snapshots to a follower that failed (written or streamed).",
                       self.snapshot_send_failures)
        yield _counter("kvstore_server_snapshots_received_total",
                       "Complete, intact snapshots received from a leader.",
                       self.snapshots_received)
        yield _counter("kvstore_server_snapshots_installed_total",
                       "Snapshots installed (this node's state replaced by a leader's).",
                       self.snapshots_installed)
        yield _counter("kvstore_server_log_compactions_total",
                       "Compactions of the Raft log (entries before an applied index "
                       "dropped).", self.log_compactions)


class PeerRoundTrips:
    """Heartbeat round trips per peer, from the leader's side.

    A heartbeat answer carries nothing that names the heartbeat it answers, so the answers
    are matched to the heartbeats in order (one ordered stream each way): each peer has a
    queue of send times, an answer takes the oldest. When the transport reports messages
    to a peer lost, its queue is cleared, and entries older than HEARTBEAT_ANSWER_LIMIT
    are dropped, so a lost heartbeat does not stretch the following round trips."""

    def __init__(self, histogram: Histogram, clock: Callable[[], float] = time.monotonic) -> None:
        self._histogram = histogram
        self._clock = clock
        self._sent: dict[str, deque[float]] = {}

    def sent(self, messages: Iterable[Message]) -> None:
        now: float | None = None
        for m in messages:
            if m.type == MessageType.HEARTBEAT:
                now = self._clock() if now is None else now
                queue = self._sent.setdefault(m.dst, deque(maxlen=MAX_OUTSTANDING_HEARTBEATS))
                queue.append(now)

    def received(self, msg: Message) -> None:
        if msg.type != MessageType.HEARTBEAT_RESP:
            return
        queue = self._sent.get(msg.src)
        if not queue:
            return
        now = self._clock()
        while queue:
            elapsed = now - queue.popleft()
            if elapsed <= HEARTBEAT_ANSWER_LIMIT:
                self._histogram.labels(msg.src).observe(elapsed)
                return

    def lost(self, peer: str) -> None:
        queue = self._sent.get(peer)
        if queue:
            queue.clear()

    def wrap_send(self, send: Callable[[Iterable[Message]], None]
                  ) -> Callable[[Iterable[Message]], None]:
        """``send`` that also notes the heartbeats it carries."""

        def timed_send(messages: Iterable[Message]) -> None:
            messages = tuple(messages)
            self.sent(messages)
            send(messages)

        return timed_send

    def wrap_deliver(self, deliver: Callable[[Message], None]) -> Callable[[Message], None]:
        """``deliver`` that also notes heartbeat answers."""

        def timed_deliver(msg: Message) -> None:
            self.received(msg)
            deliver(msg)

        return timed_deliver


class NodeCollector(Collector):
    """The node's gauges, computed at scrape time, plus NodeMetrics' counters."""

    def __init__(
        self,
        metrics: NodeMetrics,
        status: Callable[[], Status],
        store: MetricsStore,
        *,
        watchers: Callable[[], int] = lambda: 0,
        peer_drops: Callable[[], Mapping[str, int]] = dict,
        quota_bytes: int | None = None,
    ) -> None:
        self._metrics = metrics
        self._status = status
        self._store = store
        self._watchers = watchers
        self._peer_drops = peer_drops
        self._quota_bytes = quota_bytes

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        store = self._store
        server_id = GaugeMetricFamily("kvstore_server_id", "The node's id (value always 1).",
                                      labels=["server_id"])
        server_id.add_metric([self._metrics.node_id], 1)
        yield server_id
        yield _gauge("kvstore_server_has_leader",
                     "1 if this node knows a leader of its current term, else 0.",
                     1 if st.leader else 0)
        yield _gauge("kvstore_server_is_leader", "1 if this node is the leader, else 0.",
                     1 if st.role == Role.LEADER else 0)
        yield _gauge("kvstore_server_proposals_committed_total",
                     "The commit index this node knows (as etcd: a gauge).", st.commit)
        yield _gauge("kvstore_server_proposals_applied_total",
                     "The index of the last log entry applied to this node's state.",
                     st.applied)
        lag = GaugeMetricFamily(
            "kvstore_server_follower_lag_entries",
            "Leader only: the leader's last log index minus the follower's match index "
            "(entries the follower has not acknowledged).", labels=["follower"])
        for follower, progress in sorted(st.progress.items()):
            if follower != st.id:
                lag.add_metric([follower], max(0, st.last_index - progress.match))
        yield lag
        yield from self._metrics.counters()
        yield _gauge("kvstore_server_watchers", "Watchers registered on this node.",
                     self._watchers())
        yield _gauge("kvstore_server_leases",
                     "Leases in this node's applied state (every member holds all of them).",
                     len(store.leases()))
        if self._quota_bytes is not None:
            yield _gauge("kvstore_server_quota_backend_bytes",
                         "The NOSPACE alarm is raised past this many bytes in use "
                         "(--quota-backend-bytes).", self._quota_bytes)
        yield _gauge("kvstore_mvcc_db_total_size_in_bytes",
                     "Size of the LMDB database file on disk (etcd's dbSize).",
                     store.file_bytes())
        yield _gauge("kvstore_mvcc_db_total_size_in_use_in_bytes",
                     "Bytes of database pages holding data (what the quota is checked "
                     "against).", store.size_bytes())
        current, compacted = store.revisions()
        yield _gauge("kvstore_mvcc_current_revision", "The store's current revision.", current)
        yield _gauge("kvstore_mvcc_compact_revision",
                     "The revision the key history was last compacted to.", compacted)
        drops = CounterMetricFamily(
            "kvstore_network_peer_sent_failures",
            "Batches of Raft messages to peer To that the transport dropped (peer "
            "unreachable, or its queue full).", labels=["To"])
        for peer, n in sorted(self._peer_drops().items()):
            drops.add_metric([peer], n)
        yield drops


def node_registry(metrics: NodeMetrics, collector: NodeCollector) -> CollectorRegistry:
    """The node's registry: NodeMetrics' histograms and the scrape-time collector."""
    metrics.registry.register(collector)
    return metrics.registry


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
