"""Corruption detection: members compare hashes of their state taken at one log index.

Only the log is checksummed record by record; the state machine in LMDB is not, and after
compaction most data exists nowhere else. So, as etcd's corruption check does, the leader
periodically appends a hash-check entry; every member hashes its shards when it applies it
(the same state on members in sync, whatever their pace), the leader gathers the hashes
over the peer port, and members whose hash differs from the majority's are named in a
CORRUPT alarm, raised through the log: writes stop everywhere until an operator
investigates (rebuild the named member with `kvstore cluster resync`) and disarms it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from kvstore.raft.types import Role
from kvstore.state import alarms, commands

log = logging.getLogger(__name__)

FIRST_CHECK_SECONDS = 10.0
# (peer, log index) -> that peer's hash at the index, or None if it has none (yet)
FetchHash = Callable[[str, int], Awaitable[str | None]]


def suspects(leader: str, hashes: dict[str, str | None], voters: int) -> list[str]:
    """Members whose hash at one index is not the agreed one.

    The agreed hash is the one held by a majority of all voters; without such a majority
    (members unreachable, or several disagreeing) the leader's own hash is taken as the
    reference. Members that gave no hash are never named.
    """
    known = {m: h for m, h in hashes.items() if h is not None}
    if not known:
        return []
    value, count = Counter(known.values()).most_common(1)[0]
    reference = value if count > voters // 2 else known.get(leader)
    if reference is None:
        return []
    return sorted(m for m, h in known.items() if h != reference)


class HashChecker:
    """The leader-side loop; any member may run it, it acts only while leading."""

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        driver: object,
        fetch: FetchHash,
        interval_s: float,
        gather_s: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.peers = sorted(peers)
        self.driver = driver
        self.fetch = fetch
        self.interval_s = interval_s
        self.gather_s = gather_s

    async def run(self) -> None:
        # The first round soon after start (a member restarted on damaged data is caught
        # without waiting a whole interval), then one per interval.
        delay = min(self.interval_s, FIRST_CHECK_SECONDS)
        while True:
            await asyncio.sleep(delay)
            delay = self.interval_s
            try:
                await self.check_once()
            except Exception as err:  # noqa: BLE001 - a failed round is retried next time
                log.warning("hash check failed: %s", err)

    async def check_once(self) -> list[str]:
        """One round; returns the members named corrupt (and alarmed) in it."""
        drv = self.driver
        if drv.role != Role.LEADER:  # type: ignore[attr-defined]
            return []
        result = await drv.propose(commands.encode_hash_check())  # type: ignore[attr-defined]
        index, mine = result.index, result.digest
        hashes: dict[str, str | None] = {self.node_id: mine}
        deadline = time.monotonic() + self.gather_s
        missing = list(self.peers)
        while missing and time.monotonic() < deadline:
            answers = await asyncio.gather(*(self._fetch(p, index) for p in missing))
            for peer, h in zip(missing, answers, strict=True):
                if h is not None:
                    hashes[peer] = h
            missing = [p for p in missing if p not in hashes]
            if missing:
                await asyncio.sleep(0.1)
        named = suspects(self.node_id, hashes, len(self.peers) + 1)
        raised = {a.member for a in drv.store.alarms()  # type: ignore[attr-defined]
                  if a.type == alarms.CORRUPT}
        for member in named:
            if member in raised:
                continue
            log.error("hash check at index %d: %s's state differs from the majority's; "
                      "raising the CORRUPT alarm", index, member)
            await drv.propose(  # type: ignore[attr-defined]
                commands.encode_alarm(True, alarms.CORRUPT, member))
        if not named:
            log.info("hash check at index %d: %d of %d members agree", index,
                     len([h for h in hashes.values() if h == mine]), len(self.peers) + 1)
        return named

    async def _fetch(self, peer: str, index: int) -> str | None:
        try:
            return await self.fetch(peer, index)
        except Exception:  # noqa: BLE001 - an unreachable member gives no hash this round
            return None
