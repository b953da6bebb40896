"""Unit tests of the drill harness's pure parts (no processes): the schedule, the shapes
of partitions, the stale-read checks, and the cluster-definition flag that turns on
`serve --fault-injection`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvstore.cluster.layout import LayoutError, layout_from_json
from kvstore.lincheck import Operation, Status
from tests.faults.drill import DrillConfig, DrillResult, check_history
from tests.faults.nemesis import KINDS, majority, partition_links, plan
from tests.faults.workload import StaleRead, check_stale_reads

IDS3 = ["n1", "n2", "n3"]
IDS5 = ["n1", "n2", "n3", "n4", "n5"]


def test_plan_is_a_function_of_its_seed() -> None:
    assert plan(7, KINDS, 30) == plan(7, KINDS, 30)
    assert plan(7, KINDS, 30) != plan(8, KINDS, 30)


def test_plan_stays_inside_the_run_and_uses_only_the_given_kinds() -> None:
    for seed in range(50):
        faults = plan(seed, ("pause", "split"), 20)
        assert faults
        assert all(f.kind in ("pause", "split") for f in faults)
        assert all(f.at + f.duration <= 20 for f in faults)
        assert all(a.at + a.duration < b.at for a, b in zip(faults, faults[1:], strict=False))


def test_plan_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown"):
        plan(1, ("kill", "meteor"), 20)


def _cut_pairs(links: set[tuple[str, str]]) -> set[frozenset[str]]:
    return {frozenset(link) for link in links}


def test_isolate_cuts_the_leader_off_both_ways() -> None:
    links, _ = partition_links("isolate", IDS5, "n2", True, random.Random(1))
    assert links == {("n2", n) for n in IDS5 if n != "n2"} | {(n, "n2") for n in IDS5 if n != "n2"}


def test_one_way_cuts_one_direction_only() -> None:
    seen = set()
    for seed in range(20):
        links, shape = partition_links("one-way", IDS3, "n1", True, random.Random(seed))
        assert len(links) == 2
        assert all((b, a) not in links for a, b in links)
        assert all("n1" in link for link in links)
        seen.add("out" if "out" in shape else "in")
    assert seen == {"in", "out"}


@pytest.mark.parametrize("at_leader", [True, False])
def test_split_puts_the_leader_on_the_chosen_side(at_leader: bool) -> None:
    for seed in range(20):
        links, _ = partition_links("split", IDS5, "n3", at_leader, random.Random(seed))
        assert all((b, a) in links for a, b in links)  # symmetric
        # The leader is cut off from exactly the other side.
        cut_from_leader = {b for a, b in links if a == "n3"}
        if at_leader:
            assert len(cut_from_leader) == 3  # the leader is in the minority of 2
        else:
            assert len(cut_from_leader) == 2  # the leader is in the majority of 3


def test_bridge_keeps_one_node_connected_to_both_halves() -> None:
    for seed in range(20):
        links, _ = partition_links("bridge", IDS5, "n1", True, random.Random(seed))
        touched = {n for link in links for n in link}
        (bridge,) = set(IDS5) - touched
        assert bridge != "n1"  # aimed at the leader: it sits on a side, not on the bridge
        assert len(_cut_pairs(links)) == 4  # 2 x 2 pairs, cut both ways
        assert all((b, a) in links for a, b in links)


def test_majority_includes_the_leader_only_when_aimed_at_it() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        assert "n1" in majority(IDS5, "n1", True, rng)
        assert "n1" not in majority(IDS5, "n1", False, rng)
        assert len(majority(IDS3, "n1", False, rng)) == 2


def _write(key: str, value: str, call: float, ret: float, status: Status = Status.OK) -> Operation:
    return Operation("p", key, "write", call, ret, value=value, status=status)


def test_stale_reads_of_written_values_in_order_pass() -> None:
    ops = [_write("k", "a", 0, 1), _write("k", "b", 2, 3)]
    reads = [
        StaleRead("n1", "k", None, 1, 0.0, 0.5),
        StaleRead("n1", "k", "a", 2, 1.0, 1.5),
        StaleRead("n2", "k", "a", 2, 1.1, 1.6),
        StaleRead("n1", "k", "b", 3, 2.5, 3.5),  # visible before the writer heard back
    ]
    assert check_stale_reads(reads, ops) == []


def test_stale_reads_that_invent_values_fail() -> None:
    ops = [_write("k", "a", 5, 6), _write("k", "x", 0, 1, Status.FAIL)]
    problems = check_stale_reads(
        [StaleRead("n1", "k", "a", 2, 1.0, 1.5), StaleRead("n1", "k", "x", 3, 2, 2.5)], ops
    )
    assert len(problems) == 2
    assert all("no client had tried to write" in p for p in problems)


def test_stale_reads_that_go_back_in_time_fail() -> None:
    ops = [_write("k", "a", 0, 1)]
    reads = [StaleRead("n1", "k", "a", 9, 1.0, 1.5), StaleRead("n1", "k", "a", 8, 2.0, 2.5)]
    (problem,) = check_stale_reads(reads, ops)
    assert "went back in time" in problem
    # Overlapping reads may come back in any order, and other nodes may lag.
    overlapping = [StaleRead("n1", "k", "a", 9, 1.0, 3.0), StaleRead("n1", "k", "a", 8, 2.0, 2.5)]
    assert check_stale_reads(overlapping, ops) == []
    assert check_stale_reads([reads[0], StaleRead("n2", "k", "a", 8, 2, 3)], ops) == []


@pytest.mark.parametrize("other_node", ["n1", "n2"])
def test_stale_reads_at_one_index_must_agree(other_node: str) -> None:
    ops = [_write("k", "a", 0, 1), _write("k", "b", 0, 1)]
    reads = [StaleRead("n1", "k", "a", 5, 1.0, 1.5), StaleRead(other_node, "k", "b", 5, 1.6, 2)]
    (problem,) = check_stale_reads(reads, ops)
    assert "at applied index 5 saw 'a' on n1 and 'b' on" in problem


def _nodes() -> list[dict[str, object]]:
    return [{"id": "a", "port": 1}, {"id": "b", "port": 2}]


def test_the_fault_injection_setting_becomes_the_serve_flag() -> None:
    layout = layout_from_json(
        {"nodes": _nodes(), "settings": {"fault_injection": True, "tick_ms": 20}}
    )
    args = layout.serve_args("a", "/d")
    assert "--fault-injection" in args
    assert args[args.index("--tick-ms") + 1] == "20"
    off = layout_from_json({"nodes": _nodes(), "settings": {"fault_injection": False}})
    assert "--fault-injection" not in off.serve_args("a", "/d")


@pytest.mark.parametrize("value", [1, "yes", None])
def test_the_fault_injection_setting_must_be_a_boolean(value: object) -> None:
    with pytest.raises(LayoutError, match="true or false"):
        layout_from_json({"nodes": _nodes(), "settings": {"fault_injection": value}})


def _result(ops: list[Operation]) -> DrillResult:
    return DrillResult(DrillConfig(seed=5), Path("/nonexistent"), [], operations=ops)


def test_a_lost_acknowledged_write_fails_the_drill() -> None:
    """The wiring of the end-of-run checks: an acknowledged write that the final read
    does not see is reported, with the operations on that key."""
    lost = _result([_write("k0", "a", 0, 1), Operation("final", "k0", "read", 2, 3, None)])
    check_history(lost)
    assert not lost.ok
    assert "NOT linearizable" in lost.problems[0]
    assert "write('k0', 'a')" in lost.problems[0]
    fine = _result([_write("k0", "a", 0, 1), Operation("final", "k0", "read", 2, 3, "a")])
    check_history(fine)
    assert fine.ok, fine.problems
    assert fine.ops_checked == 2
    assert "repeat with: flock" in fine.report() and "--seed 5" in fine.report()
