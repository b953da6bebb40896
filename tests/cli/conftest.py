"""Fixtures for the CLI tests (helpers live in cli_util.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_util import Run, run_cli


@pytest.fixture
def kvstore(tmp_path: Path) -> Run:
    """Run `kvstore ARGS...` in tmp_path (so ./kvstore-cluster is empty); returns the result."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=tmp_path, env=env, timeout=timeout)

    return run
