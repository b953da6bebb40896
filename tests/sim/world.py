"""The virtual clock, the event queue, the seed's random streams, and the trace.

Time is an integer number of microseconds, so event order never depends on float rounding.
Events at the same instant run in the order they were scheduled (a sequence number breaks
ties), which with one seeded `random.Random` makes a run a pure function of its seed.

The trace keeps the last few hundred events as text for failure reports, and folds every
event into a digest so two runs of one seed can be compared cheaply.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import Any

US_PER_MS = 1_000
US_PER_S = 1_000_000


class SimulationFailure(AssertionError):
    """A safety invariant or the linearizability check failed; carries what is needed to
    replay (seed, node count) and to understand it (the last events before the failure)."""

    def __init__(
        self, seed: int, nodes: int, invariant: str, detail: str, trace: list[str],
        steps: int = 0, sim_us: int = 0,
    ) -> None:
        self.steps = steps  # how far the run got
        self.sim_us = sim_us
        self.seed = seed
        self.nodes = nodes
        self.invariant = invariant
        self.detail = detail
        self.trace = trace
        lines = [
            f"{invariant} violated (seed {seed}, {nodes} nodes)",
            detail,
            f"replay: pytest tests/sim --seed {seed} -k n{nodes}",
            f"last {len(trace)} events:",
            *(f"  {t}" for t in trace),
        ]
        super().__init__("\n".join(lines))


class Trace:
    """A bounded tail of readable events plus a digest over all of them."""

    def __init__(self, keep: int) -> None:
        self.tail: deque[str] = deque(maxlen=keep)
        self._digest = hashlib.blake2b(digest_size=16)
        self.count = 0

    def add(self, now_us: int, text: str) -> None:
        line = f"{now_us / US_PER_MS:10.3f}ms {text}"
        self.tail.append(line)
        self._digest.update(line.encode())
        self._digest.update(b"\n")
        self.count += 1

    def digest(self) -> str:
        return self._digest.hexdigest()


class World:
    """One seeded universe: a clock, an event queue and the master random stream.

    Every component gets its own stream via `derive()`, called in a fixed order while the
    simulation is built, so adding draws in one component does not shift the others.
    """

    def __init__(self, seed: int, trace_keep: int = 80) -> None:
        self.seed = seed
        self._master = random.Random(seed)
        self.now = 0
        self.steps = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.trace = Trace(trace_keep)

    def derive(self) -> random.Random:
        """A new independent stream, determined by the seed and the call order."""
        return random.Random(self._master.getrandbits(64))

    def schedule(self, delay_us: int, fn: Callable[..., None], *args: Any) -> None:
        assert delay_us >= 0, "events cannot be scheduled in the past"
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay_us, self._seq, fn, args))

    def log(self, text: str) -> None:
        self.trace.add(self.now, text)

    def next_time(self) -> int | None:
        return self._queue[0][0] if self._queue else None

    def step(self) -> bool:
        """Run the next event; False when nothing is scheduled."""
        if not self._queue:
            return False
        when, _, fn, args = heapq.heappop(self._queue)
        self.now = when
        self.steps += 1
        fn(*args)
        return True

    @property
    def now_s(self) -> float:
        """Seconds, for the client core, which takes `now` as a float."""
        return self.now / US_PER_S
