"""The benchmark suite: which workloads run on which system, and the result document.

Order per system: sequential latency from one blocking client (put, linearizable get,
stale get spread over the followers), sequential put latency per value size, then the
multi-process load (puts at each concurrency level, linearizable and stale reads at the
read levels). The main kvstore cluster (3 nodes), etcd (same size) and the floor server
get every workload; other kvstore sizes (5 nodes) get the sequential latency only, which
is what the 5-vs-3 target needs. Every system is started fresh, measured and stopped
before the next one starts, so two never compete for the CPUs.

The etcd API with a Python etcd client (aetcd): once the main kvstore cluster and etcd
have had their native workloads, the same running system is measured again through aetcd
(sequential put and gets, the put load levels) as `kvstore-N-etcdapi` and `etcd-N-aetcd`,
one after the other, never at the same time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import profile
from bench.aetcd_drivers import CLIENT as AETCD
from bench.aetcd_drivers import INSTALL_HINT as AETCD_HINT
from bench.aetcd_drivers import aetcd_available
from bench.drivers import SyncDriver, TargetSpec, TimedDriver, call_sync, sync_driver
from bench.load import READ_KEYSPACE, LoadPool
from bench.progress import Progress, note
from bench.stats import latency_entry, summary_ms
from bench.sysinfo import fsync_latency, machine_facts

SCHEMA = "kvstore-bench/3"
PHASES: tuple[str, ...] = ("latency", "sizes", "throughput", "reads")


@dataclass(frozen=True)
class SuiteConfig:
    """Everything that decides what a run measures; saved in the result as `config`."""

    mode: str = "full"
    nodes: tuple[int, ...] = (3, 5)  # kvstore cluster sizes; the first is the main one
    etcd: bool = False
    etcd_bin: str | None = None
    floor: bool = True
    # The main kvstore cluster and etcd measured again through the etcd API with aetcd.
    etcdapi: bool = True
    phases: tuple[str, ...] = PHASES
    value_size: int = 16
    seq_puts: int = 5000
    seq_reads: int = 2000
    value_sizes: tuple[int, ...] = (16, 256, 4096, 65536)
    size_puts: int = 500
    levels: tuple[int, ...] = (1, 16, 64, 256)
    read_levels: tuple[int, ...] = (64,)
    processes: int = 2
    warmup: float = 1.0
    duration: float = 5.0
    out: str = "bench/results"
    data_dir: str | None = None
    plots: bool = True
    # py-spy profiles of kvstore's nodes during the sequential puts (bench/profile.py),
    # written to profile_dir (set by the command line next to the results).
    profile: bool = False
    profile_dir: str | None = None


FULL = SuiteConfig()
# About a minute on 2 cores: the main cluster and the floor, fewer samples, short windows.
QUICK = replace(FULL, mode="quick", nodes=(3,), seq_puts=1000, seq_reads=300, size_puts=100,
                warmup=0.5, duration=1.5)


def _series(driver: SyncDriver, label: str, n: int, op: str, key: Callable[[int], bytes],
            value: bytes) -> list[float]:
    """`op` on key(0..n-1) back to back (a stale get i goes to follower i); the latency of
    each call in seconds. A driver over an asyncio client times them in its own loop."""
    progress = Progress(label, n)
    if hasattr(driver, "timed"):
        timed: TimedDriver = driver  # type: ignore[assignment]
        out = timed.timed(op, n, key, value, progress.update)
    else:
        out = []
        for i in range(n):
            k = key(i)
            t = time.perf_counter()
            call_sync(driver, op, k, value, i)
            out.append(time.perf_counter() - t)
            progress.update(i + 1)
    s = summary_ms(out)
    progress.finish(f"p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms")
    return out


def _seq_key(i: int) -> bytes:
    return b"seq-%d" % (i % READ_KEYSPACE)


def _sequential(spec: TargetSpec, cfg: SuiteConfig, everything: bool) -> dict[str, Any]:
    """Latency of one client doing one operation at a time (the commit-latency view)."""
    out: dict[str, Any] = {}
    driver: SyncDriver = sync_driver(spec)
    value = b"v" * cfg.value_size
    try:
        for i in range(50):  # channels, leader discovery, first allocations
            driver.put(b"warm-%d" % i, value)
        if "latency" in cfg.phases:
            with _profiled(spec, cfg, "put", out):
                put = _series(driver, f"{spec.name} put", cfg.seq_puts, "put", _seq_key, value)
            out["latency"] = {"put": latency_entry(put)}
        needs_keys = "latency" in cfg.phases or (everything and "reads" in cfg.phases)
        first_missing = min(cfg.seq_puts, READ_KEYSPACE) if "latency" in cfg.phases else 0
        if needs_keys and first_missing < READ_KEYSPACE:
            for i in range(first_missing, READ_KEYSPACE):  # reads must find their keys
                driver.put(b"seq-%d" % i, value)
        if "latency" in cfg.phases:
            lin = _series(driver, f"{spec.name} linearizable get", cfg.seq_reads,
                          "linearizable_get", _seq_key, value)
            stale = _series(driver, f"{spec.name} stale get ({len(spec.followers)} followers)",
                            cfg.seq_reads, "stale_get", _seq_key, value)
            out["latency"]["linearizable_get"] = latency_entry(lin)
            out["latency"]["stale_get"] = latency_entry(stale)
        if everything and "sizes" in cfg.phases:
            out["value_sizes"] = {}
            for size in cfg.value_sizes:
                samples = _series(driver, f"{spec.name} put {size} B", cfg.size_puts, "put",
                                  lambda i, size=size: b"size-%d-%d" % (size, i % 100),
                                  b"s" * size)
                out["value_sizes"][str(size)] = latency_entry(samples)
    finally:
        driver.close()
    return out


@contextlib.contextmanager
def _profiled(spec: TargetSpec, cfg: SuiteConfig, phase: str,
              out: dict[str, Any]) -> Iterator[None]:
    """Profile a kvstore target's nodes during the block (with --profile); the
    summaries go to out["profile"][phase] and are printed."""
    if (not cfg.profile or cfg.profile_dir is None or spec.kind != "kvstore"
            or spec.client != "native" or not spec.pids):
        yield
        return
    directory = Path(cfg.profile_dir)
    with profile.profiling(spec.pids, directory, f"{spec.name}-{phase}") as paths:
        yield
    summaries = {path.stem.rsplit("-", 1)[-1]: profile.summarize(path) for path in paths}
    out.setdefault("profile", {})[phase] = summaries
    note(profile.render(f"{spec.name} {phase}", summaries))


def _loaded(spec: TargetSpec, cfg: SuiteConfig, out: dict[str, list[dict[str, Any]]],
            reads: bool = True) -> None:
    """Throughput and latency under load from several client processes, into `out`
    (`reads` False: the put levels only)."""
    plan = []
    if "throughput" in cfg.phases:
        plan += [("put", level) for level in cfg.levels]
    if reads and "reads" in cfg.phases:
        plan += [(op, level) for level in cfg.read_levels
                 for op in ("linearizable_get", "stale_get")]
    if not plan:
        return
    note(f"{spec.name}: starting {cfg.processes} client processes")
    with LoadPool(spec, cfg.processes) as pool:
        for n, (op, level) in enumerate(plan, 1):
            note(f"{spec.name} {op}, {level} in flight ({n}/{len(plan)}, "
                 f"{cfg.warmup + cfg.duration:.1f} s)")
            entry = pool.run(op, level, cfg.value_size, cfg.warmup, cfg.duration)
            out.setdefault(op, []).append(entry)
            note(f"  {entry['ops_per_s']:.0f} ops/s, p50 {entry['latency_ms']['p50']:.2f} ms, "
                 f"p99 {entry['latency_ms']['p99']:.2f} ms, client CPU "
                 f"{_cores(entry['client_cpu_cores'])}, servers {_cores(entry['server_cpu_cores'])}"
                 f" ({_ms_per_op(entry['server_cpu_ms_per_op'])})"
                 + (f", {entry['errors']} errors ({entry['first_error']})"
                    if entry["errors"] else ""))


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} cores"


def _ms_per_op(value: float | None) -> str:
    return "? ms CPU per op" if value is None else f"{value:.2f} ms CPU per op"


def measure(spec: TargetSpec, cfg: SuiteConfig, everything: bool,
            entry: dict[str, Any]) -> None:
    """All workloads for one running system into `entry`, filled as they complete so that
    a failure keeps what was measured before it; `everything` False means latency only.
    Through aetcd (spec.client): sequential latency and the put levels, no value sizes
    and no reads under load."""
    entry.update({"kind": spec.kind, "nodes": spec.nodes, "leader": spec.leader,
                  "endpoints": list(spec.endpoints), "info": spec.info,
                  "client": spec.client})
    native = spec.client == "native"
    entry.update(_sequential(spec, cfg, everything and native))
    if everything:
        entry["throughput"] = {}
        _loaded(spec, cfg, entry["throughput"], reads=native)


@contextlib.contextmanager
def _data_root(cfg: SuiteConfig) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="kvstore-bench-", dir=cfg.data_dir))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class System:
    """One system of the run plan: `start` runs it; `everything` False means latency only;
    `etcdapi` names its second measurement through aetcd (None: none)."""

    name: str
    start: Callable[[], contextlib.AbstractContextManager[TargetSpec]]
    everything: bool
    etcdapi: str | None = None


def etcdapi_name(name: str, kind: str) -> str:
    """The target name of a system measured through aetcd: kvstore-3-etcdapi, etcd-3-aetcd."""
    return f"{name}-etcdapi" if kind == "kvstore" else f"{name}-{AETCD}"


def _systems(cfg: SuiteConfig, root: Path, etcd_bin: str | None) -> list[System]:
    """The systems in run order: the main kvstore cluster and etcd back to back (similar
    background load), then the floor, then other cluster sizes."""
    from bench.targets import floor_server, kvstore_cluster, local_etcd

    main, *others = cfg.nodes
    kv, etcd = f"kvstore-{main}", f"etcd-{main}"
    plan = [System(kv, lambda: kvstore_cluster(main, root), True,
                   etcdapi_name(kv, "kvstore") if cfg.etcdapi else None)]
    if etcd_bin is not None:
        plan.append(System(etcd, lambda: local_etcd(main, root, etcd_bin), True,
                           etcdapi_name(etcd, "etcd") if cfg.etcdapi else None))
    if cfg.floor:
        plan.append(System("floor", lambda: floor_server(root), True))
    for n in others:
        plan.append(System(f"kvstore-{n}", lambda n=n: kvstore_cluster(n, root), False))
    return plan


@contextlib.contextmanager
def _recorded(name: str, entry: dict[str, Any]) -> Iterator[None]:
    """A failure of the block is recorded in `entry` and the run goes on (Ctrl-C stops it).
    The partial figures stay in the JSON for forensics; the report ignores a system with
    an error rather than compare half a run."""
    try:
        yield
    except Exception as exc:
        note(f"{name}: FAILED: {type(exc).__name__}: {exc}")
        entry["error"] = f"{type(exc).__name__}: {exc}"


def _measure_etcdapi(spec: TargetSpec, cfg: SuiteConfig, name: str,
                     result: dict[str, Any]) -> None:
    """The running system again, through the etcd API with aetcd, as target `name`."""
    from bench.targets import current_leader

    entry: dict[str, Any] = {}
    result["targets"][name] = entry
    note(f"{name}: the same {spec.name} through the etcd API with aetcd")
    with _recorded(name, entry):
        now = current_leader(spec)
        if now.leader != spec.leader:
            note(f"{name}: the leader is now {now.leader}")
        variant = replace(now, name=name, client=AETCD,
                          info={**spec.info, "client": "aetcd (etcd API)"})
        measure(variant, cfg, True, entry)


def new_result(cfg: SuiteConfig, machine: dict[str, Any], started: float,
               argv: list[str]) -> dict[str, Any]:
    """The result document before any system is measured (targets are added as they run,
    `checks` by bench/report.py, `elapsed_s` at the end); see report.validate_result."""
    return {
        "schema": SCHEMA,
        "mode": cfg.mode,
        "command": " ".join(["python", "-m", "bench", *argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "config": asdict(cfg),
        "machine": machine,
        "targets": {},
    }


def run_suite(cfg: SuiteConfig, results_dir: Path) -> dict[str, Any]:
    """Run every system of the plan; a system that fails is recorded and the run goes on."""
    from bench.etcdcluster import find_etcd

    started = time.time()
    etcd_bin = find_etcd(cfg.etcd_bin) if cfg.etcd else None  # fail before starting anything
    if cfg.etcdapi and not aetcd_available():
        note(f"the etcd API workloads are skipped: {AETCD_HINT}")
        cfg = replace(cfg, etcdapi=False)
    with _data_root(cfg) as root:
        note("recording machine facts (fsync probe)")
        result = new_result(cfg, machine_facts(results_dir, root, etcd_bin), started,
                            sys.argv[1:])
        for system in _systems(cfg, root, etcd_bin):
            note(f"{system.name}: starting")
            t0 = time.monotonic()
            entry: dict[str, Any] = {}
            result["targets"][system.name] = entry
            with _recorded(system.name, entry):
                with system.start() as spec:
                    note(f"{system.name}: up, leader {spec.leader}")
                    measure(spec, cfg, system.everything, entry)
                    if system.etcdapi is not None:
                        _measure_etcdapi(spec, cfg, system.etcdapi, result)
            if system.etcdapi is not None and system.etcdapi not in result["targets"]:
                result["targets"][system.etcdapi] = {"error": f"not run: {system.name} failed"}
            note(f"{system.name}: stopped ({time.monotonic() - t0:.0f} s)")
        # Neighbours' load changes during a run on a shared machine; record it at the end too.
        result["machine"]["fsync_ms_at_end"] = fsync_latency(root)
        result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    result["elapsed_s"] = round(time.time() - started, 1)
    return result
