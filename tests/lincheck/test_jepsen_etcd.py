"""The checker against Jepsen etcd histories with known answers (see the data's README.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from kvstore.lincheck import check
from kvstore.lincheck.jepsen import JEPSEN_KEY, load_jepsen_log

# The shared test data lives beside the checkout: <parent>/main (repo) and <parent>/shared.
DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "jepsen-etcd"

if not (DATA_DIR / "expected.csv").is_file():
    pytest.skip(
        f"Jepsen etcd test data not found at {DATA_DIR} "
        "(expected a 'shared/' checkout beside the repository)",
        allow_module_level=True,
    )


def _expected() -> dict[str, bool]:
    answers = {"true": True, "false": False}
    with (DATA_DIR / "expected.csv").open(newline="", encoding="utf-8") as f:
        return {row["file"]: answers[row["linearizable"]] for row in csv.DictReader(f)}


EXPECTED = _expected()


def test_expected_answers_cover_every_log() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in DATA_DIR.glob("*.log"))
    assert len(EXPECTED) == 102
    assert sum(EXPECTED.values()) == 23


@pytest.mark.parametrize(("name", "linearizable"), sorted(EXPECTED.items()))
def test_known_answer(name: str, linearizable: bool) -> None:
    result = check(load_jepsen_log(DATA_DIR / name))
    assert result.ok is linearizable, result.explanation
    assert result.key == (None if linearizable else JEPSEN_KEY)
