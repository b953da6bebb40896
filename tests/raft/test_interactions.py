"""Replays every interaction script in tests/raft/testdata/ (see tests/raft/interaction.py).

    pytest tests/raft/test_interactions.py              compare; a mismatch shows a diff
    pytest tests/raft/test_interactions.py --rewrite    accept the actual output in place
    pytest tests/raft/test_interactions.py -k election  one script
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.raft.interaction import ScriptError, parse_script, run_script

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_there_are_scripts() -> None:
    assert SCRIPTS, f"no scripts in {TESTDATA}"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path: Path, request: pytest.FixtureRequest) -> None:
    try:
        result = run_script(path)
    except ScriptError as err:
        error = str(err)  # failing outside the handler keeps the report to this one line
    else:
        error = ""
    if error:
        pytest.fail(error, pytrace=False)
    if request.config.getoption("--rewrite"):
        result.rewrite()
        return
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)


# -- the machinery itself ------------------------------------------------------------------

SMALL = """\
# Three nodes; n1 campaigns.
add-nodes 3

campaign 1
----
this line is wrong

status 1
"""


def test_a_changed_expectation_fails_with_file_line_and_diff(tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    path.write_text(SMALL)
    first = run_script(path)
    assert not first.ok
    assert [b.line for b in first.mismatches] == [2, 4, 8]
    first.rewrite()  # fills in the blocks without output and replaces the wrong one
    good = path.read_text()
    assert run_script(path).ok
    assert "this line is wrong" not in good
    assert "status 1\n----\nn1: pre-candidate term=0" in good

    campaigned = good.split("campaign 1\n----\n")[1].splitlines()[0]
    path.write_text(good.replace(campaigned, "n1 campaigns after 99 ticks"))
    result = run_script(path)
    assert not result.ok
    report = result.report()
    line = good.splitlines().index("campaign 1") + 1
    assert f"{path.name}:{line}: campaign 1" in report  # file:line of the block's command
    assert "-n1 campaigns after 99 ticks" in report
    assert f"+{campaigned}" in report
    assert "@@" in report  # a unified diff

    result.rewrite()
    assert path.read_text() == good
    assert run_script(path).ok


def test_comments_and_blank_lines_survive_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("# a\n\n# b\nadd-nodes 1\n----\nwrong\n\n\n# c\napplied\n")
    run_script(path).rewrite()
    text = path.read_text()
    assert text.startswith("# a\n\n# b\nadd-nodes 1\n----\nn1: ")
    assert "\n\n\n# c\napplied\n----\nn1 applied=0: (no data)\n" in text


def test_malformed_scripts_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match=r"x\.txt:2: expected '----'"):
        parse_script("add-nodes 3\nstatus\n", tmp_path / "x.txt")
    path = tmp_path / "y.txt"
    path.write_text("add-nodes 3\n----\nok\n\nfrobnicate 1\n")
    with pytest.raises(ScriptError, match=r"y\.txt:5: frobnicate 1: unknown command"):
        run_script(path)
