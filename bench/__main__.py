"""Commit latency and throughput of kvstore, side by side with etcd and a no-op floor.

    python -m bench --quick        # about a minute: 3-node kvstore and the floor
    python -m bench                # the full suite (3 and 5 nodes, sizes, 1..256 in flight)
    python -m bench --etcd         # the same, plus a local 3-node etcd cluster

The main kvstore cluster and etcd are also measured through the etcd API with the aetcd
client (kvstore-3-etcdapi, etcd-3-aetcd); --no-etcdapi skips that.

Every system is started fresh on loopback with its data in a temporary directory, measured,
and always stopped. Results go to bench/results/<time>-<mode>/: results.json, table.md and
PNG plots; the table and the target verdicts are also printed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from bench.etcdcluster import EtcdMissing
from bench.profile import ProfilerMissing, py_spy
from bench.report import (
    PLOT_HINT,
    evaluate_targets,
    render_markdown,
    validate_result,
    write_plots,
)
from bench.suite import FULL, PHASES, QUICK, SuiteConfig, run_suite


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _phases(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [v for v in values if v not in PHASES]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"phases are {','.join(PHASES)}; got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> SuiteConfig:
    """Command line -> SuiteConfig: a preset (full or --quick) with explicit overrides."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, about a minute")
    ap.add_argument("--etcd", action="store_true",
                    help="also start and measure a local etcd cluster (needs /usr/bin/etcd)")
    ap.add_argument("--etcd-bin", help="etcd binary (default: etcd on PATH, /usr/bin/etcd)")
    ap.add_argument("--no-floor", action="store_true", help="skip the no-op floor server")
    ap.add_argument("--no-etcdapi", action="store_true",
                    help="skip the etcd API runs through aetcd (kvstore-N-etcdapi, etcd-N-aetcd)")
    ap.add_argument("--nodes", type=_ints,
                    help="kvstore cluster sizes, the first being the main one (full: 3,5)")
    ap.add_argument("--phases", type=_phases, help=f"subset of {','.join(PHASES)}")
    ap.add_argument("--puts", type=int, help="sequential puts (full 5000, quick 1000)")
    ap.add_argument("--reads", type=int, help="sequential gets of each kind")
    ap.add_argument("--value-size", type=int, help="value size of the main workloads (16)")
    ap.add_argument("--value-sizes", type=_ints, help="sizes for the put sweep (16,256,4096,65536)")
    ap.add_argument("--size-puts", type=int, help="sequential puts per value size")
    ap.add_argument("--levels", type=_ints, help="writes in flight (1,16,64,256)")
    ap.add_argument("--read-levels", type=_ints, help="reads in flight (64)")
    ap.add_argument("--procs", type=int, help="client processes for the load (2)")
    ap.add_argument("--duration", type=float, help="measured seconds per load level")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds before each level")
    ap.add_argument("--out", help="results directory (bench/results)")
    ap.add_argument("--data-dir", help="where the servers' temporary data goes (system temp)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy profiles of kvstore's nodes during the sequential puts "
                         "(needs py-spy: pip install -e '.[bench]')")
    a = ap.parse_args(argv)
    base = QUICK if a.quick else FULL
    overrides = {
        "etcd": a.etcd, "etcd_bin": a.etcd_bin, "floor": not a.no_floor,
        "etcdapi": not a.no_etcdapi, "nodes": a.nodes,
        "phases": a.phases, "seq_puts": a.puts, "seq_reads": a.reads,
        "value_size": a.value_size, "value_sizes": a.value_sizes, "size_puts": a.size_puts,
        "levels": a.levels, "read_levels": a.read_levels, "processes": a.procs,
        "duration": a.duration, "warmup": a.warmup, "out": a.out, "data_dir": a.data_dir,
        "plots": not a.no_plots, "profile": a.profile or None,
    }
    cfg = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if cfg.processes < 1 or cfg.seq_puts < 1 or cfg.seq_reads < 1 or cfg.size_puts < 1:
        ap.error("--procs, --puts, --reads and --size-puts must be at least 1")
    if cfg.duration <= 0 or cfg.warmup < 0:
        ap.error("--duration must be positive and --warmup not negative")
    return cfg


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every started server is stopped on the way out."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    out = Path(cfg.out) / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.mode}"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.profile:
        try:
            py_spy()
        except ProfilerMissing as exc:
            print(f"python -m bench: {exc}", file=sys.stderr)
            out.rmdir()
            return 2
        cfg = replace(cfg, profile_dir=str(out / "profiles"))
    try:
        result = run_suite(cfg, out)
    except EtcdMissing as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        out.rmdir()  # nothing was measured
        return 2
    except KeyboardInterrupt:
        print("python -m bench: interrupted; every server it started was stopped",
              file=sys.stderr)
        return 130
    result["checks"] = evaluate_targets(result)
    for problem in validate_result(result):  # a bug in the suite, not in the system measured
        print(f"python -m bench: result shape: {problem}", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render_markdown(result, result["checks"])
    (out / "table.md").write_text(text)
    print()
    print(text)
    main_name = f"kvstore-{cfg.nodes[0]}"
    put = result["targets"].get(main_name, {}).get("latency", {}).get("put")
    if put:
        print(f"commit latency ({main_name}, sequential put, {cfg.value_size} B): "
              f"p50 {put['p50']:.2f} ms, p99 {put['p99']:.2f} ms")
    if cfg.plots:
        try:
            for path in write_plots(result, out):
                print(f"plot: {path}")
        except ImportError:
            print(PLOT_HINT, file=sys.stderr)
    print(f"results: {out / 'results.json'} (run time {result['elapsed_s']:.0f} s)")
    failed = [n for n, t in result["targets"].items() if "error" in t]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
