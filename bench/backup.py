"""Backup and restore times: `python -m bench.backup [--keys 100000] [--value-bytes 100]`.

A fresh 3-node cluster is loaded with KEYS keys, then timed:
    save      `kvstore snapshot save FILE` (one member's state streamed to a file)
    status    `kvstore snapshot status FILE` (SHA-256 check and header)
    restore   `kvstore cluster restore FILE --nodes 3` into a new directory: the three data
              dirs built from the file, the nodes started and a leader elected
The restored cluster is checked: its revision and key count equal the file's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.localcluster import KVSTORE, free_base_port, local_cluster, run_cli
from bench.membership import _load
from kvstore.client import KVClient
from kvstore.cluster.layout import METRICS_PORT_OFFSET, PEER_PORT_OFFSET


def _timed(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = run_cli(*args, timeout=900).stdout.strip()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.backup")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvstore-bench-backup-"))
    file = work / "backup.db"
    with local_cluster(3) as cluster:
        load_s = asyncio.run(_load(cluster.endpoints, args.keys, b"v" * args.value_bytes))
        print(f"loaded {args.keys} keys in {load_s:.1f} s", flush=True)
        save_s, out = _timed("snapshot", "save", str(file), "--dir", str(cluster.directory))
        print(out, flush=True)
    status_s, out = _timed("snapshot", "status", str(file), "--json")
    status = json.loads(out)
    base = free_base_port(3, offsets=(0, PEER_PORT_OFFSET, METRICS_PORT_OFFSET))
    target = work / "restored"
    try:
        restore_s, out = _timed("cluster", "restore", str(file), "--nodes", "3",
                                "--base-port", str(base), "--dir", str(target))
        print(out.splitlines()[-1], flush=True)
        with KVClient([f"127.0.0.1:{base + i}" for i in range(3)], timeout=30) as c:
            got = c.range(b"\0", b"\0", count_only=True)
        ok = got.revision == status["revision"] and got.count == status["keys"]
    finally:
        subprocess.run([*KVSTORE, "cluster", "down", "--dir", str(target)],
                       capture_output=True, timeout=120)
        file_bytes = os.path.getsize(file)
        shutil.rmtree(work, ignore_errors=True)
    result = {"keys": args.keys, "value_bytes": args.value_bytes,
              "file_bytes": file_bytes, "save_seconds": round(save_s, 2),
              "status_seconds": round(status_s, 2),
              "cluster_restore_seconds": round(restore_s, 2),
              "restored_revision_and_keys_match": ok}
    print(json.dumps(result, indent=2))
    if not ok:
        raise SystemExit("the restored cluster does not hold the saved state")


if __name__ == "__main__":
    main()
