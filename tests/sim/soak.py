"""Soak: run thousands of seeds and summarize.

    python -m tests.sim.soak --seeds 5000              # seeds 0..4999, 3 nodes on even seeds,
                                                      # 5 nodes on odd ones
    python -m tests.sim.soak --seeds 500 --nodes 5 --start 10000 --jobs 2

Prints a plain-text progress bar (on a terminal it redraws in place, otherwise a line every
5%) and a summary: runs, simulated steps and time, steps per second, operations checked for
linearizability, and every failure with its replay command. Exits 1 if any run failed for a
reason other than the known core bug listed in test_known_bugs.py.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.sim.runner import LOST_TAIL_APPEND, run_seed
from tests.sim.world import US_PER_S, SimulationFailure

BAR_WIDTH = 30


@dataclass
class Outcome:
    seed: int
    nodes: int
    steps: int = 0
    sim_us: int = 0
    ops_checked: int = 0
    stale_checked: int = 0
    inconclusive: bool = False
    failure: str = ""  # the violated invariant
    known: bool = False
    first_line: str = ""
    stats: dict[str, int] = field(default_factory=dict)


# Per-run counters summed in the summary: what the runs exercised.
COVERAGE = ("crashes", "partitions", "wipes", "compactions", "snapshots_installed", "batches",
            "sessions_evicted", "sessions_expired")


def run_one(case: tuple[int, int]) -> Outcome:
    seed, nodes = case
    try:
        r = run_seed(seed, nodes)
    except SimulationFailure as f:
        known = f.invariant == "Liveness" and LOST_TAIL_APPEND in f.detail
        return Outcome(seed, nodes, f.steps, f.sim_us, failure=f.invariant, known=known,
                       first_line=f.detail.splitlines()[0][:160])
    return Outcome(seed, nodes, r.steps, r.sim_us, r.ops_checked, r.stale_checked,
                   inconclusive=r.lincheck_ok is None,
                   stats={k: int(r.stats.get(k, 0)) for k in COVERAGE})


def cases(start: int, count: int, nodes: int | None) -> list[tuple[int, int]]:
    return [(s, nodes or (3 if s % 2 == 0 else 5)) for s in range(start, start + count)]


def outcomes(todo: list[tuple[int, int]], jobs: int) -> Iterator[Outcome]:
    if jobs <= 1:
        for case in todo:
            yield run_one(case)
        return
    with multiprocessing.Pool(jobs) as pool:
        yield from pool.imap(run_one, todo, chunksize=4)


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self._last_pct = -1

    def update(self, done: int, steps: int, failures: int) -> None:
        elapsed = time.perf_counter() - self.started
        pct = done * 100 // self.total
        if not self.tty and pct // 5 == self._last_pct // 5 and done != self.total:
            return
        self._last_pct = pct
        filled = done * BAR_WIDTH // self.total
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        eta = elapsed / done * (self.total - done) if done else 0.0
        line = (f"[{bar}] {done}/{self.total} {pct:3d}%  {steps / max(elapsed, 1e-9):,.0f} "
                f"steps/s  failures: {failures}  eta {eta:,.0f}s")
        if self.tty:
            sys.stderr.write("\r" + line)
            if done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1000, help="number of seeds (runs)")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=None,
                        help="cluster size (default: 3 on even seeds, 5 on odd ones)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)

    todo = cases(args.start, args.seeds, args.nodes)
    progress = Progress(len(todo))
    started = time.perf_counter()
    results: list[Outcome] = []
    steps = 0
    for out in outcomes(todo, args.jobs):
        results.append(out)
        steps += out.steps
        progress.update(len(results), steps, sum(1 for r in results if r.failure))
    wall = time.perf_counter() - started

    ok = [r for r in results if not r.failure]
    failed = [r for r in results if r.failure]
    sim_s = sum(r.sim_us for r in results) / US_PER_S
    sizes = ", ".join(f"{n} nodes: {sum(1 for r in results if r.nodes == n)}" for n in (3, 5))
    print(f"seeds         {len(results)} ({args.start}..{args.start + len(results) - 1}; "
          f"{sizes})")
    print(f"sim steps     {steps:,} ({sim_s:,.0f} s of simulated time)")
    print(f"wall time     {wall:,.1f} s with {args.jobs} job(s)")
    print(f"steps/s       {steps / wall:,.0f}")
    print(f"ops checked   {sum(r.ops_checked for r in ok):,} for linearizability, "
          f"{sum(r.stale_checked for r in ok):,} stale reads")
    print(f"inconclusive  {sum(1 for r in ok if r.inconclusive)} linearizability checks")
    print("exercised     " + ", ".join(
        f"{k.replace('_', ' ')} {sum(r.stats.get(k, 0) for r in ok):,}" for k in COVERAGE))
    print(f"failures      {len(failed)} ({sum(1 for r in failed if r.known)} known core bug)")
    for r in failed:
        tag = " [known core bug]" if r.known else ""
        print(f"  seed {r.seed} ({r.nodes} nodes): {r.failure}{tag}: {r.first_line}")
        print(f"    replay: pytest tests/sim --seed {r.seed} -k n{r.nodes}")
    return 1 if any(not r.known for r in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
