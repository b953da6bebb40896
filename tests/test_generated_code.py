"""The gRPC/protobuf code in kvstore/v1 is committed (so `pip install .` needs no codegen);
this test proves it is exactly what proto/ generates."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = sorted((ROOT / "proto" / "kvstore" / "v1").glob("*.proto"))
ETCD_PROTOS = sorted((ROOT / "proto" / "kvstore" / "etcdpb").glob("*.proto"))


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
           f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
           f"--pyi_out={tmp_path}", *map(str, PROTOS)]
    subprocess.run(cmd, check=True)
    fresh = tmp_path / "kvstore" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names, "protoc produced nothing"
    stale = [n for n in names if not filecmp.cmp(fresh / n, ROOT / "kvstore" / "v1" / n,
                                                 shallow=False)]
    assert not stale, (f"kvstore/v1 is out of date for {stale}; regenerate with: "
                       "python -m grpc_tools.protoc -Iproto --python_out=. "
                       "--grpc_python_out=. --pyi_out=. proto/kvstore/v1/*.proto")


def test_etcd_messages_match_proto(tmp_path: Path) -> None:
    """etcd's messages (no services: kvstore registers etcd's service names itself)."""
    pytest.importorskip("grpc_tools")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
           f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", *map(str, ETCD_PROTOS)]
    subprocess.run(cmd, check=True)
    fresh = tmp_path / "kvstore" / "etcdpb"
    names = sorted(p.name for p in fresh.iterdir())
    assert names, "protoc produced nothing"
    stale = [n for n in names if not filecmp.cmp(fresh / n, ROOT / "kvstore" / "etcdpb" / n,
                                                 shallow=False)]
    assert not stale, (f"kvstore/etcdpb is out of date for {stale}; regenerate with: "
                       "python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. "
                       "proto/kvstore/etcdpb/*.proto")
