"""Python modules for the subset of etcd's v3 API in proto/etcd/etcd_kv_subset.proto.

Why compiled at run time into a temporary directory instead of committed: generated
gRPC code is pinned to the grpcio-tools version that made it (kvstore/v1 refuses older
runtimes), and only the etcd comparison needs it, so the suite compiles it when `--etcd`
is given, with the grpcio-tools of the venv (the `bench` extra). Worker processes get the
directory and import from it without compiling again.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from bench.sysinfo import REPO_ROOT

PROTO = REPO_ROOT / "proto" / "etcd" / "etcd_kv_subset.proto"
MODULE = PROTO.stem + "_pb2"


class EtcdProtoError(RuntimeError):
    """The etcd API modules cannot be built; the message says what to install."""


def compile_etcd_proto(out_dir: Path) -> Path:
    """Run grpc_tools.protoc on the etcd subset proto into `out_dir`; returns `out_dir`."""
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        raise EtcdProtoError(
            "driving etcd needs grpcio-tools to compile proto/etcd/etcd_kv_subset.proto: "
            "pip install -e '.[bench]' (or pip install grpcio-tools)") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
           f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(PROTO)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EtcdProtoError(f"protoc failed on {PROTO}: {proc.stderr.strip()}")
    return out_dir


def load_etcd_modules(out_dir: str) -> tuple[ModuleType, ModuleType]:
    """(messages module, gRPC stubs module) from a directory made by compile_etcd_proto."""
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    return importlib.import_module(MODULE), importlib.import_module(MODULE + "_grpc")
