"""Corruption detection: who is named when members' hashes at one index differ."""

from __future__ import annotations

import asyncio
import random

from kvstore.raft.types import Role
from kvstore.server.hash_checker import HashChecker, suspects
from kvstore.server.node import NodeDriver
from kvstore.storage.memory_store import MemoryNodeStore


def test_the_member_outside_the_majority_is_named() -> None:
    assert suspects("n1", {"n1": "a", "n2": "a", "n3": "b"}, 3) == ["n3"]
    assert suspects("n1", {"n1": "b", "n2": "a", "n3": "a"}, 3) == ["n1"]  # the leader too
    assert suspects("n1", {"n1": "a", "n2": "a", "n3": "a"}, 3) == []


def test_without_a_majority_the_leaders_hash_is_the_reference() -> None:
    assert suspects("n1", {"n1": "a", "n2": "b", "n3": None}, 3) == ["n2"]
    assert suspects("n1", {"n1": "a", "n2": None, "n3": None}, 3) == []
    assert suspects("n1", {"n1": "a", "n2": "b", "n3": "c", "n4": None, "n5": None}, 5) == [
        "n2", "n3"]


def test_a_leader_round_raises_corrupt_for_the_odd_member_out() -> None:
    async def scenario() -> list[str]:
        store = MemoryNodeStore(shards=4, vnodes=16)
        driver = NodeDriver("n1", ["n1"], store, lambda msgs: None, random.Random(1),
                            tick_seconds=0.001, election_ticks=2)
        task = asyncio.create_task(driver.run())
        try:
            for _ in range(500):
                if driver.role == Role.LEADER:
                    break
                await asyncio.sleep(0.002)
            own: dict[int, str] = {}

            async def fetch(peer: str, index: int) -> str | None:
                own.setdefault(index, driver.runtime.hash_checks[index])
                return "rotten" if peer == "n3" else own[index]

            checker = HashChecker("n1", ["n2", "n3"], driver, fetch, interval_s=60)
            named = await checker.check_once()
            again = await checker.check_once()  # already raised: not proposed twice
            assert again == ["n3"]
            return [f"{a.name}:{a.member}" for a in store.alarms()] + named
        finally:
            driver.stop()
            await task

    assert asyncio.run(scenario()) == ["CORRUPT:n3", "n3"]
