"""How long `kvstore cluster add-node` takes to bring a new voter into a loaded cluster:
`python -m bench.membership [--keys 100000] [--value-bytes 100]`.

A fresh 3-node cluster is loaded with KEYS distinct keys (asyncio client, 256 writes in
flight), then `kvstore cluster add-node` is timed end to end: the new member is added as a
learner, its process starts with --join, it catches up (with this many entries the
leader's log has been compacted, so by an InstallSnapshot of the whole state), it is
promoted to voter, and cluster.json is updated. Afterwards the new node's state digest is
compared with the leader's (Admin.Digest) and a sample of keys is read from it (stale
reads: its own state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc

from bench.localcluster import local_cluster, run_cli
from kvstore.client import KVClient
from kvstore.client.aio import AsyncKVClient
from kvstore.v1 import admin_pb2, admin_pb2_grpc


async def _load(endpoints: list[str], keys: int, value: bytes, in_flight: int = 256) -> float:
    t0 = time.perf_counter()
    async with AsyncKVClient(endpoints, timeout=30.0) as client:
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                await client.put(f"key/{i:08d}", value)

        await asyncio.gather(*(one(i) for i in range(keys)))
    return time.perf_counter() - t0


def _digest(peer_address: str) -> admin_pb2.DigestResponse:
    with grpc.insecure_channel(peer_address) as channel:
        return admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(), timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.membership")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    args = ap.parse_args()
    with local_cluster(3) as cluster:
        load_s = asyncio.run(_load(cluster.endpoints, args.keys, b"v" * args.value_bytes))
        print(f"loaded {args.keys} keys in {load_s:.1f} s", flush=True)
        t0 = time.perf_counter()
        out = run_cli("cluster", "add-node", "--dir", str(cluster.directory),
                      "--timeout", "600", timeout=700).stdout.strip()
        add_s = time.perf_counter() - t0
        print(out, flush=True)
        state = json.loads((cluster.directory / "cluster.json").read_text())
        new = state["nodes"][-1]
        leader = cluster.leader()
        old = next(n for n in state["nodes"] if n["id"] == leader)
        deadline = time.monotonic() + 60
        while True:
            a, b = _digest(old["peer_address"]), _digest(new["peer_address"])
            if a.applied_index == b.applied_index or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        same = list(a.shard_digests) == list(b.shard_digests)
        with KVClient([new["address"]], timeout=10.0) as c:
            sample = [f"key/{i:08d}" for i in range(0, args.keys, max(1, args.keys // 100))]
            missing = [k for k in sample if c.get(k, stale=True) is None]
        data_bytes = sum(p.stat().st_size for p in (cluster.directory / new["id"]).rglob("*")
                         if p.is_file())
    result = {"keys": args.keys, "value_bytes": args.value_bytes,
              "load_seconds": round(load_s, 1), "add_node_seconds": round(add_s, 2),
              "new_node": new["id"], "digests_equal": same, "sampled_keys_missing": missing,
              "new_node_data_dir_bytes": data_bytes}
    print(json.dumps(result, indent=2))
    if not same or missing:
        raise SystemExit("the new node's state differs from the leader's")


if __name__ == "__main__":
    main()
