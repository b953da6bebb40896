"""Tests of the linearizability checker on hand-made histories and against a brute force."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Sequence
from typing import Any

import pytest

from kvstore.lincheck import HistoryRecorder, Operation, Status, check

# --- shorthand constructors: (process, key, [inputs], output, call, ret) ---------------------


def w(p: Hashable, key: Any, value: Any, call: float, ret: float | None, **kw: Any) -> Operation:
    return Operation(p, key, "write", call, ret, value=value, **kw)


def r(p: Hashable, key: Any, out: Any, call: float, ret: float | None, **kw: Any) -> Operation:
    return Operation(p, key, "read", call, ret, output=out, **kw)


def d(p: Hashable, key: Any, existed: Any, call: float, ret: float | None, **kw: Any) -> Operation:
    return Operation(p, key, "delete", call, ret, output=existed, **kw)


def cas(
    p: Hashable,
    key: Any,
    exp: Any,
    new: Any,
    swapped: Any,
    call: float,
    ret: float | None,
    **kw: Any,
) -> Operation:
    return Operation(p, key, "cas", call, ret, output=swapped, expected=exp, value=new, **kw)


def unknown_write(p: Hashable, key: Any, value: Any, call: float) -> Operation:
    return w(p, key, value, call, None)


# --- hand-made histories ----------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([])
    assert result.ok is True and result.key is None and result.ops_checked == 0


def test_sequential_history() -> None:
    ops = [
        r(1, "k", None, 0, 1),
        w(1, "k", 1, 2, 3),
        r(2, "k", 1, 4, 5),
        cas(1, "k", 1, 2, True, 6, 7),
        cas(2, "k", 1, 3, False, 8, 9),
        r(1, "k", 2, 10, 11),
        d(2, "k", True, 12, 13),
        r(1, "k", None, 14, 15),
        d(1, "k", False, 16, 17),
        cas(2, "k", None, 3, True, 18, 19),
        r(1, "k", 3, 20, 21),
    ]
    result = check(ops)
    assert result.ok is True, result.explanation
    assert result.key is None
    assert result.ops_checked == len(ops)


@pytest.mark.parametrize("seen", [1, 2])
def test_concurrent_writes_then_read_of_either(seen: int) -> None:
    ops = [w(1, "k", 1, 0, 10), w(2, "k", 2, 1, 9), r(3, "k", seen, 11, 12)]
    assert check(ops).ok is True


def test_two_reads_disagree_on_the_order_of_concurrent_writes() -> None:
    # Both orders are possible, but sequential reads must agree with one of them.
    ops = [
        w(1, "k", 1, 0, 10),
        w(2, "k", 2, 0, 10),
        r(3, "k", 1, 1, 2),
        r(3, "k", 2, 3, 4),
        r(3, "k", 1, 5, 6),
    ]
    assert check(ops).ok is False


def test_stale_read_after_completed_write() -> None:
    ops = [w(1, "k", 1, 0, 1), w(1, "k", 2, 2, 3), r(2, "k", 1, 4, 5)]
    result = check(ops)
    assert result.ok is False
    assert result.key == "k"
    assert "read('k') -> 1" in result.explanation


def test_read_concurrent_with_write_may_see_old_value() -> None:
    ops = [w(1, "k", 1, 0, 1), w(1, "k", 2, 2, 6), r(2, "k", 1, 3, 5)]
    assert check(ops).ok is True


def test_lost_update_two_cas_from_same_value_both_succeed() -> None:
    ops = [
        w(0, "k", 0, 0, 1),
        cas(1, "k", 0, 1, True, 2, 5),
        cas(2, "k", 0, 2, True, 3, 6),
    ]
    result = check(ops)
    assert result.ok is False
    assert result.key == "k"


def test_only_one_of_two_concurrent_cas_succeeds() -> None:
    ops = [
        w(0, "k", 0, 0, 1),
        cas(1, "k", 0, 1, True, 2, 5),
        cas(2, "k", 0, 2, False, 3, 6),
        r(3, "k", 1, 7, 8),
    ]
    assert check(ops).ok is True


def test_cas_on_absent_key() -> None:
    assert check([cas(1, "k", None, 1, True, 0, 1), r(1, "k", 1, 2, 3)]).ok is True
    assert check([cas(1, "k", None, 1, False, 0, 1)]).ok is False
    assert check([w(1, "k", 5, 0, 1), cas(1, "k", None, 1, True, 2, 3)]).ok is False


def test_read_of_never_written_value() -> None:
    assert check([w(1, "k", 1, 0, 10), r(2, "k", 7, 1, 2)]).ok is False
    assert check([r(2, "k", 7, 1, 2)]).ok is False


def test_unknown_write_that_took_effect_later() -> None:
    ops = [
        unknown_write(1, "k", 1, 0),
        r(2, "k", None, 1, 2),
        r(2, "k", 1, 100, 101),
    ]
    assert check(ops).ok is True


def test_unknown_write_that_never_took_effect() -> None:
    ops = [unknown_write(1, "k", 1, 0), r(2, "k", None, 1, 2), r(2, "k", None, 100, 101)]
    assert check(ops).ok is True


def test_unknown_write_may_take_effect_after_the_client_gave_up() -> None:
    ops = [
        w(1, "k", 1, 0, 5, status=Status.UNKNOWN),
        r(2, "k", None, 6, 7),
        r(2, "k", 1, 8, 9),
    ]
    assert check(ops).ok is True


def test_unknown_write_cannot_take_effect_before_it_is_called() -> None:
    assert check([r(2, "k", 1, 0, 1), unknown_write(1, "k", 1, 2)]).ok is False


def test_unknown_write_takes_effect_at_most_once() -> None:
    ops = [
        w(0, "k", 0, 0, 1),
        unknown_write(1, "k", 1, 2),
        r(2, "k", 1, 3, 4),
        w(3, "k", 2, 5, 6),
        r(2, "k", 1, 7, 8),
    ]
    assert check(ops).ok is False
    # ... but a second identical unknown write, called after the first took effect, can
    # explain the second read.
    assert check([*ops, unknown_write(4, "k", 1, 5)]).ok is True
    assert check([*ops, unknown_write(4, "k", 1, 7)]).ok is True
    assert check([*ops, unknown_write(4, "k", 1, 8.5)]).ok is False


def test_unknown_cas_and_delete_are_optional_and_unconstrained() -> None:
    ops = [
        w(0, "k", 1, 0, 1),
        cas(1, "k", 1, 2, None, 2, None),
        d(2, "k", None, 2, None),
        r(3, "k", 1, 3, 4),
        r(3, "k", 2, 5, 6),
        r(3, "k", None, 7, 8),
    ]
    assert check(ops).ok is True
    assert check([*ops, r(3, "k", 2, 9, 10)]).ok is False


def test_failed_operations_are_dropped() -> None:
    failed = w(1, "k", 5, 0, 1, status=Status.FAIL)
    assert check([failed, r(2, "k", None, 2, 3)]).ok is True
    assert check([failed, r(2, "k", 5, 2, 3)]).ok is False


def test_unknown_read_is_dropped() -> None:
    ops = [w(1, "k", 1, 0, 1), r(2, "k", 99, 2, None), r(2, "k", 98, 2, 3, status=Status.UNKNOWN)]
    result = check(ops)
    assert result.ok is True
    assert result.ops_checked == 1


@pytest.mark.parametrize(
    ("existed", "linearizable"), [(True, True), (False, False)], ids=["correct", "incorrect"]
)
def test_delete_of_existing_key(existed: bool, linearizable: bool) -> None:
    ops = [w(1, "k", 1, 0, 1), d(2, "k", existed, 2, 3), r(1, "k", None, 4, 5)]
    assert check(ops).ok is linearizable


@pytest.mark.parametrize(
    ("existed", "linearizable"), [(False, True), (True, False)], ids=["correct", "incorrect"]
)
def test_delete_of_absent_key(existed: bool, linearizable: bool) -> None:
    assert check([d(1, "k", existed, 0, 1)]).ok is linearizable


def test_read_after_delete_must_not_see_old_value() -> None:
    ops = [w(1, "k", 1, 0, 1), d(2, "k", True, 2, 3), r(1, "k", 1, 4, 5)]
    assert check(ops).ok is False


def test_operations_that_touch_in_time_are_concurrent() -> None:
    # ret == call: treated as overlapping, so the read may come first.
    assert check([w(1, "k", 1, 0, 5), r(2, "k", None, 5, 6)]).ok is True
    assert check([w(1, "k", 1, 0, 5), r(2, "k", None, 6, 7)]).ok is False


def test_multi_key_history_names_the_bad_key() -> None:
    ops = [
        w(1, b"a", b"x", 0, 1),
        w(2, b"b", b"y", 0, 1),
        w(3, b"c", b"z", 0, 1),
        r(1, b"a", b"x", 2, 3),
        r(2, b"b", None, 2, 3),  # stale: b"b" was written before
        r(3, b"c", b"z", 2, 3),
    ]
    result = check(ops)
    assert result.ok is False
    assert result.key == b"b"
    assert "b'b'" in result.explanation


def test_keys_are_independent() -> None:
    # Per key this is fine; a cross-key read of the wrong key would not be.
    ops = [w(1, "a", 1, 0, 1), w(1, "b", 2, 2, 3), r(2, "a", 1, 4, 5), r(2, "b", 2, 4, 5)]
    result = check(ops)
    assert result.ok is True
    assert result.ops_checked == 4


def test_max_steps_gives_unknown_instead_of_an_answer() -> None:
    ops = [w(i, "k", i, 0, 10) for i in range(6)] + [r(9, "k", 0, 11, 12)]
    cut = check(ops, max_steps=3)
    assert cut.ok is None
    assert cut.key == "k"
    assert cut.explanation.startswith("unknown")
    assert check(ops, max_steps=None).ok is True


def test_explanation_lists_prefix_and_unplaceable_operations() -> None:
    ops = [w(1, "k", 1, 0, 1), w(1, "k", 2, 2, 3), r(2, "k", 1, 4, 5)]
    text = check(ops).explanation
    assert "2 of 3 operations could be linearized" in text
    assert "write('k', 2)" in text
    assert "State after that prefix: 2" in text


# --- operation model and recorder -------------------------------------------------------------


def test_operation_status_defaults_from_ret() -> None:
    assert w(1, "k", 1, 0, 1).status is Status.OK
    assert w(1, "k", 1, 0, None).status is Status.UNKNOWN


@pytest.mark.parametrize(
    "make",
    [
        lambda: Operation(1, "k", "read", 0, None, status=Status.OK),
        lambda: Operation(1, "k", "write", 0, 1),  # no value
        lambda: Operation(1, "k", "cas", 0, 1, expected=1, value=2),  # no bool output
        lambda: Operation(1, "k", "delete", 0, 1, output=None),
        lambda: Operation(1, "k", "read", 5, 1),
        lambda: Operation(1, "k", "scan", 0, 1),  # type: ignore[arg-type]
    ],
)
def test_invalid_operations_are_rejected(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_recorder_builds_a_checkable_history() -> None:
    ticks = itertools.count()
    rec = HistoryRecorder(clock=lambda: next(ticks))
    a = rec.invoke("c1", "k", "write", value=1)  # t=0
    b = rec.invoke("c2", "k", "read")  # t=1
    rec.ok(a)  # t=2
    rec.ok(b, 1)  # t=3
    c = rec.invoke("c1", "k", "cas", expected=1, value=2)  # t=4
    rec.unknown(c)  # t=5
    f = rec.invoke("c2", "k", "delete")  # t=6
    rec.fail(f)  # t=7
    rec.invoke("c3", "k", "write", value=3)  # t=8, never completes

    ops = rec.operations()
    assert [(op.kind, op.status, op.call, op.ret) for op in ops] == [
        ("write", Status.OK, 0, 2),
        ("read", Status.OK, 1, 3),
        ("cas", Status.UNKNOWN, 4, 5),
        ("delete", Status.FAIL, 6, 7),
        ("write", Status.UNKNOWN, 8, None),
    ]
    assert check(ops).ok is True

    with pytest.raises(ValueError):
        rec.ok(a)


def test_recorder_rejects_bad_output_without_losing_the_operation() -> None:
    ticks = itertools.count()
    rec = HistoryRecorder(clock=lambda: next(ticks))
    h = rec.invoke(1, "k", "cas", expected=None, value=1)
    with pytest.raises(ValueError):
        rec.ok(h, "yes")
    rec.ok(h, True)
    assert rec.operations()[0].output is True


# --- differential test against a brute force --------------------------------------------------


def _brute_step(state: dict[Any, Any], op: Operation) -> bool:
    """Apply ``op`` to ``state`` in place; False if its (known) output is impossible."""
    current = state.get(op.key)
    known = op.status is Status.OK
    if op.kind == "read":
        return current == op.output
    if op.kind == "write":
        state[op.key] = op.value
        return True
    if op.kind == "delete":
        state.pop(op.key, None)
        return not known or op.output == (current is not None)
    swapped = current == op.expected
    if swapped:
        state[op.key] = op.value
    return not known or op.output == swapped


def brute_force_linearizable(ops: Sequence[Operation]) -> bool:
    """Try every subset of unknown-outcome updates and every real-time-respecting order."""
    required = [o for o in ops if o.status is Status.OK]
    optional = [o for o in ops if o.status is Status.UNKNOWN and o.kind != "read"]
    for size in range(len(optional) + 1):
        for subset in itertools.combinations(optional, size):
            for order in itertools.permutations(required + list(subset)):
                # b may not come after a if b had returned before a was called.
                if any(
                    b.status is Status.OK and b.ret < a.call  # type: ignore[operator]
                    for i, a in enumerate(order)
                    for b in order[i + 1 :]
                ):
                    continue
                state: dict[Any, Any] = {}
                if all(_brute_step(state, op) for op in order):
                    return True
    return False


def random_history(
    rng: random.Random,
    n_ops: int,
    keys: Sequence[str],
    unknown: int = 15,
    n_values: int = 3,
    span: int = 8,
) -> list[Operation]:
    """A history from a simulated linearizable run (coarse clock, so times often tie),
    with some outputs then corrupted so that a good share are not linearizable."""
    values = list(range(1, n_values + 1))
    plans = []
    for p in range(n_ops):
        call = rng.randint(0, span)
        point = call + rng.randint(0, 3)
        plans.append((point, p, call, point + rng.randint(0, 3)))
    plans.sort()
    state: dict[str, Any] = {}
    ops = []
    for _, p, call, ret in plans:
        key = rng.choice(keys)
        kind = rng.choice(["read", "write", "write", "delete", "cas", "cas"])
        weights = [85 - unknown, unknown, 15]
        status = rng.choices([Status.OK, Status.UNKNOWN, Status.FAIL], weights)[0]
        applied = status is Status.OK or (status is Status.UNKNOWN and rng.random() < 0.5)
        current = state.get(key)
        value = rng.choice(values) if kind in ("write", "cas") else None
        expected = rng.choice([None, *values]) if kind == "cas" else None
        output: Any = None
        if kind == "read":
            output = current
        elif kind == "delete":
            output = current is not None
            if applied:
                state.pop(key, None)
        elif kind == "cas":
            output = current == expected
            if applied and output:
                state[key] = value
        elif applied:
            state[key] = value
        if status is Status.OK and kind != "write" and rng.random() < 0.25:
            output = rng.choice([None, *values]) if kind == "read" else not output
        if status is not Status.OK:
            output = None
        op_ret = None if status is Status.UNKNOWN and rng.random() < 0.5 else ret
        ops.append(Operation(p, key, kind, call, op_ret, output, value, expected, status=status))
    rng.shuffle(ops)  # the checker must not depend on the order of the input
    return ops


@pytest.mark.parametrize(
    ("unknown", "n_values", "span"),
    [(15, 3, 8), (45, 3, 8), (30, 8, 30)],
    ids=["few-unknown", "many-unknown", "sparse"],
)
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_brute_force_on_random_histories(
    seed: int, unknown: int, n_values: int, span: int
) -> None:
    # "sparse" spreads operations out and draws from more values, so that values stop
    # being looked at and the checker's reductions for such values get exercised.
    rng = random.Random(seed * 1000 + unknown)
    verdicts = {True: 0, False: 0}
    for case in range(250):
        keys = ["a"] if case % 3 else ["a", "b"]
        ops = random_history(rng, rng.randint(1, 7), keys, unknown, n_values, span)
        expected = brute_force_linearizable(ops)
        result = check(ops)
        assert result.ok is expected, (seed, case, ops, result.explanation)
        verdicts[expected] += 1
    # Guard against a generator that only ever produces one kind of answer.
    assert min(verdicts.values()) >= 25, verdicts
