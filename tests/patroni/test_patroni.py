"""Patroni (Debian's 3.0.2, a program nobody here wrote) keeps two PostgreSQL members highly
available with a `kvstore cluster up` cluster as its etcd, through etcd's JSON gateway.

The drill itself is scripts/patroni_drill.py (also run by hand, against kvstore or a real
etcd for comparison); this test runs it against kvstore in a subprocess and asserts that
every step passed: a primary elected with a streaming replica, a row replicated, failover
after kill -9 of the primary's Patroni and postmaster (within TTL plus a few loops, checked
by the drill), the old primary's rejoin (pg_rewind), `patronictl switchover`, and the same
failover and rejoin while the kvstore leader is killed and restarted. The drill runs in its
own process because it makes itself a child subreaper to reap and stop every postmaster
and node it leaves behind, which must not change pytest's own process.

Skipped, saying what is missing, where patroni or PostgreSQL 15 are not installed (CI
installs them: .ci/run). Run alone on a machine, like every real-cluster suite:

    flock /tmp/kvstore-cluster-tests.lock .venv/bin/python -m pytest tests/patroni
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
DRILL = REPO / "scripts" / "patroni_drill.py"
# A whole drill takes about a minute; these are only there so that a hang fails the test
# (and the drill still cleans up on SIGTERM) instead of blocking CI.
DRILL_DEADLINE = 360.0
CLEANUP_DEADLINE = 60.0
STEPS = [
    "DCS up",
    "bootstrap: primary elected, replica streaming",
    "row replicated",
    "failover after kill -9 of primary",
    "old primary rejoins as replica",
    "patronictl switchover",
    "failover with the DCS leader killed",
    "DCS member restarted",
    "old primary rejoins (DCS whole again)",
    "all rows on both, patronictl list",
]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(DRILL_DEADLINE + CLEANUP_DEADLINE + 60)]


def load_drill() -> ModuleType:
    """scripts/ is not a package: load the drill module from its file (for its checks)."""
    spec = importlib.util.spec_from_file_location("patroni_drill", DRILL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_patroni_fails_over_rejoins_and_switches_over_on_kvstore(tmp_path: Path) -> None:
    missing = load_drill().missing_prerequisites()
    if missing:
        pytest.skip(f"Patroni drill needs {', '.join(missing)} "
                    "(apt-get install patroni postgresql; .ci/run installs them)")
    if not (REPO / ".venv" / "bin" / "kvstore").exists():
        pytest.skip("no .venv/bin/kvstore (scripts/test.sh installs it)")
    out_json = tmp_path / "steps.json"
    log = tmp_path / "drill.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(DRILL), "--dcs", "kvstore",
                                 "--json", str(out_json)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            rc = proc.wait(DRILL_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the drill stops what it started, then exits
            try:
                proc.wait(CLEANUP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            pytest.fail(f"the drill took more than {DRILL_DEADLINE:.0f}s:\n{log.read_text()}")
    output = log.read_text()
    assert out_json.exists(), f"the drill wrote no results (rc {rc}):\n{output}"
    result = json.loads(out_json.read_text())
    failed = [s for s in result["steps"] if not s["ok"]]
    assert rc == 0 and result["ok"] and not failed, (
        f"drill failed (rc {rc}) at {failed}:\n{output}")
    assert [s["name"] for s in result["steps"]] == STEPS, output
    print(output.split("\nstep (kvstore)", 1)[-1])
