"""Commit latency of a local cluster: `python -m bench [--quick] [--nodes N]`.

Starts a fresh cluster with `kvstore cluster up` in a temporary directory, runs sequential
puts from one client (each waits for majority commit and apply), then linearizable and
stale gets, prints p50/p90/p99/p99.9/max in milliseconds, writes JSON under bench/results/,
and always brings the cluster down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from bench.localcluster import local_cluster
from bench.stats import summary_ms
from kvstore.client import KVClient


def _timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def run(nodes: int, puts: int, reads: int, value_size: int) -> dict:
    value = os.urandom(value_size)
    with local_cluster(nodes) as cluster:
        with KVClient(cluster.endpoints, timeout=10.0) as client:
            for i in range(50):  # warm up channels and leader discovery
                client.put(f"warm-{i}", value)
            put = _timed(lambda i: client.put(f"key-{i % 1000}", value), puts)
            lin = _timed(lambda i: client.get(f"key-{i % 1000}"), reads)
        leader = cluster.leader()
        follower = next(e for e, n in zip(cluster.endpoints, cluster.status(), strict=True)
                        if n["id"] != leader)
        with KVClient([follower], timeout=10.0) as fclient:
            stale = _timed(lambda i: fclient.get(f"key-{i % 1000}", stale=True), reads)
    return {
        "nodes": nodes,
        "value_size": value_size,
        "put_ms": summary_ms(put),
        "linearizable_get_ms": summary_ms(lin),
        "stale_get_ms": summary_ms(stale),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, about a minute")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--puts", type=int, default=None)
    ap.add_argument("--value-size", type=int, default=16)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    puts = args.puts or (1000 if args.quick else 5000)
    result = run(args.nodes, puts, max(200, puts // 2), args.value_size)
    print(f"kvstore, {args.nodes} nodes, {args.value_size} B values, one sequential client")
    print(f"{'operation':<22}{'n':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}  (ms)")
    for name in ("put_ms", "linearizable_get_ms", "stale_get_ms"):
        s = result[name]
        print(f"{name[:-3]:<22}{s['n']:>7}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}"
              f"{s['p99.9']:>9.2f}{s['max']:>9.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"latency-{args.nodes}n-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
