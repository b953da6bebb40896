"""Sequential put latency through kvstore's own API and through etcd's API, on one fresh
local 3-node cluster: `python -m bench.apis [--puts N] [--value-size B]`.

Both clients talk to the leader's client port (the native client finds it by itself; the
etcd-API client is pointed at it, as an etcd client would be after its first call), one
put at a time, after a warm-up, so the two figures differ only by the API path: the
native put carries a write id and runs through the session table; the etcd Put does not.
"""

from __future__ import annotations

import argparse
import time

import grpc

from bench.localcluster import local_cluster
from bench.stats import percentile
from kvstore.client import KVClient
from kvstore.etcdapi.methods import stub
from kvstore.etcdpb import rpc_pb2 as pb

WARMUP = 100


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (f"p50 {percentile(ordered, 50) * 1000:.2f} ms, "
            f"p99 {percentile(ordered, 99) * 1000:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--puts", type=int, default=1000)
    ap.add_argument("--value-size", type=int, default=16)
    args = ap.parse_args()
    value = b"v" * args.value_size
    with local_cluster(3) as cluster, KVClient(cluster.endpoints) as client:
        for i in range(WARMUP):
            client.put(f"warm{i}", value)
        leader = client.get_result("warm0").node
        native = []
        for i in range(args.puts):
            t = time.perf_counter()
            client.put(f"native{i}", value)
            native.append(time.perf_counter() - t)
        address = cluster.endpoints[int(leader.lstrip("n")) - 1]
        with grpc.insecure_channel(address) as channel:
            kv = stub(channel, "etcdserverpb.KV")
            for _ in range(WARMUP):
                kv.Put(pb.PutRequest(key=b"warm-etcd", value=value), timeout=10)
            etcd = []
            for i in range(args.puts):
                t = time.perf_counter()
                kv.Put(pb.PutRequest(key=f"etcd{i}".encode(), value=value), timeout=10)
                etcd.append(time.perf_counter() - t)
    print(f"sequential put, 3 nodes, {args.puts} puts of {args.value_size} B, to the leader")
    print(f"  kvstore API: {_ms(native)}")
    print(f"  etcd API:    {_ms(etcd)}")


if __name__ == "__main__":
    main()
