"""Soak: many fault drills in a row, each with its own seed; a summary at the end.

    flock /tmp/kvstore-cluster-tests.lock .venv/bin/python -m tests.faults.soak \\
        --runs 50 --nodes 3,5 --seconds 30 [--seed N] [--kinds kill,pause,...]

Run i uses seed N+i (N is random unless given, and printed), so any failing run is
repeated with ``--runs 1 --seed <its seed>`` and the same other options. The run
directories of failures (node logs, history.jsonl, stale.jsonl, report.txt) are kept
under --dir; those of passing runs are deleted. Exit status: 0 if every run passed.

The lock is taken by the caller (flock above), not here: a second flock on the same
file from inside the locked command would wait for itself forever.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.drill import DrillConfig, DrillResult, run_drill
from tests.faults.nemesis import KINDS

# Short client deadlines end many writes as "unknown" during elections (the store may
# still apply them later, which the checker must then explain); long ones mostly
# succeed after a failover, and exercise retries with the same write id.
OP_TIMEOUTS = (0.5, 1.5, 3.0)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.faults.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=10, help="number of drills (default 10)")
    p.add_argument(
        "--nodes",
        default="3",
        help="cluster size, or a comma list to alternate, e.g. 3,5 (default 3)",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="nemesis time per run (default 30)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first run")
    p.add_argument(
        "--kinds", default=",".join(KINDS), help=f"nemesis kinds (default all: {','.join(KINDS)})"
    )
    p.add_argument(
        "--overlap",
        action="store_true",
        help="let process faults and partitions overlap in time (two lanes)",
    )
    p.add_argument("--api", choices=("native", "etcd"), default="native",
                   help="the API the clients speak (default native; etcd: etcd's v3 KV)")
    p.add_argument("--watchers", type=int, default=0,
                   help="watches of the workload's keys, checked against the history")
    p.add_argument("--lockers", type=int, default=0,
                   help="threads taking one lock in turns (exclusion, fencing tokens)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--keys", type=int, default=4, help="keys (default 4)")
    p.add_argument(
        "--op-timeout",
        type=float,
        default=None,
        help="client call deadline in seconds (default: per run, one of "
        f"{', '.join(f'{t:g}' for t in OP_TIMEOUTS)} chosen by its seed)",
    )
    p.add_argument(
        "--attempt-timeout",
        type=float,
        default=None,
        help="one attempt's deadline (default: min(1, op-timeout / 2))",
    )
    p.add_argument(
        "--tick-ms",
        type=int,
        default=None,
        help="nodes' Raft tick (serve --tick-ms); small values make elections fast and frequent",
    )
    p.add_argument(
        "--election-ticks",
        type=int,
        default=None,
        help="nodes' election timeout in ticks (serve --election-ticks)",
    )
    p.add_argument(
        "--snapshot-entries",
        type=int,
        default=None,
        help="nodes' compaction threshold (serve --snapshot-entries, at least 10); small "
        "values make lagging nodes catch up by InstallSnapshot",
    )
    p.add_argument(
        "--dir", default=None, help="where run directories go (default: a new dir under $TMPDIR)"
    )
    p.add_argument("--keep", action="store_true", help="keep passing runs' directories too")
    p.add_argument("-v", "--verbose", action="store_true", help="print every nemesis event")
    args = p.parse_args(argv)
    try:
        args.node_counts = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        p.error(f"--nodes: expected numbers like 3 or 3,5, not {args.nodes!r}")
    if any(not 3 <= n <= 5 for n in args.node_counts):
        p.error("--nodes: clusters have 3 to 5 nodes")
    args.kind_list = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = set(args.kind_list) - set(KINDS)
    if unknown or not args.kind_list:
        p.error(f"--kinds: unknown {sorted(unknown)} (known: {', '.join(KINDS)})")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # Python's default SIGTERM action ends the process at once, skipping the drill's
    # teardown and leaving its nodes running; an exception unwinds through it instead.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    first_seed = args.seed if args.seed is not None else random.randrange(1, 1_000_000)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="kvstore-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    print(
        f"soak: {args.runs} runs, nodes {args.nodes}, {args.seconds:g}s each, kinds "
        f"{','.join(args.kind_list)}, first seed {first_seed}, dirs under {base}",
        flush=True,
    )
    settings = {
        key: value
        for key, value in (
            ("tick_ms", args.tick_ms),
            ("election_ticks", args.election_ticks),
            ("snapshot_entries", args.snapshot_entries),
        )
        if value is not None
    }
    results: list[DrillResult] = []
    started = time.monotonic()
    for i in range(args.runs):
        seed = first_seed + i
        op_timeout = args.op_timeout or random.Random(f"timeout-{seed}").choice(OP_TIMEOUTS)
        attempt = args.attempt_timeout or min(1.0, op_timeout / 2)
        config = DrillConfig(
            nodes=args.node_counts[i % len(args.node_counts)],
            seconds=args.seconds,
            seed=seed,
            kinds=args.kind_list,
            overlap=args.overlap,
            api=args.api,
            watchers=args.watchers,
            lockers=args.lockers,
            clients=args.clients,
            keys=args.keys,
            op_timeout=op_timeout,
            attempt_timeout=attempt,
            settings=settings,
        )
        run_dir = base / f"run-{seed}"

        def say(text: str, _i: int = i) -> None:
            if args.verbose:
                print(f"    [{_i + 1}] {text}", flush=True)

        result = run_drill(config, run_dir, log=say)
        results.append(result)
        print(f"run {i + 1}/{args.runs}: {result.summary()}", flush=True)
        if result.ok:
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(result.report(), flush=True)
    failed = [r for r in results if not r.ok]
    print()
    print("soak summary")
    print(
        f"  runs:              {len(results)} ({len(failed)} failed) "
        f"in {time.monotonic() - started:.0f}s"
    )
    print(f"  ops recorded:      {sum(len(r.operations) for r in results)}")
    print(f"  ops checked:       {sum(r.ops_checked for r in results)} (linearizability)")
    print(f"  stale reads:       {sum(len(r.stale_reads) for r in results)}")
    print(f"  faults injected:   {sum(len(r.schedule) for r in results)}")
    for r in failed:
        first = r.problems[0].splitlines()[0]
        print(f"  FAILED seed {r.config.seed} (nodes {r.config.nodes}): {first}")
        print(f"    evidence: {r.run_dir}/report.txt; repeat: {r.config.command()}")
    if not failed and not args.keep and args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
