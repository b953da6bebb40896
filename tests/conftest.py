"""Repository-wide pytest options. Kept minimal: options must be registered here, in the
rootdir conftest, to be accepted whichever test directory pytest is pointed at."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed",
        type=int,
        default=None,
        help="tests/sim: replay this one simulation seed instead of the CI seed set",
    )
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="tests/raft/test_interactions.py: write the actual output of each script into "
        "tests/raft/testdata/*.txt instead of comparing (review the result with git diff)",
    )
