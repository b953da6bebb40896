"""Helpers to run the `kvstore` CLI as a subprocess, the way a user would.

Kept out of conftest.py so test modules can import them by a unique module name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

Run = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60.0,
    input: str | None = None,  # noqa: A002 - subprocess.run's name
) -> subprocess.CompletedProcess[str]:
    """Run `python -m kvstore.cli ARGS...` (works whether or not kvstore is installed);
    ``input`` is written to its stdin (else stdin is empty)."""
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input if input is not None else "",
    )


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    env.update(extra or {})
    return env


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, no traceback, exactly one line on stderr that mentions every needle."""
    err = result.stderr
    assert result.returncode != 0, (result.returncode, result.stdout, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kvstore: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


@contextmanager
def running_cluster(directory: Path, cwd: Path) -> Iterator[Any]:
    """A 3-node `kvstore cluster up` cluster (tests/integration's helpers) with an elected
    leader, stopped on exit whatever happened (its node logs printed if the block failed);
    fails if a node process survives the teardown."""
    from tests.integration.cluster_util import (
        Cluster,
        start_local_cluster,
        stop_local_cluster,
    )

    cluster: Cluster | None = None
    try:
        cluster = start_local_cluster(directory, cwd, 3)
        cluster.leader()
        yield cluster
    except BaseException:
        if cluster is not None:
            print(f"\nnode logs of {directory}:\n{cluster.log_tails()}")
        raise
    finally:
        leftovers = stop_local_cluster(cluster or Cluster(directory, 0, 3, cwd))
        assert not leftovers, f"node processes survived teardown: {leftovers}"
