"""The Jepsen log parser on small inline logs (no test data needed)."""

from __future__ import annotations

import pytest

from kvstore.lincheck import Operation, Status, check
from kvstore.lincheck.jepsen import JEPSEN_KEY, JepsenParseError, parse_jepsen_log

LOG = """\
INFO  jepsen.util - 0\t:invoke\t:write\t1
INFO  jepsen.util - 1\t:invoke\t:read\tnil
INFO  jepsen.util - 0\t:ok\t:write\t1
INFO  jepsen.util - 1\t:ok\t:read\t1
INFO  jepsen.util - 2   :invoke :cas    [1 2]
INFO  jepsen.util - 2   :fail   :cas    [1 2]
INFO  jepsen.util - 3\t:invoke\t:cas\t[4 3]
INFO  jepsen.util - 3\t:info\t:cas\t:timed-out
INFO  jepsen.util - 1\t:invoke\t:read\tnil
INFO  jepsen.util - 1\t:fail\t:read\t:timed-out

INFO  jepsen.util - 0\t:invoke\t:write\t4
INFO  jepsen.util - 8\t:invoke\t:cas\t[1 0]
INFO  jepsen.util - 8\t:ok\t:cas\t[1 0]
"""


def test_parse_maps_each_event_kind() -> None:
    ops = parse_jepsen_log(LOG.splitlines())
    assert all(op.key == JEPSEN_KEY for op in ops)
    assert [(op.process, op.kind, op.status, op.output) for op in ops] == [
        (0, "write", Status.OK, None),
        (1, "read", Status.OK, 1),
        (2, "cas", Status.OK, False),  # a failed cas observed a mismatch
        (3, "cas", Status.UNKNOWN, None),  # :info: may or may not have happened
        (1, "read", Status.UNKNOWN, None),  # timed-out read: no result
        (0, "write", Status.UNKNOWN, None),  # never completed
        (8, "cas", Status.OK, True),
    ]
    assert (ops[0].call, ops[0].ret) == (1, 3)
    assert ops[0].value == 1
    assert (ops[2].expected, ops[2].value) == (1, 2)
    assert ops[5].ret is None


def test_parsed_log_is_checked() -> None:
    ops = parse_jepsen_log(LOG.splitlines())
    # The final cas [1 0] succeeded, but the failed cas [1 2] saw a value other than 1 after
    # the write of 1 completed and before anything else could have changed it.
    result = check(ops)
    assert result.ok is False
    # Without the failed-cas observation the rest is explained by the write of 1.
    assert check([op for op in ops if not (op.kind == "cas" and op.output is False)]).ok is True


def test_nil_read_and_info_write() -> None:
    ops = parse_jepsen_log(
        [
            "INFO  jepsen.util - 0\t:invoke\t:read\tnil",
            "INFO  jepsen.util - 0\t:ok\t:read\tnil",
            "INFO  jepsen.util - 1\t:invoke\t:write\t3",
            "INFO  jepsen.util - 1\t:info\t:write\t:timed-out",
            "INFO  jepsen.util - 2\t:invoke\t:write\t4",
            "INFO  jepsen.util - 2\t:fail\t:write\t4",
        ]
    )
    assert ops[0] == Operation(0, JEPSEN_KEY, "read", 1, 2, output=None, status=Status.OK)
    assert ops[1].status is Status.UNKNOWN and ops[1].ret == 4
    assert ops[2].status is Status.FAIL


@pytest.mark.parametrize(
    "lines",
    [
        ["INFO  jepsen.util - 0\t:ok\t:read\t1"],  # completes nothing
        ["INFO  jepsen.util - 0\t:invoke\t:read\tnil"] * 2,  # two at once
        ["INFO  jepsen.util - 0\t:invoke\t:cas\t[1]"],
        ["INFO  jepsen.util - 0\t:invoke\t:read\tnil", "INFO  jepsen.util - 0\t:ok\t:write\t1"],
        ["INFO  jepsen.util - 0\t:invoke\t:append\t1"],
        ["INFO  jepsen.util - garbage"],
    ],
)
def test_malformed_logs_are_rejected(lines: list[str]) -> None:
    with pytest.raises(JepsenParseError):
        parse_jepsen_log(lines)
