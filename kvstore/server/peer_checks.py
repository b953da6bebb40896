"""Which peer messages may reach the Raft core: pure checks, no I/O, no state of their own.

Nothing on the wire is trusted. A message that no correct peer could have sent is dropped
(and logged by the caller) before the core sees it, because the core's own checks assume
Raft's invariants hold for its input: entries that do not follow their predecessor break
the log's index arithmetic, an acknowledgement past the leader's log leaves it unable to
build the next append, and a term that no longer fits the hard-state format (u64) makes the
node fail on every later election. Dropping is always safe: Raft tolerates lost messages.

The bounds, and why they are these:

* MAX_TERM = 2**40. A cluster that elects a leader every millisecond needs 35 years to get
  there, and it leaves 2**24 times that much room below the u64 of the hard-state format,
  so no term a node adopts (or reaches by campaigning after adopting it) can overflow.
* TERM_WINDOW = 1_000_000: a message may be at most this far ahead of our term (unless our
  term is 0: a new or wiped data dir knows no term to measure from). With pre-vote, terms
  only rise when a majority agrees to an election, so no correct peer is a million terms
  ahead; one forged message therefore cannot push the cluster to MAX_TERM, after which no
  election could be held. (A node that ran without pre-vote, alone, through a million
  election timeouts — 3.5 days at 300 ms — would be refused until it is restarted.)
* MAX_INDEX = 2**62 for every index, log term, commit, hint and read-round field: far
  beyond any real log, far below where arithmetic on them (index + 1, sums in hints)
  leaves the storage format's u64.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.raft.types import EntryType, Message, MessageType

MT = MessageType

MAX_TERM = 2**40
TERM_WINDOW = 1_000_000
MAX_INDEX = 2**62

# What a peer may send. SNAP is made by our own runtime from a checked InstallSnapshot.
PEER_TYPES = frozenset({
    MT.APP, MT.APP_RESP, MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP,
    MT.HEARTBEAT, MT.HEARTBEAT_RESP, MT.TIMEOUT_NOW,
})
# Messages whose `log_term` names a term of the sender's log, which is never ahead of the
# term the message carries.
_CARRY_LOG_TERM = frozenset({MT.APP, MT.VOTE, MT.PRE_VOTE})


@dataclass(frozen=True, slots=True)
class Receiver:
    """What the checks need to know of the receiving node at delivery time."""

    node_id: str
    peers: frozenset[str]  # the members (voters and learners) other than this node
    term: int  # the core's current term
    leader_last_index: int | None  # our last log index while we lead, else None


def type_name(t: object) -> str:
    """A message type for a log line, whatever a broken message carries there."""
    return t.name if isinstance(t, MessageType) else repr(t)


def max_accepted_term(term: int) -> int:
    """The highest message term a node at `term` accepts."""
    return MAX_TERM if term == 0 else min(MAX_TERM, term + TERM_WINDOW)


def refusal(m: Message, rx: Receiver) -> str | None:
    """Why `m` must not reach the core of `rx`, or None if it may."""
    if not isinstance(m.type, MessageType) or m.type not in PEER_TYPES:
        return f"message type {type_name(m.type)} is not one a peer may send"
    if m.dst != rx.node_id:
        return f"addressed to {m.dst!r}, not to us"
    if not isinstance(m.src, str) or m.src not in rx.peers:
        return f"sender {m.src!r} is not a member other than us"
    if not _is_int(m.term) or not 0 <= m.term <= max_accepted_term(rx.term):
        return (f"term {m.term} is beyond the accepted bound "
                f"{max_accepted_term(rx.term)} (our term {rx.term})")
    for name in ("index", "log_term", "commit", "reject_hint", "hint_term", "context"):
        value = getattr(m, name)
        if not _is_int(value) or not 0 <= value <= MAX_INDEX:
            return f"{name} {value} is out of range"
    if m.snapshot is not None:
        return "carries snapshot data (only InstallSnapshot delivers those)"
    if m.type in _CARRY_LOG_TERM and m.log_term > m.term:
        return f"log term {m.log_term} is ahead of the message term {m.term}"
    if m.entries:
        if m.type != MT.APP:
            return f"{m.type.name} carries entries"
        why = _entries_refusal(m)
        if why is not None:
            return why
    if (m.type == MT.APP_RESP and rx.leader_last_index is not None
            and m.index > rx.leader_last_index):
        return f"acknowledges index {m.index} beyond our last index {rx.leader_last_index}"
    return None


def snapshot_refusal(src: str, term: int, peers: frozenset[str], our_term: int,
                     our_leader: str) -> str | None:
    """Why a snapshot stream from `src` (leader of `term`) must be refused before its data
    is even read, or None: only the leader we follow in our current term may send one."""
    if src not in peers:
        return f"sender {src!r} is not a member other than us"
    if term != our_term:
        return f"its term {term} is not our term {our_term}"
    if src != our_leader:
        leader = repr(our_leader) if our_leader else "unknown"
        return f"{src!r} is not the leader we follow in term {our_term} (ours: {leader})"
    return None


def snapshot_meta_refusal(index: int, snap_term: int, term: int) -> str | None:
    """Why a snapshot file's header is one no leader of `term` could have written, or None:
    its last entry's term cannot be ahead of the leader's term, and its index must be in
    range like every other index."""
    if not 0 <= index <= MAX_INDEX:
        return f"its index {index} is out of range"
    if not 0 <= snap_term <= term:
        return f"its last term {snap_term} is ahead of the leader's term {term}"
    return None


def _entries_refusal(m: Message) -> str | None:
    """Entries of an append must follow `m.index` one by one, with terms that never go
    down, start no lower than `m.log_term` (the term of the entry before them) and never
    pass the leader's term: Raft's log invariants, which the follower's log relies on."""
    prev_term = m.log_term
    for offset, e in enumerate(m.entries, start=1):
        if not _is_int(e.index) or e.index != m.index + offset:
            return f"entry {offset} has index {e.index}, expected {m.index + offset}"
        if not _is_int(e.term) or not prev_term <= e.term <= m.term:
            return (f"entry {e.index} has term {e.term}, outside [{prev_term}, {m.term}] "
                    "(terms must not go down nor pass the leader's)")
        if not isinstance(e.type, EntryType) or not isinstance(e.data, bytes):
            return f"entry {e.index} has an unknown type or data that is not bytes"
        prev_term = e.term
    if m.index + len(m.entries) > MAX_INDEX:
        return "entries run past the largest accepted index"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
