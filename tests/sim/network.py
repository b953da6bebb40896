"""The simulated peer network: loss, duplication, delay, reordering, partitions.

Like the real transport (kvstore.server.transport), it tells the sender when it notices
that messages to a peer were lost (a cut link, a peer that is down, and - per seed, with
some probability - a random loss), and the sender's runtime reports the peer unreachable
to its core. Some losses go unnoticed, as a receiver-side drop does for real.

Each message gets its own delay, so messages overtake each other (reordering comes for
free; `reorder` adds occasional long delays to make it frequent). A partition is a set of
blocked directed links: it can be symmetric, one-way, isolate the leader, or leave a
"bridge" node that sees both sides. A blocked link drops messages both when they are sent
and when they would arrive, as a real cut drops packets already on the wire.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kvstore.raft.types import Message, MessageType
from tests.sim.world import US_PER_MS, World


@dataclass
class NetProfile:
    """Per-seed network behaviour; probabilities are per message."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # chance of a long extra delay
    min_delay_us: int = 200
    max_delay_us: int = 3 * US_PER_MS
    reorder_delay_us: int = 40 * US_PER_MS
    # Chance that a random loss is noticed and reported to the sender, as the real
    # transport reports a broken stream. Losses on a cut link are always reported; a
    # receiver-side drop (or a message lost after the transport handed it over) is not.
    report_loss: float = 1.0


def describe(m: Message) -> str:
    """A compact, deterministic one-line form of a Raft message for the trace."""
    t = m.type
    head = f"{t.name} {m.src}->{m.dst} t{m.term}"
    if t == MessageType.APP:
        ents = f" e[{m.entries[0].index}..{m.entries[-1].index}]" if m.entries else ""
        return f"{head} prev={m.index}/{m.log_term}{ents} c{m.commit}"
    if t == MessageType.APP_RESP:
        if m.reject:
            return f"{head} REJECT {m.index} hint={m.reject_hint}/{m.hint_term}"
        return f"{head} match={m.index}"
    if t in (MessageType.VOTE, MessageType.PRE_VOTE):
        return f"{head} last={m.index}/{m.log_term}"
    if t in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP):
        return f"{head} {'reject' if m.reject else 'GRANT'}"
    if t == MessageType.HEARTBEAT:
        return f"{head} c{m.commit} ctx{m.context}"
    return f"{head} ctx{m.context}"


class Network:
    def __init__(
        self,
        world: World,
        rng: random.Random,
        profile: NetProfile,
        deliver: Callable[[Message], None],
        report: Callable[[str, str], None],
    ) -> None:
        self.world = world
        self.rng = rng
        self.profile = profile
        self._deliver = deliver
        self._report = report  # (src, dst): the transport of src noticed a loss
        self.blocked: set[tuple[str, str]] = set()
        self.partition_label = ""
        self.sent = 0
        self.dropped = 0
        self.delivered = 0

    # -- partitions ------------------------------------------------------------------

    def partition(self, label: str, blocked: Iterable[tuple[str, str]]) -> None:
        self.blocked = set(blocked)
        self.partition_label = label
        self.world.log(f"PARTITION {label}")

    def heal(self) -> None:
        if self.blocked:
            self.world.log(f"HEAL {self.partition_label}")
        self.blocked = set()
        self.partition_label = ""

    def connected(self, a: str, b: str) -> bool:
        return (a, b) not in self.blocked

    # -- traffic ---------------------------------------------------------------------

    def send(self, msgs: Iterable[Message]) -> None:
        p, rng, world = self.profile, self.rng, self.world
        for m in msgs:
            self.sent += 1
            if (m.src, m.dst) in self.blocked:
                self.dropped += 1
                self._report(m.src, m.dst)
                continue
            if p.drop and rng.random() < p.drop:
                self.dropped += 1
                if rng.random() < p.report_loss:
                    self._report(m.src, m.dst)
                continue
            copies = 2 if p.duplicate and rng.random() < p.duplicate else 1
            for _ in range(copies):
                delay = rng.randint(p.min_delay_us, p.max_delay_us)
                if p.reorder and rng.random() < p.reorder:
                    delay += rng.randint(0, p.reorder_delay_us)
                world.schedule(delay, self._arrive, m)

    def _arrive(self, m: Message) -> None:
        if (m.src, m.dst) in self.blocked:
            self.dropped += 1
            self._report(m.src, m.dst)  # the cut broke the stream it was on
            return
        self.delivered += 1
        self._deliver(m)
