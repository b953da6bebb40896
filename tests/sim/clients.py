"""Simulated clients: the real client core's retry policy, driven by the virtual clock.

kvstore.client._core is sans-I/O: it decides which node to try, how long an attempt may
take, when to back off, which write id a write carries (the same on every retry), and
whether a failed write "may have been applied". The simulated client only performs the I/O
it asks for (an RPC through SimService, or a wait) - exactly what the real KVClient does -
so the simulation tests the real policy, not a copy of it.

A client has one ClientCore (one session at a time, registered with the cluster by its
first write and again after the cluster evicted it; one write-id sequence; one leader guess) and
`concurrency` lanes that call it at the same time, as tasks sharing an AsyncKVClient do;
each lane is one sequential process of the history: invoke, then ok / fail / unknown.
With batching on, calls to the same node that overlap in time leave together in one Batch
RPC, by the real client's coalescing policy (kvstore.client.batching.Coalescer).
A write whose call failed with maybe_applied=True is "unknown" (it may take effect at any
later time, or never); with maybe_applied=False it is "fail" and, as a promise to check,
must never be applied. Stale reads are not linearizable and are kept apart with the node
and applied index that served them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from kvstore.client._core import CONTINUE, Backoff, Call, ClientCore, GetResult, RpcFailure
from kvstore.client._mvcc_ops import compact_op, range_op, txn_op
from kvstore.client.batching import (
    BatchFailure,
    Coalescer,
    batch_request,
    batchable,
    from_result,
    to_op,
)
from kvstore.client.errors import KVError
from kvstore.client.ranges import range_request
from kvstore.client.txn import Op
from kvstore.lincheck import Handle, HistoryRecorder
from tests.sim.invariants import session_name
from tests.sim.service import SimService, endpoint_of
from tests.sim.world import US_PER_MS, US_PER_S, World


def _us(seconds: float) -> int:
    return max(0, int(round(seconds * US_PER_S)))


@dataclass
class Workload:
    """What the clients do; per-seed values come from the runner."""

    keys: tuple[bytes, ...]
    think_us: tuple[int, int] = (0, 20 * US_PER_MS)
    # relative weights of put, delete, cas, linearizable get, stale get
    mix: tuple[int, int, int, int, int] = (30, 8, 22, 28, 12)
    timeout_s: float = 1.0
    attempt_timeout_s: float = 0.25
    concurrency: int = 1  # calls in flight per client (its lanes)
    batching: bool = False  # coalesce overlapping calls to one node into Batch RPCs


@dataclass(frozen=True)
class StaleRead:
    client: str
    node: str
    key: bytes
    value: bytes | None
    applied: int
    time_us: int


@dataclass
class ClientLedger:
    """Everything the clients observed, shared by all of them."""

    history: HistoryRecorder
    stale_reads: list[StaleRead] = field(default_factory=list)
    acked_writes: list[tuple[bytes, int, str]] = field(default_factory=list)
    failed_writes: list[tuple[bytes, int, str]] = field(default_factory=list)
    last_values: dict[bytes, list[bytes | None]] = field(default_factory=dict)
    completed: int = 0
    ok: int = 0
    unknown: int = 0
    failed: int = 0
    expired_retries: int = 0  # write ids given up (and resent in a new session) on NOT_FOUND
    revision: int = 0  # the highest store revision a read has reported (compactions aim below)


@dataclass
class _Pending:
    desc: str
    kind: str  # "put" | "delete" | "cas" | "get" | "stale" | "range" | "compact"
    key: bytes
    call: Call[Any]
    handle: Handle | None
    value: bytes | None = None
    # A range over every workload key: one read per key in the history, all over the
    # range's interval (a snapshot read implies each of them is linearizable there).
    reads: dict[bytes, Handle] | None = None
    # A Txn putting one value into several keys at one revision: one write per key in the
    # history, all over the Txn's interval.
    writes: dict[bytes, Handle] | None = None


@dataclass
class _Queued:
    """A lane's attempt waiting in (or sent with) a batch."""

    lane: _Lane
    attempt: int
    endpoint: str
    op: Any


