"""The CI set of fault drills: a few short seeded runs across cluster sizes and faults.

Each run takes about 20-30 s of wall time; the whole set stays under ~3 minutes on a
2-core machine. Seeds are fixed so that CI runs the same schedules every time (the
timing of real processes still varies from run to run); set KVSTORE_FAULTS_SEED=N to
shift every seed by N and explore other schedules. Longer and more varied runs:
``python -m tests.faults.soak`` (see its docstring).

On failure the report names the seed, the planned schedule, what the nemesis actually
did and when, the checker's explanation with the last operations on the bad key, and
the tails of the node logs; the run directory keeps the full history.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.faults.drill import DrillConfig, run_drill
from tests.faults.nemesis import plan

SEED_SHIFT = int(os.environ.get("KVSTORE_FAULTS_SEED", "0"))


@dataclass(frozen=True)
class Case:
    name: str
    config: DrillConfig


# Cases with a small "snapshot_entries" compact their logs every few dozen writes, so a
# node that was killed or cut off catches up by InstallSnapshot rather than from the log;
# the others never compact (the default threshold is far above a run's writes).
SNAPSHOTS_OFTEN = {"snapshot_entries": 50}

CASES = [
    # Crashes: the leader and followers kill -9'd, and a majority at once (all restart
    # from disk): nothing acknowledged may be lost.
    Case(
        "crash-3",
        DrillConfig(
            nodes=3,
            seconds=18,
            seed=1,
            kinds=("kill", "kill-majority"),
            op_timeout=1.5,
            attempt_timeout=0.75,
            settings=SNAPSHOTS_OFTEN,
        ),
    ),
    # Pauses with short client deadlines: many writes end "unknown" and commit later.
    Case(
        "pause-3",
        DrillConfig(
            nodes=3,
            seconds=18,
            seed=1,
            kinds=("pause", "pause-majority"),
            op_timeout=0.5,
            attempt_timeout=0.25,
        ),
    ),
    Case(
        "partition-3",
        DrillConfig(
            nodes=3,
            seconds=18,
            seed=6,
            kinds=("isolate", "split", "one-way"),
            settings=SNAPSHOTS_OFTEN,
        ),
    ),
    Case(
        "partition-5",
        DrillConfig(
            nodes=5,
            seconds=20,
            seed=6,
            kinds=("bridge", "split", "one-way", "isolate"),
            op_timeout=1.5,
            attempt_timeout=0.75,
            settings={"snapshot_entries": 100},
        ),
    ),
    Case(
        "mixed-5",
        DrillConfig(
            nodes=5,
            seconds=20,
            seed=28,
            kinds=("kill", "pause", "kill-majority", "pause-majority", "bridge"),
            op_timeout=1.0,
            attempt_timeout=0.5,
        ),
    ),
    # Overlapping faults: nodes killed or paused while partitioned, partitions healing
    # while a majority is down.
    Case(
        "storm-3",
        DrillConfig(
            nodes=3,
            seconds=20,
            seed=9,
            overlap=True,
            op_timeout=1.0,
            attempt_timeout=0.5,
            settings=SNAPSHOTS_OFTEN,
        ),
    ),
    # The same guarantees through etcd's v3 API (Range, Put, DeleteRange, Txn): followers
    # forward to the leader, writes carry no write id (at-least-once, as with etcd).
    Case(
        "etcd-api-3",
        DrillConfig(
            nodes=3,
            seconds=18,
            seed=3,
            kinds=("kill", "isolate", "pause"),
            op_timeout=1.5,
            attempt_timeout=0.75,
            settings=SNAPSHOTS_OFTEN,
            api="etcd",
        ),
    ),
    # Watches and a lock under crashes, pauses and partitions: every watcher sees the
    # whole history once, in order; lock holds never overlap, tokens only grow.
    Case(
        "coordination-3",
        DrillConfig(
            nodes=3,
            seconds=18,
            seed=5,
            kinds=("kill", "pause", "isolate"),
            op_timeout=1.5,
            attempt_timeout=0.75,
            watchers=2,
            lockers=3,
        ),
    ),
]


def _shifted(config: DrillConfig) -> DrillConfig:
    return replace(config, seed=config.seed + SEED_SHIFT)


@pytest.mark.faults
@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_drill(case: Case, tmp_path: Path) -> None:
    config = _shifted(case.config)
    result = run_drill(config, tmp_path / "drill")
    print(result.report())  # shown by pytest for failures (and with -s)
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)
    assert result.ops_checked > 0


def test_the_ci_schedules_cover_their_kinds() -> None:
    """Guards the CI set's coverage: each case's seed plans every kind it names, and
    aims at the leader at least once (a change to the planner would silently shift
    what CI exercises)."""
    for case in CASES:
        c = case.config
        faults = plan(c.seed, c.kinds, c.seconds, c.overlap)
        if c.overlap:
            assert {f.lane for f in faults} == {0, 1}, case.name
            continue
        assert {f.kind for f in faults} == set(c.kinds), case.name
        assert any(f.at_leader for f in faults), case.name
