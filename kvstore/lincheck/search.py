"""Just-in-time linearization search over the operations on one key.

This is the Wing & Gong search as improved by Lowe and used by porcupine. The call and return
events of the operations not yet linearized sit in a doubly linked list in time order. An
operation may be linearized next iff its call comes before the first remaining return; reaching
a return means that operation could not be placed, so the search backtracks. Lifting an
operation out of the list and relinking it on backtrack are O(1). Visited configurations
(set of linearized operations as an int bitset, model state) are memoized.

Operations with an unknown outcome ("optional": a write, delete or cas that may take effect at
any point after its call, or never) have no return event, so the search may finish without
them. Left alone they make the search exponential (each may or may not have happened, at many
points), so they get reductions that each keep at least one linearization if any exists:

* A value that no remaining operation reads or compares against (a read's output, a cas's
  expected value) behaves like any other such value, so the state holding it is replaced by
  one stand-in, UNOBSERVED. This is done statically for values nobody ever looks at, and
  during the search once the last operation looking at a value is linearized. More states
  then coincide for the memo, and of all the optional operations that would leave
  UNOBSERVED only one needs trying.
* Identical optional operations (same kind and arguments) are interchangeable: they sit in a
  class and are used in call order, so only the first unused one of each class is a candidate.
  Classes are indexed by what they need (a cas only by its expected value), so the search does
  not wade through the many optional operations that cannot apply in the current state.
* Optional operations are placed only in runs that matter: each changes the state; a write or
  delete only starts a run (anything before it in the run would be overwritten); and the
  required operation after a run must behave differently than it would have without the run
  (otherwise the run can be dropped, or moved after that operation). In particular a run is
  only started when some required operation that could go next is illegal in the current
  state.
* A configuration is skipped if one with the same required operations, state and run start
  was visited using a subset of its optional operations (having more left is never worse).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from kvstore.lincheck.history import Operation, Status
from kvstore.lincheck.model import CAS, DELETE, KIND_CODES, READ, WRITE, step

_MAX_LISTED = 12  # operations listed in an explanation before eliding


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


UNOBSERVED = _Marker("<unobserved value>")
"""Stands for every written value that no operation reads or compares against."""
_NO_RUN = _Marker("<no run>")  # run_from when the last linearized operation was required
_NOTHING = _Marker("<nothing>")  # what a write or delete looks at


class KeySearch:
    """The linearizability search over the operations on one key."""

    def __init__(self, key_ops: Sequence[Operation]) -> None:
        # Failed operations never happened; an unknown read constrains nothing.
        self.ops: list[Operation] = [
            op
            for op in key_ops
            if op.status is Status.OK or (op.status is Status.UNKNOWN and op.kind != "read")
        ]
        self.steps = 0
        self.best: list[int] = []  # longest linearization prefix found (operation indices)
        self.best_state: Hashable = None
        self._build()

    # --- setup ---------------------------------------------------------------------------------

    def _build(self) -> None:
        ops = self.ops
        self.kind = [KIND_CODES[op.kind] for op in ops]
        self.optional = [op.status is Status.UNKNOWN for op in ops]
        self.required = self.optional.count(False)
        observed = {op.output for op in ops if op.kind == "read" and op.status is Status.OK}
        observed.update(op.expected for op in ops if op.kind == "cas")
        self.value = [op.value if op.value in observed else UNOBSERVED for op in ops]
        self.ops_expected = [op.expected for op in ops]
        self.ops_output = [op.output for op in ops]
        # The value each operation looks at (a read's output, a cas's expected value), and
        # how many operations look at each value: once all of those are linearized, the
        # value is as good as UNOBSERVED. None is special (absent) and never counted.
        self.watches: list[Hashable] = [_NOTHING] * len(ops)
        self.watchers: dict[Hashable, int] = {}
        for i, op in enumerate(ops):
            if op.kind == "read" and not self.optional[i]:
                watched = op.output
            elif op.kind == "cas":
                watched = op.expected
            else:
                continue
            if watched is not None:
                self.watches[i] = watched
                self.watchers[watched] = self.watchers.get(watched, 0) + 1
        # Bitset positions: required and optional operations are numbered separately.
        counters = [0, 0]
        self.bit = [0] * len(ops)
        for i, opt in enumerate(self.optional):
            self.bit[i] = 1 << counters[opt]
            counters[opt] += 1

        # All events in time order; at equal times calls go first, so operations that merely
        # touch are treated as concurrent (the permissive reading of a coarse clock).
        events: list[tuple[float, int, int]] = []
        for i, op in enumerate(ops):
            events.append((op.call, 0, i))
            if not self.optional[i]:
                assert op.ret is not None
                events.append((op.ret, 1, i))
        events.sort()
        self.call_rank = [0] * len(ops)
        for rank, (_, is_ret, i) in enumerate(events):
            if not is_ret:
                self.call_rank[i] = rank
        self._build_entry_list(events)
        self._build_classes()

    def _build_entry_list(self, events: list[tuple[float, int, int]]) -> None:
        """The doubly linked list of the required operations' events: 0 is the head
        sentinel, 1..n the events in time order, n + 1 the tail sentinel."""
        mine = [(rank, is_ret, i) for rank, (_, is_ret, i) in enumerate(events)]
        mine = [ev for ev in mine if not self.optional[ev[2]]]
        n = len(mine)
        self.nxt = list(range(1, n + 2)) + [n + 1]
        self.prv = [0, *range(0, n + 1)]
        self.entry_op = [-1] * (n + 2)
        self.entry_rank = [0] * (n + 2)
        self.is_call = [False] * (n + 2)
        self.match = [0] * (n + 2)  # call entry -> its return entry
        call_entry: dict[int, int] = {}
        for e, (rank, is_ret, i) in enumerate(mine, start=1):
            self.entry_op[e] = i
            self.entry_rank[e] = rank
            if is_ret:
                self.match[call_entry[i]] = e
            else:
                self.is_call[e] = True
                call_entry[i] = e

    def _build_classes(self) -> None:
        """Group identical optional operations into classes, and the classes into buckets:
        bucket 0 holds writes and deletes, the others the cas classes by expected value.

        Each bucket is a circular doubly linked list of its classes (ids 0..c-1) behind a
        sentinel (id c + bucket), ordered by first call; a class is unlinked while all its
        operations are in use.
        """
        ops = self.ops
        by_sig: dict[tuple, list[int]] = {}
        for i in sorted(range(len(ops)), key=lambda i: self.call_rank[i]):
            if self.optional[i]:
                sig = (ops[i].kind, ops[i].expected, self.value[i])
                by_sig.setdefault(sig, []).append(i)
        self.members = list(by_sig.values())  # in order of first call
        n = len(self.members)
        self.class_kind = [self.kind[m[0]] for m in self.members]
        self.class_value = [self.value[m[0]] for m in self.members]
        self.class_first_rank = [self.call_rank[m[0]] for m in self.members]

        self.cas_bucket: dict[Hashable, int] = {}  # expected value -> bucket sentinel id
        bucket_of: list[int] = []
        buckets = 1
        for m in self.members:
            if self.kind[m[0]] == CAS:
                expected = ops[m[0]].expected
                if expected not in self.cas_bucket:
                    self.cas_bucket[expected] = n + buckets
                    buckets += 1
                bucket_of.append(self.cas_bucket[expected])
            else:
                bucket_of.append(n)
        self.class_bucket = bucket_of
        size = n + buckets
        self.cnext = list(range(size))
        self.cprev = list(range(size))
        for c, sentinel in enumerate(bucket_of):  # append c at the end of its bucket
            last = self.cprev[sentinel]
            self.cnext[last] = c
            self.cprev[c] = last
            self.cnext[c] = sentinel
            self.cprev[sentinel] = c
        self.write_bucket = n

    # --- search --------------------------------------------------------------------------------

    def run(self, budget: int | None) -> bool | None:
        """Search for a linearization; None if ``budget`` steps were not enough.

        One step is one candidate looked at. The loop is flat (no recursion, no helper calls
        on the hot path) because it runs millions of times on hard histories.
        """
        nxt, prv = self.nxt, self.prv
        entry_op, entry_rank, is_call, match = (
            self.entry_op,
            self.entry_rank,
            self.is_call,
            self.match,
        )
        cnext, cprev = self.cnext, self.cprev
        members, class_kind, class_value = self.members, self.class_kind, self.class_value
        class_first_rank, class_bucket = self.class_first_rank, self.class_bucket
        write_bucket, cas_bucket = self.write_bucket, self.cas_bucket
        nclasses = len(members)
        call_rank, kind, bit, watches = self.call_rank, self.kind, self.bit, self.watches
        expected, value, output = self.ops_expected, self.value, self.ops_output
        watchers = dict(self.watchers)  # value -> operations not yet linearized that look at it
        limit = -1 if budget is None else budget

        state: Hashable = None
        run_from: Hashable = _NO_RUN  # the state before the current run of optional ops
        done = 0  # bitset of the required operations linearized
        used = 0  # bitset of the optional operations linearized
        next_member = [0] * nclasses  # per class: index of its first unused member
        remaining = self.required
        # Visited configurations: (done, state, run_from) -> the ``used`` sets seen with it.
        seen: dict[tuple[int, Hashable, Hashable], list[int]] = {(0, None, _NO_RUN): [0]}
        # Frames: (operation, entry or -1, class or -1, previous state, previous run_from,
        # frontier, unobserved_tried); an optional move resumes its walk after its class.
        stack: list[tuple[int, int, int, Hashable, Hashable, int, bool]] = []
        best: list[int] = []
        low = 0  # stack depth below which ``best`` still equals the stack
        steps = 0

        e = nxt[0]  # phase 1 cursor: required call entries, in time order
        cls = -1  # phase 2 cursor: a class id or a bucket sentinel
        frontier = 0  # rank of the first remaining return: optional ops called before it
        unobserved_tried = False  # phase 2 already tried a class that leaves UNOBSERVED
        while remaining:
            if steps == limit:
                self.steps = steps
                self.best, self.best_state = best, self._replay(best)
                return None
            steps += 1
            if e >= 0:
                # Phase 1: try the next required operation whose call precedes all returns.
                if not is_call[e]:
                    # The first remaining return: switch to the optional operations, but
                    # only if a run of them could matter (see _blocked).
                    frontier = entry_rank[e]
                    e = -1
                    unobserved_tried = False
                    if run_from is _NO_RUN:
                        cls = write_bucket if self._blocked(state) else -1
                    elif self._blocked(run_from):
                        cls = cas_bucket.get(state, -1)
                    else:
                        cls = -1
                    continue
                i = entry_op[e]
                k = kind[i]
                if k == READ:
                    good = output[i] == state
                    new = state
                elif k == WRITE:
                    good = True
                    new = value[i]
                elif k == DELETE:
                    good = output[i] == (state is not None)
                    new = None
                else:
                    hit = state == expected[i]
                    good = output[i] == hit
                    new = value[i] if hit else state
                if good and run_from is not _NO_RUN:
                    good = _run_matters(k, run_from, state, new, expected[i], value[i], output[i])
                if not good:
                    e = nxt[e]
                    continue
                new_done, new_used, next_run = done | bit[i], used, _NO_RUN
            elif cls >= 0:
                # Phase 2: the first unused member of each class in the bucket that applies.
                cls = cnext[cls]
                if cls >= nclasses or class_first_rank[cls] >= frontier:
                    # End of the bucket (classes are in order of first call); after the
                    # writes and deletes come the cas classes that expect ``state``.
                    bucket = cls if cls >= nclasses else class_bucket[cls]
                    cls = cas_bucket.get(state, -1) if bucket == write_bucket else -1
                    unobserved_tried = False
                    continue
                i = members[cls][next_member[cls]]
                if call_rank[i] >= frontier:
                    continue
                new = class_value[cls] if class_kind[cls] != DELETE else None
                if new is not None and new is not UNOBSERVED:
                    left = watchers.get(new, 0) - (watches[i] == new)
                    if left <= 0:
                        new = UNOBSERVED
                if new == state:
                    continue  # a no-op
                if new is UNOBSERVED:
                    # Every class that leaves an unobserved value does the same; try one.
                    if unobserved_tried:
                        continue
                    unobserved_tried = True
                new_done, new_used = done, used | bit[i]
                next_run = state if run_from is _NO_RUN else run_from
            else:
                # No candidate left: undo the last move.
                if not stack:
                    self.steps = steps
                    self.best, self.best_state = best, self._replay(best)
                    return False
                i, e, cls, state, run_from, frontier, unobserved_tried = stack.pop()
                if len(stack) < low:
                    low = len(stack)
                w = watches[i]
                if w is not _NOTHING:
                    watchers[w] += 1
                if e >= 0:
                    done &= ~bit[i]
                    remaining += 1
                    r = match[e]  # relink in the reverse order of lifting
                    nxt[prv[r]] = r
                    prv[nxt[r]] = r
                    nxt[prv[e]] = e
                    prv[nxt[e]] = e
                    e = nxt[e]
                else:
                    used &= ~bit[i]
                    if next_member[cls] == len(members[cls]):
                        cnext[cprev[cls]] = cls
                        cprev[cnext[cls]] = cls
                    next_member[cls] -= 1
                continue

            # A legal candidate ``i`` leading to state ``new``. Once no remaining operation
            # looks at a value, it is as good as any other such value.
            w = watches[i]
            if new is not None and new is not UNOBSERVED and e >= 0:
                left = watchers.get(new, 0) - (w == new)
                if left <= 0:
                    new = UNOBSERVED
            memo = (new_done, new, next_run)
            visited = seen.get(memo)
            if visited is None:
                seen[memo] = [new_used]
            elif any(u | new_used == new_used for u in visited):
                if e >= 0:
                    e = nxt[e]
                continue
            else:
                visited.append(new_used)

            # Make the move.
            stack.append((i, e, cls, state, run_from, frontier, unobserved_tried))
            state, run_from, done, used = new, next_run, new_done, new_used
            if w is not _NOTHING:
                watchers[w] -= 1
            if e >= 0:
                remaining -= 1
                a, b = prv[e], nxt[e]  # lift the call entry and its return entry
                nxt[a] = b
                prv[b] = a
                r = match[e]
                a, b = prv[r], nxt[r]
                nxt[a] = b
                prv[b] = a
            else:
                next_member[cls] += 1
                if next_member[cls] == len(members[cls]):
                    cnext[cprev[cls]] = cnext[cls]
                    cprev[cnext[cls]] = cprev[cls]
            if len(stack) > len(best):
                best = best[:low] + [frame[0] for frame in stack[low:]]
                low = len(stack)
            e = nxt[0]
        self.steps = steps
        self.best = [frame[0] for frame in stack]
        return True

    def _blocked(self, before: Hashable) -> bool:
        """Whether some required operation that could be linearized now is illegal in state
        ``before``. A run of optional operations from ``before`` matters (in the sense of
        :func:`_run_matters`) only to such an operation, so otherwise none is tried."""
        nxt, is_call, entry_op, kind = self.nxt, self.is_call, self.entry_op, self.kind
        expected, value, output = self.ops_expected, self.value, self.ops_output
        e = nxt[0]
        while is_call[e]:
            i = entry_op[e]
            if not step(kind[i], before, expected[i], value[i], output[i], True)[0]:
                return True
            e = nxt[e]
        return False

    # --- reporting -----------------------------------------------------------------------------

    def _replay(self, order: list[int]) -> Hashable:
        """The register state after applying ``order`` (a valid linearization prefix)."""
        state: Hashable = None
        for i in order:
            op = self.ops[i]
            state = step(self.kind[i], state, op.expected, op.value, op.output, False)[1]
        return state

    def explain(self) -> str:
        """Describe the longest linearizable prefix found and what could not follow it."""
        ops = self.ops
        placed = set(self.best)
        lines = [
            f"{len(self.best)} of {len(ops)} operations could be linearized "
            f"(longest prefix found, {self.steps} steps)."
        ]
        shown = self.best[-_MAX_LISTED:]
        if len(shown) < len(self.best):
            lines.append(f"  ... {len(self.best) - len(shown)} earlier operations ...")
        start = len(self.best) - len(shown) + 1
        lines += [f"  {n}. {ops[i].describe()}" for n, i in enumerate(shown, start=start)]
        lines.append(f"State after that prefix: {self.best_state!r}.")

        unplaced = [i for i in range(len(ops)) if i not in placed and not self.optional[i]]
        if not unplaced:
            return "\n".join(lines)
        first = min(unplaced, key=lambda i: (ops[i].ret, i))
        deadline = ops[first].ret
        assert deadline is not None
        blocked = [i for i in unplaced if ops[i].call <= deadline]
        blocked.sort(key=lambda i: ops[i].call)
        lines.append(
            f"None of these could be linearized next, though {ops[first].describe()} "
            f"had to take effect by time {deadline}:"
        )
        lines += [f"  - {ops[i].describe()}" for i in blocked[:_MAX_LISTED]]
        if len(blocked) > _MAX_LISTED:
            lines.append(f"  ... and {len(blocked) - _MAX_LISTED} more")
        pending = sum(
            1
            for i in range(len(ops))
            if self.optional[i] and i not in placed and ops[i].call <= deadline
        )
        if pending:
            lines.append(
                f"({pending} operations with an unknown outcome could also have taken effect.)"
            )
        return "\n".join(lines)


def _run_matters(
    kind: int,
    before: Hashable,
    after: Hashable,
    result: Hashable,
    expected: Hashable,
    value: Hashable,
    output: object,
) -> bool:
    """Whether a run of optional operations (state ``before`` -> ``after``) is needed just
    before a required operation that, from ``after``, is legal and leaves ``result``.

    It is not needed if the required operation is also legal from ``before`` and either ends
    in the same state (the run can be dropped) or leaves both states unchanged (the run can
    move after it).
    """
    legal, result_before = step(kind, before, expected, value, output, True)
    if not legal:
        return True
    if result_before == result:
        return False
    return not (result_before == before and result == after)
