"""Snapshots and compaction on a real cluster: `python -m bench.compaction`.

Two measurements (each on a fresh local 3-node cluster, brought down at the end):

- catch-up: load `--keys` distinct keys, then rebuild one follower from nothing with
  `kvstore cluster resync` and time until its applied index reaches the leader's commit;
- disk bound: `--writes` puts cycling over `--keyspace` keys with compaction on, printing
  each node's data-dir size and log length as the writes go, so a reader can see them stay
  bounded while the write count grows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import grpc

from bench.localcluster import LocalCluster, local_cluster, run_cli
from kvstore.client import AsyncKVClient
from kvstore.v1 import kv_pb2, kv_pb2_grpc


def _status(address: str) -> kv_pb2.StatusResponse:
    with grpc.insecure_channel(address) as channel:
        return kv_pb2_grpc.KVStub(channel).Status(kv_pb2.StatusRequest(), timeout=5)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def _load(endpoints: list[str], n: int, keyspace: int, in_flight: int = 256,
                report_every: int = 0, on_report=None) -> float:
    """Put n values over `keyspace` keys with `in_flight` concurrent writers; returns ops/s."""
    done = 0
    start = time.perf_counter()
    async with AsyncKVClient(endpoints, timeout=30.0) as client:
        async def writer(w: int) -> None:
            nonlocal done
            for i in range(w, n, in_flight):
                await client.put(f"key-{i % keyspace:08d}", f"value-{i}")
                done += 1
                if report_every and done % report_every == 0 and on_report is not None:
                    on_report(done)
        await asyncio.gather(*(writer(w) for w in range(in_flight)))
    return n / (time.perf_counter() - start)


def catch_up(cluster: LocalCluster, keys: int) -> dict:
    rate = asyncio.run(_load(cluster.endpoints, keys, keys))
    leader = cluster.leader()
    follower = next(n["id"] for n in cluster.status() if n["id"] != leader)
    address = cluster.endpoints[int(follower[1:]) - 1]
    target = _status(cluster.endpoints[int(leader[1:]) - 1]).commit_index
    t0 = time.perf_counter()
    run_cli("cluster", "resync", follower, "--dir", str(cluster.directory))
    while True:
        try:
            if _status(address).applied_index >= target:
                break
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    return {"keys": keys, "load_ops_per_s": round(rate), "follower": follower,
            "catch_up_seconds": round(seconds, 2), "target_index": target}


def disk_bound(cluster: LocalCluster, writes: int, keyspace: int) -> dict:
    samples = []

    def sample(done: int) -> None:
        sizes = {p.name: _dir_bytes(p) for p in sorted(cluster.directory.glob("n[0-9]"))}
        logs = {}
        for i, ep in enumerate(cluster.endpoints):
            st = _status(ep)
            logs[f"n{i + 1}"] = st.last_log_index - st.snapshot_index
        samples.append({"writes": done, "data_dir_bytes": sizes, "log_entries": logs})
        dirs = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
        print(f"{done:>9} writes: data dirs {dirs}; log entries {max(logs.values())}",
              flush=True)

    rate = asyncio.run(_load(cluster.endpoints, writes, keyspace,
                             report_every=max(1, writes // 10), on_report=sample))
    return {"writes": writes, "keyspace": keyspace, "ops_per_s": round(rate), "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.compaction", description=__doc__)
    ap.add_argument("--keys", type=int, default=100_000, help="keys loaded before catch-up")
    ap.add_argument("--writes", type=int, default=1_000_000)
    ap.add_argument("--keyspace", type=int, default=10_000)
    ap.add_argument("--skip-catch-up", action="store_true")
    ap.add_argument("--skip-disk", action="store_true")
    args = ap.parse_args()
    result: dict = {}
    if not args.skip_catch_up:
        with local_cluster(3) as cluster:
            result["catch_up"] = catch_up(cluster, args.keys)
            print(json.dumps(result["catch_up"]), flush=True)
    if not args.skip_disk:
        with local_cluster(3) as cluster:
            result["disk"] = disk_bound(cluster, args.writes, args.keyspace)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"compaction-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path} (pid {os.getpid()})")


if __name__ == "__main__":
    main()
