"""One fault drill: cluster up, clients + nemesis, heal, settle, check, tear down.

What a drill promises to check, after every fault is healed and every node runs:

1. the recorded history is linearizable (:func:`kvstore.lincheck.check`);
2. no acknowledged write is lost: a linearizable read of every key is recorded at the
   end, so a lost write leaves a final value the checker cannot explain;
3. every replica converges: Admin.Digest on every node reports the same applied index
   and the same per-shard digests within a deadline (a node that never catches up, or
   that applied something else, fails here);
4. stale reads kept their weaker promise (:func:`tests.faults.workload.check_stale_reads`).

The drill never sleeps to synchronize; it waits on conditions with deadlines. It
sleeps only as the nemesis's schedule says. Whatever happens, every process it
started is stopped before :func:`run_drill` returns (and the history is checked only
then, so the checker does not compete with the nodes for the CPU).
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kvstore.lincheck import CheckResult, HistoryRecorder, Operation, Status, check
from tests.faults.coordination import Lockers, Watchers, full_history, write_marker
from tests.faults.nemesis import KINDS, Fault, Nemesis, heal_all, plan
from tests.faults.nodes import DrillCluster
from tests.faults.workload import StaleRead, Workload, check_stale_reads, final_reads

Log = Callable[[str], None]


@dataclass(frozen=True)
class DrillConfig:
    """Everything that defines a run; with the seed, enough to repeat its schedule."""

    nodes: int = 3
    seconds: float = 20.0  # how long the nemesis runs (the clients run a little longer)
    seed: int = 1
    kinds: tuple[str, ...] = KINDS
    overlap: bool = False  # process and network faults on two lanes that overlap in time
    clients: int = 4
    keys: int = 4
    # A client call's overall deadline, and one attempt's: an attempt stuck on a paused
    # or partitioned node gives up after attempt_timeout and the call tries another node.
    op_timeout: float = 3.0
    attempt_timeout: float = 1.0
    tail: float = 1.5  # clients keep going this long after everything is healed
    settle_timeout: float = 60.0  # heal, elect, read every key, converge: each this long
    settings: dict[str, Any] = field(default_factory=dict)  # extra cluster settings
    api: str = "native"  # "etcd": the clients speak etcd's v3 API (tests/faults/etcd_client)
    watchers: int = 0  # watches of the workload's keys, checked against the full history
    lockers: int = 0  # threads taking one lock in turns (mutual exclusion, fencing tokens)

    def command(self) -> str:
        """The soak command line that repeats this run."""
        return (
            "flock /tmp/kvstore-cluster-tests.lock .venv/bin/python -m tests.faults.soak "
            f"--runs 1 --nodes {self.nodes} --seconds {self.seconds:g} --seed {self.seed} "
            f"--kinds {','.join(self.kinds)} --clients {self.clients} --keys {self.keys} "
            f"--op-timeout {self.op_timeout:g} --attempt-timeout {self.attempt_timeout:g}"
            + (" --overlap" if self.overlap else "")
            + (f" --api {self.api}" if self.api != "native" else "")
            + (f" --watchers {self.watchers}" if self.watchers else "")
            + (f" --lockers {self.lockers}" if self.lockers else "")
            + "".join(
                f" --{key.replace('_', '-')} {value}"
                for key, value in self.settings.items()
                if key in ("tick_ms", "election_ticks", "snapshot_entries")
            )
        )


@dataclass
class DrillResult:
    config: DrillConfig
    run_dir: Path
    schedule: list[Fault]
    problems: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    stale_reads: list[StaleRead] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    check: CheckResult | None = None
    digests: dict[str, str] = field(default_factory=dict)
    log_tails: str = ""
    wall: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def ops_checked(self) -> int:
        return self.check.ops_checked if self.check is not None else 0

    def summary(self) -> str:
        c = self.config
        status = "ok" if self.ok else f"FAILED ({len(self.problems)} problem(s))"
        by = {s.value: 0 for s in Status}
        for op in self.operations:
            assert op.status is not None
            by[op.status.value] += 1
        return (
            f"seed {c.seed} nodes {c.nodes} {c.seconds:g}s kinds {','.join(c.kinds)}"
            f"{' overlapping' if c.overlap else ''}, op timeout {c.op_timeout:g}s: {status}; "
            f"{len(self.operations)} ops ({by['ok']} ok, {by['fail']} fail, "
            f"{by['unknown']} unknown), {self.ops_checked} checked, "
            f"{len(self.stale_reads)} stale reads, {len(self.schedule)} faults, "
            f"{self.wall:.1f}s"
        )

    def report(self) -> str:
        """Everything needed to understand a failure: seed, schedule, what happened, logs."""
        lines = [
            f"fault drill: {self.summary()}",
            f"repeat with: {self.config.command()}",
            f"run dir (history.jsonl, stale.jsonl, node logs): {self.run_dir}",
        ]
        if self.problems:
            lines.append("problems:")
            lines += [f"  - {p}" for p in self.problems]
        lines.append("schedule (planned; times from the nemesis's start):")
        lines += [f"  {f.describe()}" for f in self.schedule] or ["  (none)"]
        lines.append("what happened (times from the drill's start):")
        lines += [f"  {e}" for e in self.events]
        lines.append(
            "outcomes by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        )
        if self.check is not None:
            lines.append(f"checker: {self.check.explanation}")
        if self.digests:
            lines.append("digests:")
            lines += [f"  {node}: {d}" for node, d in sorted(self.digests.items())]
        if self.log_tails and not self.ok:
            lines.append("node log tails:")
            lines.append(self.log_tails)
        return "\n".join(lines)

    def save(self) -> None:
        """Write the evidence next to the node logs, for a failure to be studied later."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "history.jsonl", "w", encoding="utf-8") as f:
            for op in self.operations:
                f.write(json.dumps({
                    "process": op.process, "key": op.key, "kind": op.kind, "call": op.call,
                    "ret": op.ret, "status": op.status.value if op.status else None,
                    "value": op.value, "expected": op.expected, "output": op.output,
                }) + "\n")  # fmt: skip
        with open(self.run_dir / "stale.jsonl", "w", encoding="utf-8") as f:
            for r in self.stale_reads:
                f.write(json.dumps(_stale_json(r)) + "\n")
        (self.run_dir / "report.txt").write_text(self.report() + "\n", encoding="utf-8")


