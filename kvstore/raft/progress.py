"""The leader's view of one follower's log (thesis 3.5, and etcd's probe/replicate states).

In PROBE the leader sends one append at a time until it finds where the logs match; in
REPLICATE it streams appends optimistically, bounded by `max_inflight` unacknowledged
messages, so several batches are in flight per follower at once (pipelining).
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2  # the follower needs a snapshot; appends wait until it is installed


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "inflight", "max_inflight",
                 "recent_active", "read_ack", "match_at_heartbeat")

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()  # last index of each unacknowledged append
        self.max_inflight = max_inflight
        self.recent_active = False
        self.read_ack = 0  # highest ReadIndex round this peer has answered
        self.match_at_heartbeat = 0  # match when the previous heartbeat answer came in

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self) -> None:
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflight.clear()

    def snapshot_sent(self, index: int) -> None:
        """The snapshot (up to `index`) reached the follower: probe right after it, paused
        until the follower answers (its answer to the SNAP, or a heartbeat)."""
        self.state = ProgressState.PROBE
        self.next = max(self.match, index) + 1
        self.probe_sent = True
        self.inflight.clear()

    def is_paused(self) -> bool:
        if self.state == ProgressState.SNAPSHOT:
            return True
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        return len(self.inflight) >= self.max_inflight

    def sent(self, last_index: int) -> None:
        """Record an append carrying entries up to `last_index`."""
        if self.state == ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """Record that the follower's log matches ours up to `index`; False if stale."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, probe_hint: int) -> bool:
        """Handle a rejected append at `rejected`; False when the rejection is stale."""
        if self.state == ProgressState.SNAPSHOT:
            return False
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, probe_hint + 1), self.match + 1)
        self.probe_sent = False
        return True
