"""Linearizability checking of recorded client histories (see :func:`check`)."""

from kvstore.lincheck.checker import DEFAULT_MAX_STEPS, CheckResult, check
from kvstore.lincheck.history import Handle, HistoryRecorder, Key, Kind, Operation, Status

__all__ = [
    "DEFAULT_MAX_STEPS",
    "CheckResult",
    "Handle",
    "HistoryRecorder",
    "Key",
    "Kind",
    "Operation",
    "Status",
    "check",
]