def _stale_json(r: StaleRead) -> dict[str, Any]:
    return {
        "node": r.node,
        "key": r.key,
        "value": r.value,
        "applied_index": r.applied_index,
        "call": r.call,
        "ret": r.ret,
    }


def key_excerpt(operations: list[Operation], key: object, limit: int = 40) -> list[str]:
    """The last ``limit`` operations on ``key`` in call order (the history grows toward
    the failure: the final reads come last)."""
    ops = sorted((op for op in operations if op.key == key), key=lambda op: op.call)
    return [op.describe() for op in ops[-limit:]]


def _short_hash(parts: tuple[str, ...]) -> str:
    return hashlib.blake2b("/".join(parts).encode(), digest_size=6).hexdigest()


def wait_converged(cluster: DrillCluster, timeout: float) -> tuple[dict[str, str], str | None]:
    """Poll Admin.Digest on every node until all report the same (applied index, digests).

    Returns a short per-node description and None, or the problem at the deadline.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        views: dict[str, tuple[int, tuple[str, ...]]] = {}
        try:
            for node_id in cluster.ids:
                d = cluster.digest(node_id)
                views[node_id] = (d.applied_index, tuple(d.shard_digests))
        except grpc.RpcError as exc:
            last = f"Digest failed: {exc.code().name} {exc.details()}"
        else:
            described = {
                n: f"applied {a}, digest of shard digests {_short_hash(ds)}"
                for n, (a, ds) in views.items()
            }
            if len(set(views.values())) == 1:
                return described, None
            last = "; ".join(f"{n}: {d}" for n, d in sorted(described.items()))
            indexes = {a for a, _ in views.values()}
            if len(indexes) == 1:
                shards = next(iter(views.values()))[1]
                differ = [
                    i for i in range(len(shards)) if len({v[1][i] for v in views.values()}) > 1
                ]
                last += f" (same applied index, different shards: {differ})"
        if time.monotonic() >= deadline:
            return {}, f"replicas did not converge within {timeout:g}s: {last}"
        time.sleep(0.2)


def run_drill(config: DrillConfig, run_dir: Path, log: Log | None = None) -> DrillResult:
    """Run one drill in ``run_dir``; never leaves a process behind. Failures are in the result."""
    say: Log = log or (lambda _msg: None)
    started = time.monotonic()
    schedule = plan(config.seed, config.kinds, config.seconds, config.overlap)
    result = DrillResult(config, run_dir, schedule)

    def event(text: str) -> None:
        result.events.append(f"t+{time.monotonic() - started:6.2f}s {text}")
        say(text)

    cluster = DrillCluster(run_dir, config.nodes, settings=config.settings, log=event)
    recorder = HistoryRecorder(clock=lambda: time.monotonic() - started)
    workload: Workload | None = None
    nemesis: Nemesis | None = None
    watchers: Watchers | None = None
    lockers: Lockers | None = None
    try:
        cluster.up()
        workload = Workload(
            cluster.endpoints,
            seed=config.seed,
            clients=config.clients,
            keys=config.keys,
            recorder=recorder,
            op_timeout=config.op_timeout,
            attempt_timeout=config.attempt_timeout,
            api=config.api,
        )
        workload.start()
        if config.watchers:
            watchers = Watchers(cluster.endpoints, config.watchers, config.seed)
            watchers.start()
        if config.lockers:
            lockers = Lockers(cluster.endpoints, config.lockers, config.seed)
            lockers.start()
        nemesis = Nemesis(cluster, schedule, sink=event)
        event(f"clients started; nemesis starts ({len(schedule)} faults planned)")
        nemesis.start()
        # Each fault's own steps are bounded (restarts by START_TIMEOUT), so this is generous.
        if not nemesis.wait(config.seconds + 60 + 40 * len(schedule)):
            result.problems.append("the nemesis did not finish its schedule")
        nemesis.stop()
        event("settling: heal all, resume all, restart all")
        result.problems += heal_all(cluster, time.monotonic() + config.settle_timeout, event)
        time.sleep(config.tail)  # the clients' last stretch on a healed cluster (a schedule)
        if lockers is not None:
            lockers.stop()
        hung = workload.stop(config.op_timeout + 30)
        if hung:
            result.problems.append(f"client threads did not finish: {hung}")
        leader = cluster.c.leader(timeout=config.settle_timeout)
        event(f"leader {leader}; reading every key")
        missing = final_reads(cluster.endpoints, workload.keys, recorder, config.settle_timeout)
        if missing:
            result.problems.append(f"no linearizable read of {missing} succeeded after healing")
        result.digests, diverged = wait_converged(cluster, config.settle_timeout)
        if diverged:
            result.problems.append(diverged)
        else:
            event("replicas converged")
        if watchers is not None:
            result.problems += _check_watchers(watchers, cluster.endpoints,
                                               config.settle_timeout, event)
        if lockers is not None:
            result.problems += lockers.check()
            event(f"lock holds: {len(lockers.holds)} ({lockers.failures} attempts failed)")
    except BaseException as exc:
        result.problems.append(f"drill aborted: {exc!r}\n{traceback.format_exc()}")
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt / pytest timeout: still tear down (finally), then go
    finally:
        if nemesis is not None:
            if not nemesis.stop():
                result.problems.append("the nemesis thread did not stop")
        if workload is not None:
            workload.stop(config.op_timeout + 30)
        if watchers is not None:
            watchers.stop()
        if lockers is not None:
            lockers.stop()
        leftovers = cluster.close()
        if leftovers:
            result.problems.append(f"node processes survived teardown: {leftovers}")
        result.log_tails = cluster.log_tails()
        result.problems += nemesis.errors if nemesis is not None else []
        if workload is not None:
            result.stale_reads = list(workload.stale_reads)
            result.counts = dict(workload.stats.by_status)
            result.problems += [
                f"unexpected client error: {e}" for e in workload.stats.unexpected[:10]
            ]
        result.operations = recorder.operations()
    check_history(result)
    result.wall = time.monotonic() - started
    result.save()
    return result


def _check_watchers(watchers: Watchers, endpoints: list[str], timeout: float,
                    event: Callable[[str], None]) -> list[str]:
    """Write the end marker, let every watcher reach it, and compare each with the full
    history read by one watch from revision 1."""
    marker = write_marker(endpoints, timeout)
    if not watchers.wait_caught_up(marker, timeout):
        behind = {i: watchers.last_revision(i) for i in range(watchers.count)}
        return [f"watchers did not reach the end marker (revision {marker}): {behind}"]
    history = full_history(endpoints, marker, timeout)
    event(f"watchers: {watchers.count} saw the {len(history)} events of the history")
    return watchers.check(history)


def check_history(result: DrillResult) -> None:
    """Check the recorded history and stale reads into ``result.problems`` (run after the
    cluster is gone, so the checker does not compete with the nodes for the CPU)."""
    if not result.operations:
        result.problems.append("no operations were recorded")
        return
    result.check = check(result.operations)
    if result.check.ok is False:
        result.problems.append(
            "history is NOT linearizable: " + result.check.explanation + "\n    last operations "
            f"on {result.check.key!r}:\n      "
            + "\n      ".join(key_excerpt(result.operations, result.check.key))
        )
    elif result.check.ok is None:
        result.problems.append(f"linearizability check inconclusive: {result.check.explanation}")
    result.problems += check_stale_reads(result.stale_reads, result.operations)[:20]
