"""pytest set-up of the fault drills: the ``faults`` marker.

The marker is registered here rather than in pyproject.toml so that the drills stay
self-contained. Drills are also marked ``integration`` (they start real processes),
so ``-m "not integration"`` skips them with the other real-process suites. Run them
alone on a machine, like every real-cluster suite:

    flock /tmp/kvstore-cluster-tests.lock .venv/bin/python -m pytest -m faults
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault drills on real processes (kill -9, SIGSTOP, partitions) checked "
        "for linearizability, lost writes and replica convergence",
    )
