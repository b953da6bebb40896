"""Many operations in flight from several client processes: throughput vs concurrency.

Why several processes: one Python process running an asyncio loop and grpc.aio saturates
a core at a few thousand RPCs/s, so with a single client process the benchmark would
measure the client. Each worker process (multiprocessing, spawn) runs its own event loop
with its share of the concurrent writers, all connected to the same target through the
drivers of bench/drivers.py, and reports the CPU it used over the measured window
(getrusage(RUSAGE_SELF), all its threads) so that a reader can tell whether the client was
the bottleneck. The parent samples the servers' CPU (/proc/PID/stat) and the whole
machine's (/proc/stat) over the same window: on a shared 2-core box the "other" share
shows a neighbour's load.

Closed loop: every writer sends its next operation when the previous one is answered.
Each job has a warm-up (not counted) and a measured window; an operation counts when it
completes inside the window, which makes ops/s an unbiased rate even with 256 in flight.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import resource
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from bench.drivers import AsyncDriver, TargetSpec, async_driver, call_async
from bench.stats import cpu_ms_per_op, split_evenly, summary_ms
from bench.sysinfo import MachineCpu, processes_cpu_seconds

# Keys the reads pick from; the suite writes seq-0 .. seq-{READ_KEYSPACE-1} first.
READ_KEYSPACE = 1000
_ERROR_PAUSE = 0.01  # after a failed operation, so that a dead target is not spun on


@dataclass(frozen=True)
class Job:
    """One measurement on every worker; `writers` is this worker's share of in-flight ops."""

    op: str
    writers: int
    value_size: int
    start_at: float  # time.time() at which every worker starts its writers
    warmup: float
    duration: float
    keyspace: int = READ_KEYSPACE


def job_key(op: str, proc: int, writer: int, i: int, keyspace: int) -> bytes:
    """Writes overwrite a small per-writer key set; reads walk the preloaded keys."""
    if op == "put":
        return b"tp-%d-%d-%d" % (proc, writer, i % 64)
    return b"seq-%d" % ((proc * 7919 + writer * 104729 + i) % keyspace)


async def run_job(driver: AsyncDriver, job: Job, proc: int) -> dict[str, Any]:
    """Run one job in this worker; returns counts, latencies (s) and CPU over the window."""
    value = os.urandom(job.value_size)
    measure_from = job.start_at + job.warmup
    end = measure_from + job.duration
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    cpu: dict[str, float] = {}

    async def writer(w: int) -> None:
        nonlocal errors, first_error
        follower = proc * 131 + w  # spreads stale reads over the followers
        i = 0
        while time.time() < end:
            key = job_key(job.op, proc, w, i, job.keyspace)
            i += 1
            t0 = time.perf_counter()
            try:
                await call_async(driver, job.op, key, value, follower)
            except Exception as exc:  # any failure is counted, reported, and not fatal
                if measure_from <= time.time() <= end:
                    errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(_ERROR_PAUSE)
                continue
            elapsed = time.perf_counter() - t0
            if measure_from <= time.time() <= end:
                latencies.append(elapsed)

    async def cpu_probe() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.time()))
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
        await asyncio.sleep(max(0.0, end - time.time()))
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.time()
        cpu["seconds"] = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        cpu["wall"] = t1 - t0

    await asyncio.sleep(max(0.0, job.start_at - time.time()))
    await asyncio.gather(cpu_probe(), *(writer(w) for w in range(job.writers)))
    return {"proc": proc, "writers": job.writers, "ops": len(latencies), "errors": errors,
            "first_error": first_error, "latencies": latencies,
            "cpu_s": cpu.get("seconds", 0.0), "cpu_wall_s": cpu.get("wall", 0.0)}


async def _warm(driver: AsyncDriver, spec: TargetSpec, proc: int) -> None:
    """Connect every channel before the first job, so connection setup is never measured."""
    key = b"warm-%d" % proc
    await driver.put(key, b"x")
    await driver.get(key)
    for f in range(len(spec.followers)):
        await driver.stale_get(key, f)


async def _worker(conn: Connection, spec: TargetSpec, proc: int) -> None:
    driver = async_driver(spec)
    try:
        await _warm(driver, spec, proc)
        conn.send(("ready", proc))
        loop = asyncio.get_running_loop()
        while True:
            job = await loop.run_in_executor(None, conn.recv)
            if job is None:
                return
            conn.send(("result", await run_job(driver, job, proc)))
    except Exception as exc:
        try:
            conn.send(("error", f"worker {proc}: {type(exc).__name__}: {exc}"[:500]))
        except OSError:
            pass
    finally:
        await driver.close()