class SimClient:
    def __init__(
        self,
        world: World,
        rng: random.Random,
        name: str,
        node_ids: list[str],
        service: SimService,
        ledger: ClientLedger,
        workload: Workload,
    ) -> None:
        self.world = world
        self.rng = rng
        self.name = name
        self.node_ids = node_ids
        self.service = service
        self.ledger = ledger
        self.workload = workload
        endpoints = [endpoint_of(n) for n in node_ids]
        rng.shuffle(endpoints)  # clients start from different nodes
        self.core = ClientCore(
            endpoints,
            timeout=workload.timeout_s,
            attempt_timeout=workload.attempt_timeout_s,
            rng=random.Random(rng.getrandbits(64)),
        )
        n = max(1, workload.concurrency)
        self.lanes = [_Lane(self, name if n == 1 else f"{name}.{i}") for i in range(1, n + 1)]
        self._coalescers: dict[str, Coalescer[_Queued]] = {}
        self._batch_ids = 0
        self.stopping = False

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    def run_script(self, ops: list[tuple[str, bytes]], on_done: Callable[[], None]) -> None:
        """Run fixed operations in order on the first lane (the final reads)."""
        self.stopping = False
        self.lanes[0].run_script(ops, on_done)

    @property
    def busy(self) -> bool:
        return any(lane.busy for lane in self.lanes)

    # -- the RPC path: direct, or coalesced into Batch RPCs --------------------------------

    def send(self, lane: _Lane, attempt: int, endpoint: str, method: str, request: Any) -> None:
        if not (self.workload.batching and batchable(method)):
            self.service.call(endpoint, method, request,
                              lambda answer: lane.answer(attempt, endpoint, answer))
            return
        policy = self._coalescers.get(endpoint)
        if policy is None:
            policy = self._coalescers[endpoint] = Coalescer(
                is_done=lambda q: not q.lane.awaiting(q.attempt))
        self._launch(endpoint, policy.add(_Queued(lane, attempt, endpoint,
                                                  to_op(method, request))))

    def _launch(self, endpoint: str, batch: list[_Queued] | None) -> None:
        if not batch:
            return
        self._batch_ids += 1
        batch_id = self._batch_ids
        finished: list[bool] = []

        def settle(answer: Any) -> None:
            if finished:
                return  # the batch already timed out, or this is a duplicate answer
            finished.append(True)
            if isinstance(answer, RpcFailure):
                for q in batch:
                    q.lane.answer(q.attempt, endpoint, answer)
            else:
                for q, result in zip(batch, answer.results, strict=False):
                    try:
                        out: Any = from_result(result)
                    except BatchFailure as err:
                        out = err.failure
                    q.lane.answer(q.attempt, endpoint, out)
            self._launch(endpoint, self._coalescers[endpoint].finished())

        self.world.log(f"{self.name} batch #{batch_id} of {len(batch)} to {endpoint}")
        self.service.call(endpoint, "Batch", batch_request([q.op for q in batch]), settle)
        # The Batch RPC's own deadline: as long as the longest attempt in it may take.
        self.world.schedule(_us(self.workload.attempt_timeout_s), settle,
                            RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))


