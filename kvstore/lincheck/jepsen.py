"""Parser for Jepsen etcd register histories (``INFO  jepsen.util - PROCESS TYPE FUNCTION VALUE``).

Each log is about one register that starts absent. Lines map onto :class:`Operation` as follows
(these are the semantics porcupine's etcd model gives the same logs):

* ``:ok :read V`` -> a completed read of ``V`` (``nil``: absent).
* ``:ok :write N`` -> a completed write.
* ``:ok :cas [A B]`` / ``:fail :cas [A B]`` -> a completed cas that did / did not swap. etcd's
  client reports a compare mismatch as ``:fail``, so a failed cas is an observation that the
  register did not hold ``A`` -- exactly a cas whose output is False.
* ``:fail :read ...`` (e.g. ``:timed-out``) -> a read with an unknown result: no constraint.
* ``:fail :write`` -> the write definitely did not happen.
* ``:info`` (e.g. ``:timed-out``), or no completion before the end of the log -> unknown outcome.

Times are line numbers, so the order of the log is the real-time order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from kvstore.lincheck.history import Operation, Status

JEPSEN_KEY = "register"
"""The key that Jepsen register operations are recorded under."""

_LINE = re.compile(r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(\w+)\s+:(\w+)\s*(.*?)\s*$")
_CAS_ARGS = re.compile(r"^\[\s*(-?\d+)\s+(-?\d+)\s*\]$")


class JepsenParseError(ValueError):
    """A line of a Jepsen log that does not fit the register history format."""


def parse_jepsen_log(lines: Iterable[str]) -> list[Operation]:
    """Parse the lines of a Jepsen etcd log into operations, in invocation order.

    Lines that are not ``jepsen.util`` events (blank lines, other loggers) are skipped.
    """
    ops: list[Operation | None] = []
    pending: dict[int, tuple[int, Operation]] = {}  # process -> (slot in ops, invocation)
    for lineno, line in enumerate(lines, start=1):
        m = _LINE.match(line)
        if m is None:
            if "jepsen.util" in line:
                raise JepsenParseError(f"line {lineno}: cannot parse {line.strip()!r}")
            continue
        process, kind, function, arg = int(m[1]), m[2], m[3], m[4]
        if kind == "invoke":
            if process in pending:
                raise JepsenParseError(
                    f"line {lineno}: process {process} invokes while its previous operation "
                    "is still running"
                )
            pending[process] = (len(ops), _invocation(lineno, process, function, arg))
            ops.append(None)
            continue
        if process not in pending:
            raise JepsenParseError(f"line {lineno}: process {process} completes nothing")
        slot, inv = pending.pop(process)
        if inv.kind != function:
            raise JepsenParseError(f"line {lineno}: :{function} completes a {inv.kind}")
        ops[slot] = _completion(lineno, inv, kind, arg)
    for slot, inv in pending.values():
        ops[slot] = inv  # never completed: unknown outcome
    return [op for op in ops if op is not None]


def load_jepsen_log(path: str | Path) -> list[Operation]:
    """Read and parse a Jepsen etcd log file."""
    with open(path, encoding="utf-8") as f:
        return parse_jepsen_log(f)


def _invocation(lineno: int, process: int, function: str, arg: str) -> Operation:
    """The operation as invoked: outcome unknown until a completion line says otherwise."""
    common = dict(process=process, key=JEPSEN_KEY, call=lineno, status=Status.UNKNOWN)
    if function == "read":
        return Operation(kind="read", **common)
    if function == "write":
        return Operation(kind="write", value=_int(arg, lineno), **common)
    if function == "cas":
        expected, new = _cas_args(arg, lineno)
        return Operation(kind="cas", expected=expected, value=new, **common)
    raise JepsenParseError(f"line {lineno}: unknown function :{function}")


def _completion(lineno: int, inv: Operation, kind: str, arg: str) -> Operation:
    def done(status: Status, output: object = None) -> Operation:
        return Operation(
            process=inv.process,
            key=inv.key,
            kind=inv.kind,
            call=inv.call,
            ret=lineno,
            output=output,
            value=inv.value,
            expected=inv.expected,
            status=status,
        )

    if kind == "info":
        return done(Status.UNKNOWN)
    if kind == "ok":
        if inv.kind == "read":
            return done(Status.OK, None if arg == "nil" else _int(arg, lineno))
        return done(Status.OK, True if inv.kind == "cas" else None)
    if kind == "fail":
        if inv.kind == "cas":
            return done(Status.OK, False)  # compare failed: an observation, see module doc
        if inv.kind == "read":
            return done(Status.UNKNOWN)  # e.g. timed out: no result to check
        return done(Status.FAIL)
    raise JepsenParseError(f"line {lineno}: unknown event type :{kind}")


def _int(text: str, lineno: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise JepsenParseError(f"line {lineno}: expected an integer, got {text!r}") from None


def _cas_args(text: str, lineno: int) -> tuple[int, int]:
    m = _CAS_ARGS.match(text)
    if m is None:
        raise JepsenParseError(f"line {lineno}: expected [FROM TO], got {text!r}")
    return int(m[1]), int(m[2])
