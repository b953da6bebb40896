"""Seed selection for the simulation tests.

By default `test_seed` runs the fixed CI set: seeds 0..CI_SEEDS-1 on 3 and on 5 nodes.
`pytest tests/sim --seed 1234` replays that one seed instead (add `-k n5` for one size).
"""

from __future__ import annotations

import pytest

CI_SEEDS = 100  # per cluster size: 2 * CI_SEEDS runs
CLUSTER_SIZES = (3, 5)


def ci_cases() -> list[tuple[int, int]]:
    """(nodes, seed) of every CI run, in the order the mutation tests search them."""
    return [(n, s) for s in range(CI_SEEDS) for n in CLUSTER_SIZES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sim_case" not in metafunc.fixturenames:
        return
    seed = metafunc.config.getoption("--seed")
    if seed is not None:
        cases = [(n, seed) for n in CLUSTER_SIZES]
    else:
        cases = ci_cases()
    metafunc.parametrize("sim_case", cases, ids=[f"n{n}-s{s}" for n, s in cases])


@pytest.fixture
def replay_seed(request: pytest.FixtureRequest) -> int | None:
    """The seed given with --seed, if any."""
    return request.config.getoption("--seed")
