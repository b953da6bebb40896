"""Safety invariants, checked incrementally after every simulated step.

Raft's guarantees (thesis figure 3.2) plus what the store promises on top of them:

* Election Safety: at most one leader per term (and, underneath it, Vote Uniqueness: a
  node never grants its vote to two candidates in one term, nor changes a durable vote).
* Log Matching, over durable logs: two logs holding an entry with the same index and term
  are identical up to it. Each durable log keeps a chain hash per index (h_i = H(h_{i-1},
  entry_i)), so one dict lookup per written entry compares whole prefixes.
* Commit durability: when a leader advances its commit index, a majority of the voters
  of its configuration hold that entry on disk (what "committed" means; acknowledging
  before fsync breaks it). Learners' copies never count.
* Membership (with reconfiguration): a leader is a voter of its own configuration and was
  elected by grants from a majority of its voters (a learner's or a stranger's vote never
  makes one); a node that durably applied its own removal never leads again.
* Commit agreement and Leader Completeness: every node's committed prefix agrees with the
  cluster's; an entry committed in term t is in the log of every leader of a term > t. The
  commit term is taken as the term of the first node seen committing it - never lower than
  the true one, so the check cannot raise a false alarm.
* State Machine Safety: no two nodes apply different entries, or get different results,
  at one index.
* Monotonicity: commit and applied never go back on a live node; the durable applied index
  and term never go back at all (a restart included).
* At-most-once: each (client_id, seq) is applied at most once per node. Only results that
  executed a client's write count: not a duplicate answered from the session, nor a write
  refused as stale or as expired (its session is gone), nor a session's registration.

A violation raises Violation; the runner adds the seed and the trace.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kvstore.raft.types import Entry, EntryType, HardState, Message, MessageType, Role
from kvstore.server.runtime import Plan
from kvstore.state import commands
from kvstore.state.commands import ApplyResult, CommandDecodeError
from kvstore.storage.memory_store import MemoryNodeStore
from tests.sim.node import SimNode

_HEADER = struct.Struct(">QQB")


class Violation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass
class _Committed:
    entry: Entry
    commit_term: int  # an upper bound of the term in which it was committed
    first_by: str


@dataclass
class _NodeView:
    incarnation: int = -1
    committed: int = 0
    applied: int = 0
    checked_commit: int = 0
    role: Role = Role.FOLLOWER
    term: int = 0
    committed_as_leader: int = 0


def _entry_text(e: Entry | None) -> str:
    if e is None:
        return "<none>"
    if e.type == EntryType.NOOP:
        return f"{e.index}/t{e.term} noop"
    return f"{e.index}/t{e.term} {e.data.hex()[:24]}"


def _is_application(r: ApplyResult) -> bool:
    """Whether `r` is a client's write taking effect in its session (what at-most-once
    counts)."""
    return bool(r.client_id) and not (r.duplicate or r.stale or r.malformed or r.expired
                                      or r.registered or r.alarm)


def session_name(client_id: bytes) -> str:
    """A session id as the trace shows it: s<index of its register entry>."""
    if len(client_id) == 9 and client_id[:1] == b"s":
        return f"s{int.from_bytes(client_id[1:], 'big')}"
    return client_id.hex()


def _chain(prev: bytes, e: Entry) -> bytes:
    return hashlib.blake2b(prev + _HEADER.pack(e.term, e.index, int(e.type)) + e.data,
                           digest_size=16).digest()


class Invariants:
    def __init__(self, nodes: dict[str, SimNode], log: Callable[[str], None],
                 max_sessions: int = 100_000) -> None:
        self.nodes = nodes
        self.max_sessions = max_sessions
        self._log = log
        self.ids = sorted(nodes)
        self.leaders: dict[int, str] = {}  # term -> leader
        self.votes: dict[tuple[str, int], str] = {}  # (voter, term) -> candidate
        self.chains: dict[str, list[bytes]] = {n: [] for n in self.ids}
        self.prefix: dict[tuple[int, int], tuple[bytes, str]] = {}
        self.durable_hs: dict[str, HardState] = {n: HardState() for n in self.ids}
        self.durable_applied: dict[str, int] = {n: 0 for n in self.ids}
        self.committed: list[_Committed] = []
        self.applied: list[tuple[Entry, ApplyResult]] = []
        self.hash_checks: dict[int, tuple[str, str]] = {}  # index -> (first node, digest)
        self.applications: dict[str, Counter[tuple[bytes, int]]] = {
            n: Counter() for n in self.ids}
        self.views: dict[str, _NodeView] = {n: _NodeView() for n in self.ids}
        self.elections = 0
        self.checks = 0
        self.wipes = 0
        # The durable logs of nodes wiped for a resync and not rebuilt yet: what they
        # acknowledged before the operator destroyed it may have counted toward a commit.
        self.wiped_chains: dict[str, list[bytes]] = {}
        # The highest term anyone had reached when a node was wiped: leaders of terms up to
        # it may still count what the node acknowledged before the wipe.
        self.wipe_terms: dict[str, int] = {}
        # The chain hash of the agreed applied log, per index (what a snapshot must match).
        self.agreed_chain: list[bytes] = []
        self._oracle = self._new_oracle()
        # (term, candidate) -> the nodes that sent it a vote grant in that term.
        self.grants: dict[tuple[int, str], set[str]] = {}
        # Nodes whose store applied a membership without them (decommissioned for good).
        self.removed: set[str] = set()
        # Nodes that joined with a seeded membership, not the bootstrap one: they must take
        # the leader's state as a snapshot before applying any entry (Raft.joining).
        self.joiners: set[str] = set()

    # -- durable writes ----------------------------------------------------------------

    def on_persist(self, node_id: str, plan: Plan, results: list[ApplyResult]) -> None:
        rd = plan.ready
        store = self.nodes[node_id].disk.store
        if rd.snapshot is not None:
            self._installed(node_id, rd.snapshot.meta.index, rd.snapshot.meta.term)
            self.joiners.discard(node_id)
        elif node_id in self.joiners and (rd.entries or rd.committed):
            raise Violation("Join by snapshot", (
                f"{node_id} joined and wrote or applied entries "
                f"{(rd.entries or rd.committed)[0].index}.. before installing the leader's "
                "snapshot (it would replay membership history over a seeded membership)"))
        if rd.entries:
            self._durable_entries(node_id, rd.entries)
        if len(self.chains[node_id]) != store.last_index():
            raise Violation("Durable log", f"{node_id}: the store's log length "
                            f"{store.last_index()} disagrees with what was written")
        if rd.hard_state is not None:
            self._durable_hard_state(node_id, rd.hard_state)
        applied = store.applied_index()
        if applied < self.durable_applied[node_id]:
            raise Violation("Applied monotonicity", f"{node_id}: durable applied index went "
                            f"back from {self.durable_applied[node_id]} to {applied}")
        self.durable_applied[node_id] = applied
        if results:
            by_index = {e.index: e for e in rd.committed}
            for r in results:
                self._applied(node_id, by_index[r.index], r)
                if r.digest:
                    self._hash_checked(node_id, r.index, r.digest)
        if (results and any(r.members is not None for r in results)) or rd.snapshot:
            ms = store.members()
            if ms and all(m.id != node_id for m in ms):
                self.removed.add(node_id)
        if rd.snapshot is not None and store.state_digests() != self._oracle_digests(applied):
            # (entries after the snapshot may have been applied in the same write)
            raise Violation("State Machine Safety", (
                f"{node_id} installed a snapshot at {rd.snapshot.meta.index}; its state at "
                f"applied index {applied} differs from the agreed log's up to there"))

    def _hash_checked(self, node_id: str, index: int, digest: str) -> None:
        """Every member hashes its state at a hash-check entry; members that applied the
        same log must agree, however they batched it (else the CORRUPT alarm is raised
        on healthy members)."""
        first = self.hash_checks.setdefault(index, (node_id, digest))
        if first[1] != digest:
            raise Violation("Hash checks agree", (
                f"at the hash check of entry {index}, {first[0]} hashed {first[1]} and "
                f"{node_id} hashed {digest}"))

    def _installed(self, node_id: str, index: int, term: int) -> None:
        """A snapshot replaced the node's state and log: it must be exactly the agreed
        applied prefix up to `index` (its log then continues from there)."""
        if index > len(self.applied):
            raise Violation("State Machine Safety", f"{node_id} installed a snapshot at "
                            f"{index}, beyond anything applied ({len(self.applied)})")
        entry = self.applied[index - 1][0]
        if entry.term != term:
            raise Violation("State Machine Safety", f"{node_id} installed a snapshot at "
                            f"{index} of term {term}, but entry {index} applied has term "
                            f"{entry.term}")
        self.chains[node_id] = self.agreed_chain[:index]
        counts: Counter[tuple[bytes, int]] = Counter()
        for _, r in self.applied[:index]:
            if _is_application(r):
                counts[(r.client_id, r.seq)] += 1
        self.applications[node_id] = counts

    def _new_oracle(self) -> MemoryNodeStore:
        return MemoryNodeStore(shards=4, vnodes=16, max_sessions=self.max_sessions)

    def _oracle_digests(self, index: int) -> list[str]:
        """Shard and history digests after applying the agreed log up to `index` afresh."""
        if self._oracle.applied_index() > index:
            self._oracle = self._new_oracle()
        start = self._oracle.applied_index()
        entries = [e for e, _ in self.applied[start:index]]
        if entries:
            self._oracle.persist_and_apply(None, entries, entries)
        return self._oracle.state_digests()

    def on_wipe(self, node_id: str) -> None:
        """The node's data dir was replaced by an empty one (resync): it forgets its log,
        term, vote and state, deliberately."""
        self.wiped_chains[node_id] = self.chains[node_id]
        self.wipe_terms[node_id] = self._max_term()
        self.chains[node_id] = []
        self.durable_hs[node_id] = HardState()
        self.durable_applied[node_id] = 0
        self.applications[node_id] = Counter()
        self.views[node_id] = _NodeView()
        self.wipes += 1

    def _durable_entries(self, node_id: str, entries: Sequence[Entry]) -> None:
        chain = self.chains[node_id]
        del chain[entries[0].index - 1:]
        prev = chain[-1] if chain else b""
        for e in entries:
            h = _chain(prev, e)
            chain.append(h)
            prev = h
            key = (e.index, e.term)
            seen = self.prefix.get(key)
            if seen is None:
                self.prefix[key] = (h, node_id)
            elif seen[0] != h:
                raise Violation("Log Matching", self._log_mismatch(node_id, seen[1], e))

    def _log_mismatch(self, a: str, b: str, e: Entry) -> str:
        la = self.nodes[a].disk.store
        lb = self.nodes[b].disk.store
        first_diff = None
        for i in range(1, min(e.index, la.last_index(), lb.last_index()) + 1):
            if la.entries(i, i + 1) != lb.entries(i, i + 1):
                first_diff = i
                break
        where = (f"they differ first at index {first_diff}: {a} has "
                 f"{_entry_text(la.entries(first_diff, first_diff + 1)[0])}, {b} has "
                 f"{_entry_text(lb.entries(first_diff, first_diff + 1)[0])}"
                 if first_diff is not None else
                 f"{b}'s log no longer holds the prefix it had when it wrote that entry")
        return (f"{a} durably wrote entry {e.index} (term {e.term}), which {b} also wrote, "
                f"but the logs up to it are not identical; {where}")

    def _durable_hard_state(self, node_id: str, hs: HardState) -> None:
        old = self.durable_hs[node_id]
        if hs.term < old.term:
            raise Violation("Durable term monotonicity",
                            f"{node_id}: durable term went back from {old.term} to {hs.term}")
        if hs.term == old.term and old.vote and hs.vote and hs.vote != old.vote:
            raise Violation("Vote Uniqueness", f"{node_id} changed its durable vote in term "
                            f"{hs.term} from {old.vote} to {hs.vote}")
        if hs.term > old.term or hs.vote:
            # Remember the first vote of a term, even across a write that (wrongly) drops it.
            self.durable_hs[node_id] = hs

    def _applied(self, node_id: str, entry: Entry, r: ApplyResult) -> None:
        i = entry.index
        if i <= len(self.applied):
            first, res = self.applied[i - 1]
            if first != entry or res != r:
                raise Violation("State Machine Safety", (
                    f"{node_id} applied {_entry_text(entry)} -> {r} at index {i}, but another "
                    f"node applied {_entry_text(first)} -> {res} there"))
        elif i == len(self.applied) + 1:
            self.applied.append((entry, r))
            prev = self.agreed_chain[-1] if self.agreed_chain else b""
            self.agreed_chain.append(_chain(prev, entry))
        else:
            raise Violation("State Machine Safety",
                            f"{node_id} applied index {i} before anyone applied {i - 1}")
        if _is_application(r):
            counts = self.applications[node_id]
            counts[(r.client_id, r.seq)] += 1
            if counts[(r.client_id, r.seq)] > 1:
                raise Violation("At-most-once", (
                    f"{node_id} applied request ({session_name(r.client_id)}, seq {r.seq}) a "
                    f"second time, at index {i}"))

    # -- messages ----------------------------------------------------------------------

    def on_send(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            if m.type == MessageType.VOTE_RESP and not m.reject:
                key = (m.src, m.term)
                self.grants.setdefault((m.term, m.dst), set()).add(m.src)
                granted = self.votes.setdefault(key, m.dst)
                if granted != m.dst:
                    raise Violation("Vote Uniqueness", (
                        f"{m.src} granted its vote in term {m.term} to {granted} and then to "
                        f"{m.dst}"))

    # -- after every step ----------------------------------------------------------------

    def check_step(self) -> None:
        self.checks += 1
        for node_id in self.ids:
            node = self.nodes[node_id]
            raw = node.raw
            if not node.up or raw is None:
                continue
            r = raw.raft
            v = self.views[node_id]
            committed = r.log.committed
            if v.incarnation != node.incarnation:
                # A restart: volatile indexes may restart lower, the durable ones may not.
                v.incarnation = node.incarnation
                v.committed = committed
                v.applied = node.applied_index
                v.checked_commit = 0
                v.committed_as_leader = 0
                v.role = Role.FOLLOWER
            else:
                if committed < v.committed:
                    raise Violation("Commit monotonicity", f"{node_id}: commit index went "
                                    f"back from {v.committed} to {committed}")
                if node.applied_index < v.applied:
                    raise Violation("Applied monotonicity", f"{node_id}: applied index went "
                                    f"back from {v.applied} to {node.applied_index}")
                v.committed = committed
                v.applied = node.applied_index
            if committed > v.checked_commit:
                if r.role == Role.LEADER and committed > v.committed_as_leader:
                    self._check_durable_quorum(node_id, r.log.term(committed) or 0, committed)
                    v.committed_as_leader = committed
                self._check_commits(node_id, node, v.checked_commit + 1, committed)
                v.checked_commit = committed
            if r.role == Role.LEADER and (v.role != Role.LEADER or v.term != r.term):
                self._new_leader(node_id, node)
            v.role, v.term = r.role, r.term
        self._check_match_soundness()
        for node in self.nodes.values():
            node.step_voters.clear()

    def _max_term(self) -> int:
        terms = [hs.term for hs in self.durable_hs.values()]
        terms += [n.raw.raft.term for n in self.nodes.values() if n.raw is not None]
        return max([*terms, *self.leaders, 0])

    def _check_match_soundness(self) -> None:
        """A leader never counts a node - itself included - as holding more of its log than
        that node holds on disk: a follower answers an append only after its fsync, the
        leader counts itself only after its own (thesis 10.2.1), and within one term
        nothing may remove an entry a node acknowledged (thesis 3.5, figure 3.1 steps 3-4;
        5.3, figure 5.3 step 6). Commit durability checks the same belief only at the
        moment a commit advances. Checked while the node is still in the leader's term; a
        node wiped for a resync is exempt toward leaders of terms begun before the wipe."""
        for lid in self.ids:
            node = self.nodes[lid]
            raw = node.raw
            if not node.up or raw is None or raw.raft.role != Role.LEADER:
                continue
            r = raw.raft
            for p, pr in r.prs.items():
                m = pr.match
                if m == 0 or r.term <= self.wipe_terms.get(p, 0):
                    continue
                if self.nodes[p].disk.store.initial_state().term != r.term:
                    continue  # p moved on to a later term
                chain = self.chains[p]
                ref: bytes | None = None
                if len(self.chains[lid]) >= m:
                    ref = self.chains[lid][m - 1]
                else:
                    term = r.log.term(m)
                    seen = self.prefix.get((m, term)) if term is not None else None
                    ref = seen[0] if seen is not None else None
                if len(chain) < m or (ref is not None and chain[m - 1] != ref):
                    raise Violation("Match soundness", (
                        f"{lid}, leader of term {r.term}, counts {p} as holding its log up to "
                        f"{m}, but {p}'s durable log (up to {len(chain)}) does not hold it"))

    def _holders(self, index: int, term: int, voters: Iterable[str]) -> int:
        """How many of `voters` hold entry `index` of `term` on disk (or applied)."""
        count = 0
        for n in voters:
            store = self.nodes[n].disk.store
            if index < store.first_index() - 1:
                count += store.applied_index() >= index
            elif store.last_index() >= index and store.term(index) == term:
                count += 1
        return count

    def _check_durable_quorum(self, leader: str, term: int, index: int) -> None:
        """A leader that advances its commit index to `index` must be right that a majority
        of its voters holds that entry on disk: "committed" means durably replicated on a
        majority. The voters are those of the leader's configuration (every node without
        reconfiguration); a learner's copy never counts."""
        node = self.nodes[leader]
        configs = [node.raw.raft.voters, *node.step_voters]  # type: ignore[union-attr]
        for voters in configs[1:]:
            if self._holders(index, term, voters) >= len(voters) // 2 + 1:
                return  # a majority of a configuration it held earlier in this step
        voters = configs[0]
        holders = []
        for n in voters:
            store = self.nodes[n].disk.store
            lost = self.wiped_chains.get(n) if self.nodes[n].disk.resync_marker else None
            if lost is not None and len(lost) >= index:
                known = self.prefix.get((index, term))
                if known is not None and lost[index - 1] == known[0]:
                    holders.append(f"{n} (until wiped)")
                    continue
            if index < store.first_index() - 1:
                if store.applied_index() >= index:  # compacted: it is in the state machine
                    holders.append(n)
            elif store.last_index() >= index and store.term(index) == term:
                holders.append(n)
        if len(holders) < len(voters) // 2 + 1:
            # (a node wiped by the operator counts for what it held: one lost disk is a
            # fault Raft tolerates; the damage a second fault would do is caught as lost
            # writes and by Leader Completeness)
            raise Violation("Commit durability", (
                f"{leader} committed index {index} (term {term}), but only {holders or 'no one'} "
                f"hold it on disk - not a majority of its voters {list(voters)}"))

    def _check_commits(self, node_id: str, node: SimNode, lo: int, hi: int) -> None:
        log = node.raw.raft.log  # type: ignore[union-attr]
        term = node.raw.raft.term  # type: ignore[union-attr]
        known = len(self.committed)
        new_from = known + 1
        # Below the log's first index the entries are in the node's snapshot, which was
        # checked against the agreed log when it was installed.
        lo = max(lo, log.first_index())
        for e in log.entries(lo, hi + 1) if lo <= hi else []:
            if e.index <= known:
                c = self.committed[e.index - 1]
                if c.entry != e:
                    raise Violation("Commit agreement", (
                        f"{node_id} considers {_entry_text(e)} committed, but {c.first_by} "
                        f"committed {_entry_text(c.entry)} at that index"))
            else:
                self.committed.append(_Committed(e, term, node_id))
        if len(self.committed) >= new_from:
            self._log(f"COMMIT [{new_from}..{len(self.committed)}] first seen at {node_id} "
                      f"(term {term})")
            # A leader already in office must hold every entry committed in an earlier term.
            for other in self.ids:
                n = self.nodes[other]
                if n.up and n.raw is not None and n.raw.raft.role == Role.LEADER:
                    self._check_completeness(other, n, new_from)

    def _new_leader(self, node_id: str, node: SimNode) -> None:
        r = node.raw.raft  # type: ignore[union-attr]
        self.elections += 1
        self._log(f"LEADER {node_id} term {r.term} last={r.log.last_index()} "
                  f"commit={r.log.committed}")
        holder = self.leaders.setdefault(r.term, node_id)
        if holder != node_id:
            raise Violation("Election Safety",
                            f"{node_id} and {holder} were both leader in term {r.term}")
        self._check_membership_of_leader(node_id, node)
        self._check_completeness(node_id, node, 1)

    def _check_membership_of_leader(self, node_id: str, node: SimNode) -> None:
        """Only a voter leads, and only a majority of voters elects: a learner never
        campaigns and its grant never counts (nor a stranger's), and a node decommissioned
        by its own applied removal never comes back as leader. Grants are counted as sent
        (a superset of those received), so a shortfall is certain."""
        r = node.raw.raft  # type: ignore[union-attr]
        if node_id in self.removed:
            raise Violation("Removed never leads", (
                f"{node_id} became leader of term {r.term} after it applied its own removal"))
        if node_id not in r.voters:
            raise Violation("Learner never leads", (
                f"{node_id} became leader of term {r.term} but is not a voter of its "
                f"configuration (voters {list(r.voters)}, learners {list(r.learners)})"))
        granted = self.grants.get((r.term, node_id), set()) | {node_id}
        counted = sorted(granted & set(r.voters))
        if len(counted) < len(r.voters) // 2 + 1:
            raise Violation("Vote quorum", (
                f"{node_id} became leader of term {r.term} with grants from "
                f"{sorted(granted)}; of its voters {list(r.voters)} only {counted} - not a "
                f"majority (learners' and strangers' votes do not count)"))

    def _check_completeness(self, node_id: str, node: SimNode, lo: int) -> None:
        r = node.raw.raft  # type: ignore[union-attr]
        for c in self.committed[lo - 1:]:
            if c.commit_term >= r.term:
                continue
            i = c.entry.index
            if i < r.log.first_index():
                continue  # in its snapshot, checked against the agreed log at install
            if r.log.term(i) != c.entry.term:
                have = r.log.entries(i, i + 1) if i <= r.log.last_index() else []
                raise Violation("Leader Completeness", (
                    f"{node_id} is leader of term {r.term} but its log lacks committed entry "
                    f"{_entry_text(c.entry)} (committed by term {c.commit_term}, first seen "
                    f"at {c.first_by}); it holds {_entry_text(have[0] if have else None)}"))

    # -- linearizable reads ------------------------------------------------------------

    def read_floor(self) -> int:
        """The highest index any node knows committed: a linearizable read arriving now must
        be served from a state that includes it (thesis 6.4)."""
        return len(self.committed)

    def check_linearizable_read(self, node_id: str, floor: int, applied: int) -> None:
        if applied < floor:
            raise Violation("ReadIndex safety", (
                f"{node_id} served a linearizable read from applied index {applied}, but index "
                f"{floor} was already committed when the read arrived"))

    # -- at the end ------------------------------------------------------------------------

    def check_converged(self, members: Sequence[str] | None = None) -> None:
        """Every node (every final member, with reconfiguration) applied the same prefix,
        holds byte-identical shards and records the same membership."""
        ids = list(members) if members is not None else self.ids
        stores = {n: self.nodes[n].disk.store for n in ids}
        applied = {n: s.applied_index() for n, s in stores.items()}
        if len(set(applied.values())) != 1:
            raise Violation("Convergence", f"applied indexes differ after settling: {applied}")
        digests = {n: s.state_digests() for n, s in stores.items()}
        ref = digests[ids[0]]
        for n in ids[1:]:
            if digests[n] != ref:
                bad = [i for i, (x, y) in enumerate(zip(ref, digests[n], strict=True)) if x != y]
                raise Violation("Convergence", (
                    f"{n} and {ids[0]} applied up to {applied[n]} but shards {bad} differ "
                    f"(the last is revisions and history)"))
        ref_members = stores[ids[0]].members()
        for n in ids[1:]:
            if stores[n].members() != ref_members:
                raise Violation("Convergence", (
                    f"{n} and {ids[0]} applied up to {applied[n]} but record different "
                    f"memberships: {stores[n].members()} and {ref_members}"))

    def check_writes(
        self, acked: list[tuple[bytes, int, str]], failed: list[tuple[bytes, int, str]],
        members: Sequence[str] | None = None,
    ) -> None:
        """Acknowledged writes were applied exactly once everywhere (on every final member,
        with reconfiguration); writes the client was told were definitely not applied were
        never applied anywhere."""
        everyone = list(members) if members is not None else self.ids
        for n in self.ids:
            counts = self.applications[n]
            for cid, seq, desc in acked if n in everyone else ():
                if counts[(cid, seq)] != 1:
                    raise Violation("No acknowledged write lost", (
                        f"acknowledged write {desc} ({session_name(cid)}, seq {seq}) was "
                        f"applied {counts[(cid, seq)]} times on {n}"))
            for cid, seq, desc in failed:
                if counts[(cid, seq)]:
                    raise Violation("Failed means not applied", (
                        f"write {desc} ({session_name(cid)}, seq {seq}) was reported "
                        f"definitely not applied, but {n} applied it"))

    def session_counts(self, node_id: str | None = None) -> dict[str, int]:
        """How the agreed applied log used sessions: registrations, writes refused because
        their session was gone, and evictions (sessions registered that no longer exist;
        the session table was empty at the start)."""
        registered = sum(1 for _, r in self.applied if r.registered)
        expired = sum(1 for _, r in self.applied if r.expired)
        live = self.nodes[node_id or self.ids[0]].disk.store.session_count()
        return {"sessions_registered": registered, "sessions_expired": expired,
                "sessions_evicted": registered - live}

    def check_stale_reads(self, reads: Sequence[tuple[str, bytes, bytes | None, int]]) -> int:
        """Stale reads, in the order nodes served them: (node, key, value, applied).

        Per node the applied index never goes back, and the value is exactly the key's value
        after applying the committed log up to that index (so never a value that was never
        written, and never an older value after a newer one)."""
        timeline = self._key_timeline()
        last: dict[str, int] = {}
        for node_id, key, value, applied in reads:
            if applied < last.get(node_id, 0):
                raise Violation("Stale reads monotonic", (
                    f"{node_id} served a stale read at applied index {applied} after one at "
                    f"{last[node_id]}"))
            last[node_id] = applied
            if applied > len(self.applied):
                raise Violation("Stale reads", f"{node_id} read at applied index {applied}, "
                                f"beyond anything applied ({len(self.applied)})")
            points, values = timeline.get(key, ([], []))
            k = bisect.bisect_right(points, applied)
            expect = values[k - 1] if k else None
            if value != expect:
                raise Violation("Stale reads", (
                    f"{node_id} returned {key!r}={value!r} at applied index {applied}, but "
                    f"after applying the log up to {applied} it is {expect!r}"))
        return len(reads)

    def _key_timeline(self) -> dict[bytes, tuple[list[int], list[bytes | None]]]:
        """Replay the agreed applied log on a fresh store: each key's value after each index
        that changed it."""
        oracle = self._new_oracle()
        timeline: dict[bytes, tuple[list[int], list[bytes | None]]] = {}
        for entry, _ in self.applied:
            oracle.persist_and_apply(None, [entry], [entry])
            if entry.type != EntryType.NORMAL:
                continue
            try:
                cmd = commands.decode(entry.data)
            except CommandDecodeError:
                continue
            op = cmd.WhichOneof("op")
            if op in ("put", "delete", "cas"):
                keys = [getattr(cmd, op).key]
            elif op == "txn":
                keys = _txn_keys(cmd.txn)
            else:
                continue  # sessions, alarms, hash checks, compactions: no key changes
            for key in keys:
                found, value, _ = oracle.get(key)
                points, values = timeline.setdefault(key, ([], []))
                now = value if found else None
                if not values or values[-1] != now:
                    points.append(entry.index)
                    values.append(now)
        return timeline


def _txn_keys(txn) -> list[bytes]:  # noqa: ANN001 - an etcd TxnRequest
    """Every key a Txn may write (the simulator's clients delete single keys only)."""
    keys: list[bytes] = []
    for op in [*txn.success, *txn.failure]:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            keys.append(op.request_put.key)
        elif kind == "request_delete_range":
            assert not op.request_delete_range.range_end, "ranged deletes are not tracked"
            keys.append(op.request_delete_range.key)
        elif kind == "request_txn":
            keys.extend(_txn_keys(op.request_txn))
    return keys