def worker_main(conn: Connection, spec: TargetSpec, proc: int) -> None:
    """Entry point of a worker process (must be importable for the spawn start method)."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_worker(conn, spec, proc))


def aggregate(op: str, in_flight: int, worker_results: list[dict[str, Any]], window_s: float,
              server_cpu_s: float | None, machine_busy_pct: float | None,
              cores: int) -> dict[str, Any]:
    """Combine the workers' reports of one job into one throughput entry (pure)."""
    active = [r for r in worker_results if r["writers"] > 0]
    latencies = [x for r in worker_results for x in r["latencies"]]
    ops = sum(r["ops"] for r in worker_results)
    client_cores = sum(r["cpu_s"] for r in worker_results) / window_s if window_s else None
    server_cores = server_cpu_s / window_s if server_cpu_s is not None and window_s else None
    busy_cores = machine_busy_pct / 100.0 * cores if machine_busy_pct is not None else None
    other_cores = None
    if busy_cores is not None and client_cores is not None and server_cores is not None:
        other_cores = max(0.0, busy_cores - client_cores - server_cores)
    errors = [r["first_error"] for r in worker_results if r["first_error"]]
    ops_per_s = ops / window_s if window_s else 0.0
    return {
        "op": op,
        "in_flight": in_flight,
        "processes": len(active),
        "ops": ops,
        "errors": sum(r["errors"] for r in worker_results),
        "first_error": errors[0] if errors else None,
        "window_s": window_s,
        "ops_per_s": ops_per_s,
        "latency_ms": summary_ms(latencies),
        "client_cpu_cores": client_cores,
        "server_cpu_cores": server_cores,
        "server_cpu_ms_per_op": cpu_ms_per_op(server_cores, ops_per_s),
        "other_cpu_cores": other_cores,
        "machine_busy_cores": busy_cores,
    }


class LoadPool:
    """`processes` worker processes connected to one target, reused for all its jobs.

    Reuse matters for --quick: spawning a process and importing grpc costs about a second.
    Leaving the `with` block always stops the workers (politely, then by force).
    """

    def __init__(self, spec: TargetSpec, processes: int, ready_timeout: float = 60.0) -> None:
        self.spec = spec
        self.processes = processes
        self.ready_timeout = ready_timeout
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []

    def __enter__(self) -> LoadPool:
        ctx = mp.get_context("spawn")
        try:
            for i in range(self.processes):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=worker_main, args=(child, self.spec, i), daemon=True,
                                name=f"bench-load-{i}")
                p.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(p)
            for conn in self._conns:
                self._receive(conn, self.ready_timeout, "ready")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()

    def run(self, op: str, in_flight: int, value_size: int, warmup: float, duration: float,
            keyspace: int = READ_KEYSPACE) -> dict[str, Any]:
        """One closed-loop measurement with `in_flight` operations spread over the workers."""
        used = min(in_flight, self.processes)
        shares = split_evenly(in_flight, used) + [0] * (self.processes - used)
        start_at = time.time() + 0.3
        for conn, writers in zip(self._conns, shares, strict=True):
            conn.send(Job(op, writers, value_size, start_at, warmup, duration, keyspace))
        measure_from, end = start_at + warmup, start_at + warmup + duration
        time.sleep(max(0.0, measure_from - time.time()))
        s0, m0, t0 = processes_cpu_seconds(self.spec.pids), MachineCpu.read(), time.time()
        time.sleep(max(0.0, end - time.time()))
        s1, m1, t1 = processes_cpu_seconds(self.spec.pids), MachineCpu.read(), time.time()
        results = [self._receive(conn, 60.0, "result") for conn in self._conns]
        busy = m1.busy_pct_since(m0) if m0 is not None and m1 is not None else None
        server_cpu = (s1 - s0) * duration / (t1 - t0) if t1 > t0 else None
        return aggregate(op, in_flight, results, duration, server_cpu, busy, os.cpu_count() or 1)

    def _receive(self, conn: Connection, timeout: float, expected: str) -> Any:
        if not conn.poll(timeout):
            raise RuntimeError(f"a load worker sent no {expected!r} within {timeout:g}s")
        kind, payload = conn.recv()
        if kind == "error":
            raise RuntimeError(payload)
        if kind != expected:
            raise RuntimeError(f"load worker sent {kind!r}, expected {expected!r}")
        return payload

    def _stop(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