class _Lane:
    """One sequential process of the history, calling through its client's core."""

    def __init__(self, client: SimClient, name: str) -> None:
        self.client = client
        self.name = name
        self.world = client.world
        self.rng = client.rng
        self.mvcc_rng = random.Random(f"mvcc-{self.world.seed}-{name}")
        self.ledger = client.ledger
        self.workload = client.workload
        self._n = 0
        self._pending: _Pending | None = None
        self._attempt = 0  # id of the attempt whose answer or timeout is awaited; 0: none
        self._script: list[tuple[str, bytes]] | None = None
        self._on_idle: Callable[[], None] | None = None

    def start(self) -> None:
        self.world.schedule(self.rng.randint(*self.workload.think_us), self._next_op)

    def run_script(self, ops: list[tuple[str, bytes]], on_done: Callable[[], None]) -> None:
        self._script = list(ops)
        self._on_idle = on_done
        if self._pending is None:
            self.world.schedule(0, self._next_op)

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def awaiting(self, attempt: int) -> bool:
        return self._pending is not None and attempt == self._attempt

    def _next_op(self) -> None:
        if self._pending is not None:
            return
        if self._script is not None:
            if not self._script:
                self._script = None
                done, self._on_idle = self._on_idle, None
                if done is not None:
                    done()
                return
            kind, key = self._script.pop(0)
        elif self.client.stopping:
            return
        else:
            kind = self.rng.choices(("put", "delete", "cas", "get", "stale"),
                                    self.workload.mix)[0]
            key = self.rng.choice(self.workload.keys)
            # Ranges and compactions come from their own stream, so that the main one (and
            # every seed's schedule) is what it was before they existed.
            roll = self.mvcc_rng.random()
            if kind == "get" and roll < 0.3:
                kind = "range"
            elif kind == "put" and roll < 0.25:
                kind = "mput"
            elif kind == "delete" and roll < 0.2 and self.ledger.revision > 2:
                kind = "compact"
        self._begin(kind, key)

    def _begin(self, kind: str, key: bytes) -> None:
        self._n += 1
        core, rec, now = self.client.core, self.ledger.history, self.world.now_s
        handle: Handle | None = None
        value: bytes | None = None
        if kind == "put":
            value = f"{self.name}.{self._n}".encode()
            handle = rec.invoke(self.name, key, "write", value=value)
            op: Any = core.put(key, value)
            desc = f"put {key.decode()}={value.decode()}"
        elif kind == "delete":
            handle = rec.invoke(self.name, key, "delete")
            op = core.delete(key)
            desc = f"delete {key.decode()}"
        elif kind == "cas":
            value = f"{self.name}.{self._n}".encode()
            expected = self._pick_expected(key)
            handle = rec.invoke(self.name, key, "cas", value=value, expected=expected)
            op = core.cas(key, expected, value)
            desc = f"cas {key.decode()} {_show(expected)}->{value.decode()}"
        elif kind == "get":
            handle = rec.invoke(self.name, key, "read")
            op = core.get(key)
            desc = f"get {key.decode()}"
        elif kind == "mput":
            value = f"{self.name}.{self._n}".encode()
            keys = sorted({key, self.mvcc_rng.choice(self.workload.keys)})
            writes = {k: rec.invoke(self.name, k, "write", value=value) for k in keys}
            op = txn_op(success=[Op.put(k, value) for k in keys])
            desc = f"txn put {','.join(k.decode() for k in keys)}={value.decode()}"
        elif kind == "range":
            keys = sorted(self.workload.keys)
            reads = {k: rec.invoke(self.name, k, "read") for k in keys}
            op = range_op(core, range_request(keys[0], range_end=keys[-1] + b"\0"))
            desc = f"range {keys[0].decode()}..{keys[-1].decode()}"
        elif kind == "compact":
            upto = max(1, self.ledger.revision - self.mvcc_rng.randint(0, 6))
            op = compact_op(upto)
            desc = f"compact {upto}"
        else:
            node = self.rng.choice(self.client.node_ids)
            op = dataclasses.replace(core.get(key, stale=True), pinned=endpoint_of(node))
            desc = f"stale-get {key.decode()}@{node}"
        call = core.start(op, now)
        if call.write_id is not None:
            desc += f" (seq {call.write_id.seq})"
        self._pending = _Pending(desc, kind, key, call, handle, value,
                                 reads if kind == "range" else None,
                                 writes if kind == "mput" else None)
        self.world.log(f"{self.name} invoke {desc}")
        self._next_step()

    def _pick_expected(self, key: bytes) -> bytes | None:
        seen = self.ledger.last_values.get(key, [])
        r = self.rng.random()
        if seen and r < 0.7:
            return seen[-1]
        if seen and r < 0.85:
            return self.rng.choice(seen)
        return None

    # -- one call --------------------------------------------------------------------------

    def _next_step(self) -> None:
        p = self._pending
        assert p is not None
        try:
            step = p.call.next_step(self.world.now_s)
        except KVError as err:
            self._finish_error(err)
            return
        if isinstance(step, Backoff):
            self.world.schedule(_us(step.seconds), self._next_step)
            return
        self._attempt += 1
        attempt, endpoint = self._attempt, step.endpoint
        self.client.send(self, attempt, endpoint, p.call.method, p.call.request)
        self.world.schedule(_us(step.timeout), self._attempt_timeout, attempt, endpoint)

    def answer(self, attempt: int, endpoint: str, answer: Any) -> None:
        if attempt != self._attempt or self._pending is None:
            return  # a late answer to an attempt the client already gave up on
        self._attempt += 1
        if isinstance(answer, RpcFailure):
            self._failed(endpoint, answer)
            return
        try:
            result = self._pending.call.on_success(endpoint, answer)
        except KVError as err:
            self._finish_error(err)
            return
        if result is CONTINUE:
            wid = self._pending.call.write_id
            if wid is not None:
                self.world.log(f"{self.name} {self._pending.desc}: session "
                               f"{session_name(wid.client_id)}, seq {wid.seq}")
            self._next_step()
            return
        self._finish_ok(endpoint, result)

    def _attempt_timeout(self, attempt: int, endpoint: str) -> None:
        if attempt != self._attempt or self._pending is None:
            return
        self._attempt += 1
        self._failed(endpoint, RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                          "Deadline Exceeded"))

    def _failed(self, endpoint: str, failure: RpcFailure) -> None:
        p = self._pending
        assert p is not None
        self.world.log(f"{self.name} attempt at {endpoint} failed: {failure.describe()}")
        err = p.call.on_failure(endpoint, failure, self.world.now_s)
        if err is not None:
            self._finish_error(err)
        else:
            self._next_step()

    # -- outcomes --------------------------------------------------------------------------

    def _finish_ok(self, endpoint: str, result: Any) -> None:
        p = self._pending
        assert p is not None
        led = self.ledger
        led.completed += 1
        led.ok += 1
        wid = p.call.write_id
        if wid is not None:
            led.acked_writes.append((wid.client_id, wid.seq, p.desc))
        self._record_retired(p)
        seen = led.last_values.setdefault(p.key, [])
        if p.kind == "stale":
            assert isinstance(result, GetResult)
            led.stale_reads.append(StaleRead(self.name, result.node, p.key, result.value,
                                             result.applied_index, self.world.now))
            out = f"{_show(result.value)} @{result.node}/{result.applied_index}"
        elif p.kind == "get":
            assert isinstance(result, GetResult) and p.handle is not None
            led.history.ok(p.handle, result.value)
            seen.append(result.value)
            out = f"{_show(result.value)} @{result.node}/{result.applied_index}"
            led.revision = max(led.revision, result.revision)
        elif p.kind == "range":
            assert p.reads is not None
            values = {kv.key: kv.value for kv in result.kvs}
            for k, h in p.reads.items():
                led.history.ok(h, values.get(k))
            out = f"{len(values)} keys @rev {result.revision}/{result.applied_index}"
            led.revision = max(led.revision, result.revision)
        elif p.kind == "compact":
            out = f"ok (revision {result})"
        elif p.kind == "mput":
            assert p.writes is not None
            for k, h in p.writes.items():
                led.history.ok(h)
                led.last_values.setdefault(k, []).append(p.value)
            out = f"ok @rev {result.revision}" + (" (duplicate)" if result.duplicate else "")
        else:
            assert p.handle is not None
            led.history.ok(p.handle, result)
            if p.kind == "put" or (p.kind == "cas" and result):
                seen.append(p.value)
            elif p.kind == "delete":
                seen.append(None)
            out = repr(result)
        self.world.log(f"{self.name} ok {p.desc} -> {out} via {endpoint}")
        self._done()

    def _finish_error(self, err: KVError) -> None:
        p = self._pending
        assert p is not None
        led = self.ledger
        led.completed += 1
        wid = p.call.write_id
        self._record_retired(p)
        if p.reads is not None:
            for h in p.reads.values():
                led.history.fail(h)  # a failed read changed nothing
            led.failed += 1
            verdict = "FAIL"
        elif p.writes is not None:
            unknown = wid is not None and err.maybe_applied
            for h in p.writes.values():
                (led.history.unknown if unknown else led.history.fail)(h)
            if unknown:
                led.unknown += 1
                verdict = "UNKNOWN"
            else:
                led.failed += 1
                verdict = "FAIL"
                if wid is not None:
                    led.failed_writes.append((wid.client_id, wid.seq, p.desc))
        elif p.handle is not None:
            if wid is not None and err.maybe_applied:
                led.history.unknown(p.handle)
                led.unknown += 1
                verdict = "UNKNOWN"
            else:
                led.history.fail(p.handle)
                led.failed += 1
                verdict = "FAIL"
                if wid is not None:
                    led.failed_writes.append((wid.client_id, wid.seq, p.desc))
        else:
            led.failed += 1
            verdict = "FAIL"
        self.world.log(f"{self.name} {verdict} {p.desc}: {type(err).__name__}")
        self._done()

    def _record_retired(self, p: _Pending) -> None:
        """Write ids the call gave up after the cluster refused them (expired session)
        were promised not applied: the invariants check that none ever is."""
        for wid in p.call.retired_write_ids:
            self.ledger.failed_writes.append(
                (wid.client_id, wid.seq, f"{p.desc} (expired session, seq {wid.seq})"))
            self.ledger.expired_retries += 1

    def _done(self) -> None:
        self._pending = None
        if self._script is not None:
            self.world.schedule(0, self._next_op)
        elif not self.client.stopping:
            self.world.schedule(self.rng.randint(*self.workload.think_us), self._next_op)


def _show(value: bytes | None) -> str:
    return "<absent>" if value is None else value.decode()
