"""The history model: client operations on keys, as recorded by a simulated or real client.

An operation is an interval ``[call, ret]`` on some clock, plus what the client asked for and
what it was told. Only the relative order of the timestamps matters, so any monotonic clock
works (simulated ticks, ``time.monotonic()``, line numbers of a log).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal

Key = bytes | str
Kind = Literal["read", "write", "delete", "cas"]
KINDS: frozenset[str] = frozenset({"read", "write", "delete", "cas"})


class Status(Enum):
    """How an operation ended, from the client's point of view."""

    OK = "ok"
    """Completed; ``output`` is what the store answered."""
    FAIL = "fail"
    """Definitely did not take effect (e.g. rejected before being proposed). Ignored by checks."""
    UNKNOWN = "unknown"
    """Timed out or lost: may take effect at any point after ``call``, or never."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key.

    Inputs: ``value`` (write, and the new value of a cas) and ``expected`` (cas; ``None`` means
    "the key is absent"). Outputs by kind: read -> the value read, or ``None`` if absent;
    delete -> ``bool`` whether the key existed; cas -> ``bool`` whether it swapped;
    write -> ``None``.

    Values and outputs are compared with ``==`` and must be hashable (bytes, str, int...);
    ``None`` always means "absent".

    ``status`` defaults from ``ret``: ``ret=None`` means the outcome is unknown, otherwise the
    operation completed. An unknown operation may still carry ``ret`` (when the client gave up)
    for the record; the checker ignores it, because the store may apply the operation later.
    """

    process: Hashable
    key: Key
    kind: Kind
    call: float
    ret: float | None = None
    output: Any = None
    value: Any = None
    expected: Any = None
    status: Status | None = None
    """``None`` is replaced at construction: UNKNOWN if ``ret`` is None, else OK."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        status = self.status
        if status is None:
            status = Status.UNKNOWN if self.ret is None else Status.OK
            object.__setattr__(self, "status", status)
        elif not isinstance(status, Status):
            object.__setattr__(self, "status", Status(status))
            status = self.status
        if status is Status.OK and self.ret is None:
            raise ValueError("a completed (ok) operation needs a return time")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation returns ({self.ret}) before it is called ({self.call})")
        if self.kind in ("write", "cas") and self.value is None:
            # None is reserved for "absent", so writing it would be ambiguous.
            raise ValueError(f"{self.kind} needs a value (use delete to remove a key)")
        if status is Status.OK:
            if self.kind in ("delete", "cas") and not isinstance(self.output, bool):
                raise ValueError(f"a completed {self.kind} needs a bool output")
            if self.kind == "write" and self.output is not None:
                raise ValueError("a write has no output")

    def describe(self) -> str:
        """A one-line human-readable form, used in checker explanations."""
        if self.kind == "read":
            text = f"read({self.key!r})"
        elif self.kind == "write":
            text = f"write({self.key!r}, {self.value!r})"
        elif self.kind == "delete":
            text = f"delete({self.key!r})"
        else:
            text = f"cas({self.key!r}, {self.expected!r} -> {self.value!r})"
        if self.status is Status.OK:
            if self.kind != "write":
                text += f" -> {self.output!r}"
        else:
            text += f" -> <{self.status.value}>"
        ret = "?" if self.ret is None else self.ret
        return f"process {self.process!r}: {text} [{self.call}, {ret}]"


@dataclass(frozen=True, slots=True)
class Handle:
    """An invoked, not yet completed operation of a :class:`HistoryRecorder`."""

    index: int


@dataclass
class HistoryRecorder:
    """Records a history as clients invoke and complete operations.

    ``clock`` is called at invocation and completion; inject a simulated clock for deterministic
    runs or ``time.monotonic`` for real ones. Safe to share between threads. Operations still
    pending when :meth:`operations` is called are reported with an unknown outcome.
    """

    clock: Callable[[], float]
    _ops: list[Operation | None] = field(default_factory=list, init=False, repr=False)
    _pending: dict[int, Operation] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def invoke(
        self,
        process: Hashable,
        key: Key,
        kind: Kind,
        *,
        value: Any = None,
        expected: Any = None,
    ) -> Handle:
        """Record the start of an operation and return a handle to complete it with."""
        with self._lock:
            op = Operation(
                process=process,
                key=key,
                kind=kind,
                call=self.clock(),
                value=value,
                expected=expected,
                status=Status.UNKNOWN,
            )
            handle = Handle(len(self._ops))
            self._ops.append(None)
            self._pending[handle.index] = op
            return handle

    def ok(self, handle: Handle, output: Any = None) -> Operation:
        """The operation completed and the store answered ``output``."""
        return self._complete(handle, Status.OK, output)

    def fail(self, handle: Handle) -> Operation:
        """The operation definitely did not take effect."""
        return self._complete(handle, Status.FAIL, None)

    def unknown(self, handle: Handle) -> Operation:
        """The client gave up (timeout, lost connection): the outcome is unknown."""
        return self._complete(handle, Status.UNKNOWN, None)

    def _complete(self, handle: Handle, status: Status, output: Any) -> Operation:
        with self._lock:
            op = self._pending.get(handle.index)
            if op is None:
                raise ValueError(f"{handle} is not pending (completed twice?)")
            done = replace(op, ret=self.clock(), status=status, output=output)
            del self._pending[handle.index]
            self._ops[handle.index] = done
            return done

    def operations(self) -> list[Operation]:
        """All operations in invocation order; still-pending ones have an unknown outcome."""
        with self._lock:
            return [op if op is not None else self._pending[i] for i, op in enumerate(self._ops)]
