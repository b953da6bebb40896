"""The sequential specification: one register per key, absent (``None``) until written.

The search in :mod:`kvstore.lincheck.search` inlines these rules in its inner loop for speed;
this module is the readable reference for them and serves the slower paths.
"""

from __future__ import annotations

from collections.abc import Hashable

READ, WRITE, DELETE, CAS = 0, 1, 2, 3
KIND_CODES = {"read": READ, "write": WRITE, "delete": DELETE, "cas": CAS}


def step(
    kind: int,
    state: Hashable,
    expected: Hashable,
    value: Hashable,
    output: object,
    known: bool,
) -> tuple[bool, Hashable]:
    """Apply one operation to ``state``: (whether ``output`` is possible, the new state).

    ``known`` is False for operations with an unknown outcome, whose output is unconstrained.
    """
    if kind == READ:
        return (not known or output == state), state
    if kind == WRITE:
        return True, value
    if kind == DELETE:
        return (not known or output == (state is not None)), None
    hit = state == expected
    return (not known or output == hit), (value if hit else state)
