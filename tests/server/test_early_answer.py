"""Key-value writes answered once their results are computed, before the write applying
them commits (NodeDriver.propose(answer_early=True), NodeRuntime.answer_early), and the
barrier that keeps local reads from seeing the state before that commit (settled)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvstore.raft.types import Entry, HardState, Role
from kvstore.server.node import NodeDriver
from kvstore.state import commands
from kvstore.storage.lmdb_store import LmdbNodeStore
from kvstore.storage.memory_store import MemoryNodeStore

pytestmark = pytest.mark.timeout(30)


def _put(key: bytes, value: bytes) -> bytes:
    return commands.encode_put(b"", 0, 0, key, value)


class _HeldStore(MemoryNodeStore):
    """Holds a write that applies entries after computing its results, until released."""

    def __init__(self) -> None:
        super().__init__(shards=4, vnodes=16)
        self.hold = False
        self.release = threading.Event()
        self.held = threading.Event()

    def persist_and_apply(self, hard_state: Any, entries: Any, committed: Any,
                          on_applied: Callable[[list[Any]], None] | None = None) -> Any:
        def applied(results: list[Any]) -> None:
            if on_applied is not None:
                on_applied(results)
            if self.hold:
                self.held.set()
                assert self.release.wait(10)

        return super().persist_and_apply(hard_state, entries, committed, applied)


async def _leader(store: _HeldStore) -> tuple[NodeDriver, asyncio.Task[None]]:
    driver = NodeDriver("n1", ["n1"], store, lambda msgs: None, random.Random(1),
                        tick_seconds=0.001, election_ticks=2)
    task = asyncio.create_task(driver.run())
    for _ in range(5000):
        if driver.role == Role.LEADER and driver.applied_index >= 1:
            return driver, task
        await asyncio.sleep(0.001)
    raise AssertionError("no leader")


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(5000):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


def test_an_early_write_is_answered_before_its_commit_and_reads_wait_for_it() -> None:
    store = _HeldStore()

    async def scenario() -> None:
        driver, task = await _leader(store)
        try:
            store.hold = True
            early = driver.propose(_put(b"a", b"1"), answer_early=True)
            late = driver.propose(_put(b"b", b"2"))
            await asyncio.to_thread(store.held.wait, 10)
            result = await asyncio.wait_for(early, 5)
            assert result.ok
            assert not late.done()  # only opted-in proposals are answered early
            assert store.get(b"a")[0] is False  # the write is not committed yet
            reader = asyncio.create_task(driver.settled())
            await asyncio.sleep(0.05)
            assert not reader.done()  # a local read waits for the commit
            store.hold = False
            store.release.set()
            await asyncio.wait_for(reader, 5)
            assert store.get(b"a")[:2] == (True, b"1")
            assert (await asyncio.wait_for(late, 5)).ok
            await asyncio.wait_for(driver.settled(), 1)  # nothing pending: at once
        finally:
            store.release.set()
            driver.stop()
            await task

    asyncio.run(scenario())


def test_without_opted_in_proposals_the_write_has_no_hook() -> None:
    store = _HeldStore()
    calls: list[int] = []

    async def scenario() -> None:
        driver, task = await _leader(store)
        real = driver._answer_early

        def counting(plan: Any, results: Any) -> None:
            calls.append(len(results))
            real(plan, results)

        driver._answer_early = counting  # type: ignore[method-assign]
        try:
            assert (await asyncio.wait_for(driver.propose(_put(b"k", b"v")), 5)).ok
            assert calls == []
            assert (await asyncio.wait_for(
                driver.propose(_put(b"k", b"w"), answer_early=True), 5)).ok
            await _until(lambda: bool(calls))
        finally:
            driver.stop()
            await task

    asyncio.run(scenario())


def test_lmdb_reports_results_before_the_commit(tmp_path: Path) -> None:
    """on_applied runs inside the write transaction: the results are final, and another
    thread's read does not see the write yet."""
    seen: list[tuple[int, bool]] = []
    with LmdbNodeStore.open(tmp_path / "n1") as store:
        entry = Entry(term=1, index=1, data=_put(b"k", b"v"))

        def on_applied(results: list[Any]) -> None:
            found = []
            reader = threading.Thread(target=lambda: found.append(store.get(b"k")[0]))
            reader.start()
            reader.join()
            seen.append((results[0].index, found[0]))

        store.persist_and_apply(HardState(1, "n1", 1), [entry], [entry], on_applied)
        assert seen == [(1, False)]
        assert store.get(b"k")[:2] == (True, b"v")
