"""Watchers and lock holders that run beside a drill's workload, and what they must show.

- Watchers (kvstore's client watch, which resumes on another member from its last seen
  revision + 1) watch the workload's keys from revision 1 while members are killed,
  paused and cut off. After healing, each one's events must equal the full change history
  of those keys, in order, with nothing missing or repeated.
- Lock holders take one lock in turns (etcd's mutex over a lease, kept alive in the
  background) and record when they held it and with which fencing token. Two holds may
  only overlap if the earlier holder was told its lease was lost; tokens must strictly
  increase in the order the locks were taken.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvstore.client import KVClient, KVError
from kvstore.client.watch import WatchEvent

Seen = tuple[str, bytes, bytes, int]  # type, key, value, mod_revision


def _seen(ev: WatchEvent) -> Seen:
    return (ev.type, ev.key, ev.value, ev.mod_revision)


class Watchers:
    def __init__(self, endpoints: Sequence[str], count: int, seed: int) -> None:
        self.endpoints = list(endpoints)
        self.count = count
        self.seed = seed
        self.events: list[list[Seen]] = [[] for _ in range(count)]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[object] = []

    def start(self) -> None:
        for i in range(self.count):
            t = threading.Thread(target=self._run, args=(i,), name=f"watcher-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, i: int) -> None:
        eps = self.endpoints[:]
        random.Random(f"watch-{self.seed}-{i}").shuffle(eps)  # each starts on another member
        try:
            with KVClient(eps, timeout=30.0) as client:
                with client.watch("k", prefix=True, start_revision=1) as watch:
                    self._watches.append(watch)
                    for ev in watch:
                        self.events[i].append(_seen(ev))
                        if self._stop.is_set():
                            return
        except Exception as exc:  # noqa: BLE001 - reported as a drill problem
            if not self._stop.is_set():
                self.errors.append(f"watcher {i}: {exc!r}")

    def last_revision(self, i: int) -> int:
        return self.events[i][-1][3] if self.events[i] else 0

    def wait_caught_up(self, revision: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.last_revision(i) >= revision for i in range(self.count)):
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for w in self._watches:
            w.close()  # type: ignore[attr-defined]
        for t in self._threads:
            t.join(timeout)

    def check(self, history: list[Seen]) -> list[str]:
        """Each watcher saw exactly `history` (up to where it stopped)."""
        problems = list(self.errors)
        for i, got in enumerate(self.events):
            want = history[:len(got)]
            if got != want:
                at = next((j for j, (a, b) in enumerate(zip(got, want, strict=False))
                           if a != b), min(len(got), len(want)))
                problems.append(
                    f"watcher {i}: event {at} is {got[at] if at < len(got) else 'missing'}, "
                    f"the history has {want[at] if at < len(want) else 'nothing'}")
            elif len(got) < len(history):
                problems.append(f"watcher {i} stopped at {len(got)} of {len(history)} events")
        return problems


MARKER = "k~end"  # written after healing, under the watched prefix: the end of the history


def write_marker(endpoints: Sequence[str], timeout: float) -> int:
    """Put the end marker; returns its revision."""
    with KVClient(list(endpoints), timeout=timeout) as client:
        client.put(MARKER, "end")
        return client.get_result(MARKER).mod_revision


def full_history(endpoints: Sequence[str], marker_revision: int, timeout: float) -> list[Seen]:
    """Every change of the watched keys up to the end marker, by one watch from 1."""
    out: list[Seen] = []
    deadline = time.monotonic() + timeout
    with KVClient(list(endpoints), timeout=timeout) as client:
        with client.watch("k", prefix=True, start_revision=1) as watch:
            for ev in watch:
                out.append(_seen(ev))
                if ev.mod_revision >= marker_revision:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("the history watch did not reach the end marker")
    return out


@dataclass
class Hold:
    holder: int
    token: int
    acquired: float
    released: float = 0.0
    lost: bool = False


@dataclass
class Lockers:
    endpoints: Sequence[str]
    count: int
    seed: int
    ttl: int = 2
    holds: list[Hold] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failures: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        for i in range(self.count):
            t = threading.Thread(target=self._run, args=(i,), name=f"locker-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, i: int) -> None:
        rng = random.Random(f"lock-{self.seed}-{i}")
        with KVClient(list(self.endpoints), timeout=5.0) as client:
            while not self._stop.is_set():
                hold: Hold | None = None
                ref: list[Hold] = []  # the hold in progress, for the loss callback

                def lost(*_args: object, ref: list[Hold] = ref) -> None:
                    for h in ref:
                        h.lost = True

                try:
                    with client.lock("drill-lock", ttl=self.ttl, on_lost=lost) as lock:
                        hold = Hold(i, lock.token, time.monotonic())
                        ref.append(hold)
                        time.sleep(rng.uniform(0.0, 0.05))
                        hold.released = time.monotonic()
                except KVError:
                    with self._lock:
                        self.failures += 1
                    time.sleep(0.05)
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(f"locker {i}: {exc!r}")
                    time.sleep(0.2)
                if hold is not None:
                    if not hold.released:
                        hold.released = time.monotonic()
                    with self._lock:
                        self.holds.append(hold)

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def check(self) -> list[str]:
        problems = list(self.errors[:5])
        holds = sorted(self.holds, key=lambda h: h.acquired)
        for a, b in zip(holds, holds[1:], strict=False):
            if b.token <= a.token:
                problems.append(f"fencing tokens went back: holder {a.holder} had {a.token}, "
                                f"then holder {b.holder} got {b.token}")
        for j, b in enumerate(holds):
            for a in holds[:j]:
                if a.released > b.acquired and not a.lost:
                    problems.append(
                        f"holders {a.holder} (token {a.token}) and {b.holder} (token "
                        f"{b.token}) held the lock at once, and {a.holder}'s lease was not "
                        f"reported lost")
        return problems
