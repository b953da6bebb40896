"""Linearizability checker for key-value histories.

The model is one register per key that starts absent (``None``) and supports read, write,
delete and compare-and-swap (see :mod:`kvstore.lincheck.model`). Linearizability is
compositional (a history is linearizable iff its restriction to every key is), so the history
is split by key and each key is searched alone (see :mod:`kvstore.lincheck.search`).

Failed operations are dropped, and so are reads with an unknown outcome. A write, delete or cas
with an unknown outcome may take effect at any point after its call, or never.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvstore.lincheck.history import Key, Operation
from kvstore.lincheck.search import KeySearch

DEFAULT_MAX_STEPS = 20_000_000
"""Default search budget of one :func:`check` call; a step takes about 1-2 microseconds, so
this is roughly half a minute of CPU at worst. Easy histories need a few steps per operation."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of :func:`check`.

    ``ok`` is True (linearizable), False (not), or None when the search budget ran out
    before an answer (then ``key`` names the key whose search was cut short).
    ``ops_checked`` counts the operations that took part in the search (failed operations
    and reads with an unknown outcome are not counted) over the keys that were checked.
    """

    ok: bool | None
    key: Key | None
    ops_checked: int
    explanation: str
    steps: int = 0


def check(
    operations: Iterable[Operation], *, max_steps: int | None = DEFAULT_MAX_STEPS
) -> CheckResult:
    """Check whether ``operations`` form a linearizable history of a key-value store.

    Keys are checked in order of first appearance; the first key found not linearizable is
    reported. ``max_steps`` bounds the total search steps over all keys (``None``: no bound);
    when it runs out the result is ``ok=None`` unless some key was already found bad.
    """
    by_key: dict[Key, list[Operation]] = {}
    for op in operations:
        by_key.setdefault(op.key, []).append(op)

    steps = 0
    checked = 0
    inconclusive: tuple[Key, str] | None = None
    for key, key_ops in by_key.items():
        budget = None if max_steps is None else max_steps - steps
        if budget is not None and budget <= 0:
            inconclusive = inconclusive or (key, "the step budget was used up before this key")
            break
        search = KeySearch(key_ops)
        verdict = search.run(budget)
        steps += search.steps
        checked += len(search.ops)
        if verdict is False:
            return CheckResult(False, key, checked, search.explain(), steps)
        if verdict is None and inconclusive is None:
            inconclusive = (
                key,
                f"gave up after {search.steps} search steps (max_steps={max_steps}); "
                + search.explain(),
            )
    if inconclusive is not None:
        key, why = inconclusive
        return CheckResult(None, key, checked, f"unknown: key {key!r}: {why}", steps)
    return CheckResult(
        True,
        None,
        checked,
        f"linearizable: {checked} operations on {len(by_key)} key(s)",
        steps,
    )
