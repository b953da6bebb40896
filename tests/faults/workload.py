"""Concurrent clients that record every operation for the linearizability checker.

Each logical client is a thread with its own :class:`KVClient` (its own session and
write ids) and does one operation at a time on a small key set, so that operations
on a key overlap and the checker has something to decide. How an operation is
recorded follows what the client's error says it guarantees:

- ok: the output the store answered;
- fail: only when ``maybe_applied`` is False (the write certainly had no effect);
- unknown: everything else, e.g. a write that timed out may or may not have applied.

After an unknown outcome the thread continues as a new process id: the old
operation may still take effect at any later time, so in the history it stays
open forever, and a process has at most one open operation.

Stale reads (served from one node's local state) promise less, so they are kept
out of the history and checked for their own promise by :func:`check_stale_reads`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvstore.client import KVClient, KVError
from kvstore.lincheck import HistoryRecorder, Operation, Status
from tests.faults.etcd_client import EtcdApiClient

# Operation mix: linearizable reads, puts, compare-and-swaps, deletes; the rest stale reads.
MIX: tuple[tuple[str, float], ...] = (
    ("read", 0.35), ("write", 0.25), ("cas", 0.20), ("delete", 0.10), ("stale", 0.10),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class StaleRead:
    """A stale read as one node answered it, with the interval it happened in."""

    node: str
    key: str
    value: str | None
    applied_index: int
    call: float
    ret: float


@dataclass
class WorkloadStats:
    by_status: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # errors that are not KVErrors

    def count(self, what: str) -> None:
        self.by_status[what] = self.by_status.get(what, 0) + 1


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")


class Workload:
    """``clients`` threads doing random operations on ``keys`` until :meth:`stop`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        seed: int,
        clients: int,
        keys: int,
        recorder: HistoryRecorder,
        op_timeout: float,
        attempt_timeout: float,
        api: str = "native",
    ) -> None:
        if api not in ("native", "etcd"):
            raise ValueError(f"api must be native or etcd, got {api!r}")
        self.api = api
        self.endpoints = list(endpoints)
        self.seed = seed
        self.keys = [f"k{i}" for i in range(keys)]
        self.recorder = recorder
        self.op_timeout = op_timeout
        self.attempt_timeout = attempt_timeout
        self.stale_reads: list[StaleRead] = []
        self.stats = WorkloadStats()
        self._clients = clients
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        for i in range(self._clients):
            thread = threading.Thread(
                target=self._client, args=(i,), name=f"client-{i}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float) -> list[str]:
        """Ask every client to finish its current operation; returns the ones that hung."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]

    # -- one logical client

    def _client(self, i: int) -> None:
        rng = random.Random(f"client-{self.seed}-{i}")
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        # kvstore's own client, or one speaking etcd's API (tests/faults/etcd_client.py).
        make = KVClient if self.api == "native" else EtcdApiClient
        client = make(
            self.endpoints,
            timeout=self.op_timeout,
            attempt_timeout=self.attempt_timeout,
            rng=random.Random(rng.random()),
        )
        # One client per node for stale reads (a stale read goes to the first endpoint).
        stale = {ep: make([ep], timeout=1.0, attempt_timeout=1.0) for ep in self.endpoints}
        generation = 0
        seq = 0
        known: dict[str, str | None] = {}  # last value this client saw per key
        try:
            while not self._stop.is_set():
                kind = rng.choices(kinds, weights)[0]
                key = rng.choice(self.keys)
                if kind == "stale":
                    self._stale_read(stale[rng.choice(self.endpoints)], key)
                    continue
                seq += 1
                value = f"c{i}-{seq}"
                process = f"c{i}.{generation}"
                if self._one(client, process, kind, key, value, known, rng) is Status.UNKNOWN:
                    generation += 1
        except Exception as exc:  # a harness bug must not pass silently as a quiet client
            with self._lock:
                self.stats.unexpected.append(f"client {i} died: {exc!r}")
        finally:
            client.close()
            for c in stale.values():
                c.close()

    def _one(
        self,
        client: KVClient | EtcdApiClient,
        process: str,
        kind: str,
        key: str,
        value: str,
        known: dict[str, str | None],
        rng: random.Random,
    ) -> Status:
        rec = self.recorder
        if kind == "read":
            handle = rec.invoke(process, key, "read")
        elif kind == "write":
            handle = rec.invoke(process, key, "write", value=value)
        elif kind == "delete":
            handle = rec.invoke(process, key, "delete")
        else:
            # Usually expect what this client last saw (so that swaps succeed), sometimes
            # absent, so that both branches of a cas get exercised.
            expected = known.get(key) if rng.random() < 0.8 else None
            handle = rec.invoke(process, key, "cas", value=value, expected=expected)
        try:
            if kind == "read":
                got = _text(client.get(key))
                rec.ok(handle, got)
                known[key] = got
            elif kind == "write":
                client.put(key, value)
                rec.ok(handle)
                known[key] = value
            elif kind == "delete":
                rec.ok(handle, client.delete(key))
                known[key] = None
            else:
                swapped = client.cas(key, expected, value)
                rec.ok(handle, swapped)
                if swapped:
                    known[key] = value
            status = Status.OK
        except KVError as exc:
            if kind == "read" or not exc.maybe_applied:
                rec.fail(handle)
                status = Status.FAIL
            else:
                rec.unknown(handle)
                status = Status.UNKNOWN
        except Exception as exc:
            # Not a client error: we cannot know what happened, so never claim "not applied".
            rec.unknown(handle)
            status = Status.UNKNOWN
            with self._lock:
                self.stats.unexpected.append(f"{kind} {key}: {exc!r}")
        with self._lock:
            self.stats.count(f"{kind}:{status.value}")
        return status

    def _stale_read(self, client: KVClient | EtcdApiClient, key: str) -> None:
        call = self.recorder.clock()  # the history's clock, so the two can be compared
        try:
            result = client.get_result(key, stale=True)
        except KVError:
            with self._lock:
                self.stats.count("stale:fail")
            return
        ret = self.recorder.clock()
        read = StaleRead(result.node, key, _text(result.value), result.applied_index, call, ret)
        with self._lock:
            self.stale_reads.append(read)
            self.stats.count("stale:ok")


def final_reads(
    endpoints: Sequence[str], keys: Sequence[str], recorder: HistoryRecorder, timeout: float
) -> list[str]:
    """One linearizable read of every key, recorded in the history; returns keys never read.

    Reads at the end make the checker prove that every acknowledged write survived:
    a lost write would leave the final value unexplainable.
    """
    missing: list[str] = []
    deadline = time.monotonic() + timeout
    with KVClient(endpoints, timeout=5.0, attempt_timeout=2.0) as client:
        for key in keys:
            while True:
                handle = recorder.invoke("final", key, "read")
                try:
                    recorder.ok(handle, _text(client.get(key)))
                    break
                except KVError:
                    recorder.fail(handle)
                    if time.monotonic() >= deadline:
                        missing.append(key)
                        break
    return missing


def check_stale_reads(reads: Sequence[StaleRead], operations: Sequence[Operation]) -> list[str]:
    """Check what a stale read promises; returns one line per violation.

    - It shows only values that some client had already tried to write (no invented or
      corrupted values): the value's write or cas was invoked before the read returned.
    - Per node it never goes back in time: a read that starts after another read on the
      same node has returned reports an applied index at least as high. (The applied
      index is durable with the state, so this holds across restarts too.)
    - The same applied index means the same state, on every node (Raft's state machine
      safety: only committed entries are applied, and they are the same everywhere), so
      two reads of one key at one index see the same value, whichever nodes served them.
    """
    problems: list[str] = []
    first_write: dict[tuple[str, object], float] = {}
    for op in operations:
        if op.kind not in ("write", "cas") or op.status is Status.FAIL:
            continue  # a failed write certainly did not apply
        if op.kind == "cas" and op.status is Status.OK and op.output is False:
            continue  # nor did a cas that answered "no swap"
        k = (str(op.key), op.value)
        first_write[k] = min(first_write.get(k, op.call), op.call)
    for r in reads:
        if r.value is not None:
            written = first_write.get((r.key, r.value))
            if written is None or written > r.ret:
                problems.append(
                    f"stale read on {r.node} of {r.key} returned {r.value!r}, "
                    f"which no client had tried to write by then"
                )
    by_node: dict[str, list[StaleRead]] = {}
    for r in reads:
        by_node.setdefault(r.node, []).append(r)
    for node, node_reads in sorted(by_node.items()):
        finished = sorted(node_reads, key=lambda r: r.ret)
        j = 0
        high: StaleRead | None = None
        for r in sorted(node_reads, key=lambda r: r.call):
            while j < len(finished) and finished[j].ret < r.call:
                if high is None or finished[j].applied_index > high.applied_index:
                    high = finished[j]
                j += 1
            if high is not None and r.applied_index < high.applied_index:
                problems.append(
                    f"stale reads on {node} went back in time: applied index "
                    f"{high.applied_index} (returned at {high.ret:.3f}) then "
                    f"{r.applied_index} (called at {r.call:.3f})"
                )
    seen: dict[tuple[str, int], StaleRead] = {}
    for r in reads:
        first = seen.setdefault((r.key, r.applied_index), r)
        if first.value != r.value:
            problems.append(
                f"stale reads of {r.key} at applied index {r.applied_index} saw "
                f"{first.value!r} on {first.node} and {r.value!r} on {r.node}"
            )
    return problems
