"""The simulated cluster behind the interaction scripts, and its commands.

tests/raft/interaction.py describes the script grammar, every command and what process-ready
does; this module is the interpreter: `Interaction.run` carries out one command line on an
in-memory cluster of real RawNodes and returns what it printed (formatted by
tests/raft/interaction_format.py).
"""

from __future__ import annotations

import dataclasses
import random
import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from kvstore.raft.core import RaftConfig
from kvstore.raft.errors import RaftError
from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import MemoryStorage
from kvstore.raft.types import EntryType, Message, MessageType, Role
from tests.raft.interaction_format import (
    Output,
    field_default,
    fmt_data,
    fmt_entries,
    fmt_fields,
    fmt_msg,
    print_log,
    print_ready,
    print_status,
    snapshot_meta,
)

MAX_STABILIZE_ROUNDS = 1000


class ScriptError(Exception):
    """The script is malformed or asks for something impossible (not an output mismatch)."""


# -- the cluster -----------------------------------------------------------------------------


@dataclass
class StateMachine:
    """What a node applied: its applied index and the data of the NORMAL entries."""

    applied: int = 0
    data: list[bytes] = field(default_factory=list)

    def copy(self) -> StateMachine:
        return StateMachine(self.applied, list(self.data))


@dataclass
class Node:
    id: str
    storage: MemoryStorage
    config: RaftConfig
    sm: StateMachine = field(default_factory=StateMachine)
    raw: RawNode | None = None  # None while crashed


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "on", "yes", "1"):
        return True
    if lowered in ("false", "off", "no", "0"):
        return False
    raise ScriptError(f"not a boolean: {text!r}")


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScriptError(f"not an integer: {text!r}") from None


def _split_kwargs(args: list[str]) -> tuple[list[str], dict[str, str]]:
    pos: list[str] = []
    kw: dict[str, str] = {}
    for a in args:
        if "=" in a:
            k, v = a.split("=", 1)
            kw[k] = v
        else:
            pos.append(a)
    return pos, kw


class Interaction:
    """An in-memory cluster driven by script commands; `run` returns a command's output."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[str, str]] = set()
        self.staged: dict[tuple[str, int], StateMachine] = {}  # (dst, index): streamed state
        self.fail_snapshots = False
        self.seed = "interaction"
        self._out = Output()
        self._commands: dict[str, Callable[[list[str]], None]] = {
            "add-nodes": self._cmd_add_nodes,
            "campaign": self._cmd_campaign,
            "tick": self._cmd_tick,
            "tick-election": self._cmd_tick_election,
            "tick-heartbeat": self._cmd_tick_heartbeat,
            "propose": self._cmd_propose,
            "read-index": self._cmd_read_index,
            "process-ready": self._cmd_process_ready,
            "deliver-msgs": self._cmd_deliver_msgs,
            "drop-msgs": self._cmd_drop_msgs,
            "msgs": self._cmd_msgs,
            "stabilize": self._cmd_stabilize,
            "isolate": self._cmd_isolate,
            "cut": self._cmd_cut,
            "heal": self._cmd_heal,
            "crash": self._cmd_crash,
            "restart": self._cmd_restart,
            "resync": self._cmd_resync,
            "compact": self._cmd_compact,
            "report-unreachable": self._cmd_report_unreachable,
            "fail-snapshots": self._cmd_fail_snapshots,
            "step": self._cmd_step,
            "status": self._cmd_status,
            "log": self._cmd_log,
            "applied": self._cmd_applied,
        }

    # -- plumbing ------------------------------------------------------------------------

    def run(self, command: str) -> list[str]:
        try:
            args = shlex.split(command)
        except ValueError as err:
            raise ScriptError(f"cannot parse the command: {err}") from None
        if not args:
            raise ScriptError("empty command")
        quiet = args[0] == "quiet"
        if quiet:
            args = args[1:]
            if not args:
                raise ScriptError("usage: quiet COMMAND...")
        handler = self._commands.get(args[0])
        if handler is None:
            raise ScriptError(f"unknown command {args[0]!r} (known: "
                              f"{', '.join(sorted(self._commands))})")
        if args[0] != "add-nodes" and not self.nodes:
            raise ScriptError("add-nodes must come first")
        self._out = Output()
        try:
            handler(args[1:])
        except RaftError as err:
            self._emit(f"error: {type(err).__name__}: {err}")
        lines = self._out.lines
        if quiet:
            lines = [line for line in lines if line.startswith("error:")]
        return lines or ["ok"]

    def _emit(self, line: str) -> None:
        self._out.emit(line)

    def _log(self, text: str) -> None:
        self._emit(f"log: {text}")

    def _indented(self) -> AbstractContextManager[None]:
        return self._out.indented()

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    def _id(self, token: str) -> str:
        node_id = f"n{token}" if token.isdigit() else token
        if node_id not in self.nodes:
            raise ScriptError(f"no node {token!r} (nodes: {', '.join(self.nodes)})")
        return node_id

    def _ids(self, tokens: list[str], default_all: bool = False) -> list[str]:
        if not tokens:
            if default_all:
                return self.ids
            raise ScriptError("name at least one node")
        return [self._id(t) for t in tokens]

    def _raw(self, node_id: str) -> RawNode:
        raw = self.nodes[node_id].raw
        if raw is None:
            raise ScriptError(f"{node_id} is down (crashed); restart it first")
        return raw

    def _start(self, node: Node, passive: bool = False) -> None:
        node.config = dataclasses.replace(node.config, applied=node.sm.applied,
                                          passive_until_contact=passive)
        rng = random.Random(f"{self.seed}-{node.id}")
        node.raw = RawNode(node.config, node.storage, rng, self._log)

    def _blocked(self, m: Message) -> str | None:
        """Why `m` cannot travel now, or None."""
        if (m.src, m.dst) in self.cut:
            return f"link {m.src}->{m.dst} is cut"
        if self.nodes[m.dst].raw is None:
            return f"{m.dst} is down"
        return None

    # -- setup -----------------------------------------------------------------------------

    def _cmd_add_nodes(self, args: list[str]) -> None:
        if self.nodes:
            raise ScriptError("add-nodes may run only once per script")
        pos, kw = _split_kwargs(args)
        if len(pos) != 1:
            raise ScriptError("usage: add-nodes COUNT [option=value...]")
        count = _parse_int(pos[0])
        self.seed = kw.pop("seed", self.seed)
        ids = tuple(f"n{i}" for i in range(1, count + 1))
        settable = {f.name: f for f in dataclasses.fields(RaftConfig)
                    if f.name not in ("node_id", "voters", "applied", "passive_until_contact")}
        options: dict[str, Any] = {}
        for key, value in kw.items():
            name = key.replace("-", "_")
            f = settable.get(name)
            if f is None:
                raise ScriptError(f"unknown option {key!r} (known: seed, "
                                  f"{', '.join(k.replace('_', '-') for k in settable)})")
            options[name] = (_parse_bool(value) if isinstance(field_default(f), bool)
                             else _parse_int(value))
        for node_id in ids:
            cfg = RaftConfig(node_id=node_id, voters=ids, **options)
            node = Node(node_id, MemoryStorage(), cfg)
            self.nodes[node_id] = node
            self._start(node)
        shown = fmt_fields(self.nodes[ids[0]].config,
                           skip=("node_id", "voters", "learners", "joining", "applied",
                                 "passive_until_contact"))
        self._emit(f"{' '.join(ids)}: {shown}")

    # -- time and elections ----------------------------------------------------------------

    def _tick(self, node_id: str, count: int) -> None:
        raw = self._raw(node_id)
        for _ in range(count):
            raw.tick()

    def _cmd_tick(self, args: list[str]) -> None:
        if len(args) not in (1, 2):
            raise ScriptError("usage: tick N [COUNT]")
        self._tick(self._id(args[0]), _parse_int(args[1]) if len(args) == 2 else 1)

    def _cmd_tick_election(self, args: list[str]) -> None:
        for node_id in self._ids(args):
            self._tick(node_id, self.nodes[node_id].config.election_ticks)

    def _cmd_tick_heartbeat(self, args: list[str]) -> None:
        for node_id in self._ids(args):
            self._tick(node_id, self.nodes[node_id].config.heartbeat_ticks)

    def _cmd_campaign(self, args: list[str]) -> None:
        """Tick until the node's own randomized election timeout fires (no shortcut into the
        core): at most 2 * election-ticks ticks."""
        if len(args) != 1:
            raise ScriptError("usage: campaign N")
        node_id = self._id(args[0])
        raw = self._raw(node_id)
        if raw.role == Role.LEADER:
            raise ScriptError(f"{node_id} is the leader already")
        if raw.role == Role.PRE_CANDIDATE:
            raise ScriptError(f"{node_id} is campaigning already (pre-candidate); use tick")
        role, term = raw.role, raw.hard_state().term
        limit = 2 * self.nodes[node_id].config.election_ticks + 1
        mark = len(self._out.lines)
        n = 0
        while raw.role == role and raw.hard_state().term == term:
            if n == limit:
                raise ScriptError(f"{node_id} did not campaign within {limit} ticks")
            raw.tick()
            n += 1
        self._out.lines.insert(mark, f"{node_id} campaigns after {n} tick{'s' if n > 1 else ''}")

    # -- client requests -------------------------------------------------------------------

    def _cmd_propose(self, args: list[str]) -> None:
        if len(args) < 2:
            raise ScriptError("usage: propose N DATA...")
        raw = self._raw(self._id(args[0]))
        first, term = raw.propose([a.encode() for a in args[1:]])
        last = first + len(args) - 2
        where = f"{first}" if last == first else f"{first}..{last}"
        self._emit(f"proposed at index {where}, term {term}")

    def _cmd_read_index(self, args: list[str]) -> None:
        if len(args) != 2:
            raise ScriptError("usage: read-index N REQUEST_ID")
        self._raw(self._id(args[0])).read_index(_parse_int(args[1]))

    # -- Ready -----------------------------------------------------------------------------

    def _process_ready(self, node_id: str) -> bool:
        node = self.nodes[node_id]
        raw = self._raw(node_id)
        if not raw.has_ready():
            return False
        rd = raw.ready()
        self._emit(f"> {node_id} handling Ready")
        with self._indented():
            print_ready(self._out, rd, self._blocked)
            if rd.snapshot is not None:
                meta = snapshot_meta(rd.snapshot)
                staged = self.staged.pop((node_id, meta.index), None)
                if staged is None:
                    raise ScriptError(f"{node_id} installs a snapshot at {meta.index} that no "
                                      "leader streamed to it")
                node.storage.install(meta)
                node.sm = staged
            node.storage.save(rd.hard_state, rd.entries)
            for e in rd.committed:
                if e.index != node.sm.applied + 1:
                    raise ScriptError(f"{node_id} applies {e.index} after {node.sm.applied}")
                node.sm.applied = e.index
                if e.type == EntryType.NORMAL:
                    node.sm.data.append(e.data)
            streams = []
            for m in rd.messages:
                if m.type == MessageType.SNAP:
                    streams.append(m)
                elif self._blocked(m) is None:
                    self.queue.append(m)
            raw.advance(rd)
            for m in streams:
                self._stream_snapshot(m)
        return True

    def _stream_snapshot(self, m: Message) -> None:
        """Play the leader's runtime streaming its state machine to m.dst, then report."""
        leader = self.nodes[m.src]
        raw = self._raw(m.src)
        why = self._blocked(m) or ("fail-snapshots is on" if self.fail_snapshots else None)
        if why is not None:
            self._emit(f"snapshot stream {m.src}->{m.dst} failed ({why}); "
                       f"report_snapshot({m.dst}, None)")
            with self._indented():
                raw.report_snapshot(m.dst, None)
            return
        index = leader.sm.applied
        term = leader.storage.term(index)
        self.staged[(m.dst, index)] = leader.sm.copy()
        self.queue.append(Message(MessageType.SNAP, m.src, m.dst, m.term, log_term=term,
                                  index=index))
        self._emit(f"snapshot stream {m.src}->{m.dst}: state machine at {index}/{term} sent; "
                   f"report_snapshot({m.dst}, {index})")
        with self._indented():
            raw.report_snapshot(m.dst, index)

    def _cmd_process_ready(self, args: list[str]) -> None:
        for node_id in self._ids(args, default_all=True):
            if self.nodes[node_id].raw is None and not args:
                continue
            if not self._process_ready(node_id):
                self._emit(f"> {node_id} has no Ready")

    # -- the network -----------------------------------------------------------------------

    def _select(self, args: list[str]) -> list[Message]:
        """Queued messages matching the selectors (removed from the queue by the caller)."""
        pos, kw = _split_kwargs(args)
        types: set[MessageType] | None = None
        if "type" in kw:
            try:
                types = {MessageType[t.strip().upper()] for t in kw.pop("type").split(",")}
            except KeyError as err:
                raise ScriptError(f"unknown message type {err}") from None
        if kw:
            raise ScriptError(f"unknown selector(s): {', '.join(kw)}")
        dsts: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        for token in pos:
            if "->" in token:
                a, b = token.split("->", 1)
                pairs.add((self._id(a), self._id(b)))
            else:
                dsts.add(self._id(token))

        def wanted(m: Message) -> bool:
            if types is not None and m.type not in types:
                return False
            if not dsts and not pairs:
                return True
            return m.dst in dsts or (m.src, m.dst) in pairs

        return [m for m in self.queue if wanted(m)]

    def _take(self, msgs: list[Message]) -> None:
        ids = {id(m) for m in msgs}
        self.queue = [m for m in self.queue if id(m) not in ids]

    def _deliver(self, msgs: list[Message]) -> None:
        self._take(msgs)
        for dst in self.ids:
            group = [m for m in msgs if m.dst == dst]
            if not group:
                continue
            self._emit(f"> {dst} receiving messages")
            with self._indented():
                for m in group:
                    why = self._blocked(m)
                    if why is not None:
                        self._emit(f"{fmt_msg(m)}  (dropped: {why})")
                        continue
                    self._emit(fmt_msg(m))
                    with self._indented():
                        self._raw(dst).step(m)

    def _cmd_deliver_msgs(self, args: list[str]) -> None:
        msgs = self._select(args)
        if not msgs:
            self._emit("no messages")
        self._deliver(msgs)

    def _cmd_drop_msgs(self, args: list[str]) -> None:
        msgs = self._select(args)
        self._take(msgs)
        for m in msgs:
            self._emit(f"dropped: {fmt_msg(m)}")
        if not msgs:
            self._emit("no messages")

    def _cmd_msgs(self, args: list[str]) -> None:
        msgs = self._select(args)
        for m in msgs:
            self._emit(fmt_msg(m))
        if not msgs:
            self._emit("no messages")

    def _cmd_stabilize(self, args: list[str]) -> None:
        scope = self._ids(args, default_all=True)
        for _ in range(MAX_STABILIZE_ROUNDS):
            moved = False
            for node_id in scope:
                if self.nodes[node_id].raw is not None:
                    moved |= self._process_ready(node_id)
            msgs = [m for m in self.queue if m.dst in scope]
            if msgs:
                self._deliver(msgs)
                moved = True
            if not moved:
                return
        raise ScriptError(f"not stable after {MAX_STABILIZE_ROUNDS} rounds")

    def _cmd_isolate(self, args: list[str]) -> None:
        for node_id in self._ids(args):
            for other in self.ids:
                if other != node_id:
                    self.cut |= {(node_id, other), (other, node_id)}

    def _cmd_cut(self, args: list[str]) -> None:
        if not args:
            raise ScriptError("usage: cut N->M...")
        for token in args:
            if "->" not in token:
                raise ScriptError(f"expected N->M, got {token!r}")
            a, b = token.split("->", 1)
            self.cut.add((self._id(a), self._id(b)))

    def _cmd_heal(self, args: list[str]) -> None:
        if not args:
            self.cut.clear()
            return
        ids = set(self._ids(args))
        self.cut = {(a, b) for a, b in self.cut if a not in ids and b not in ids}

    def _cmd_report_unreachable(self, args: list[str]) -> None:
        if len(args) != 2:
            raise ScriptError("usage: report-unreachable N PEER")
        self._raw(self._id(args[0])).report_unreachable(self._id(args[1]))

    def _cmd_fail_snapshots(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ScriptError("usage: fail-snapshots on|off")
        self.fail_snapshots = _parse_bool(args[0])

    def _cmd_step(self, args: list[str]) -> None:
        pos, kw = _split_kwargs(args)
        if len(pos) != 2 or "from" not in kw:
            raise ScriptError("usage: step N TYPE from=M [field=value...]")
        dst = self._id(pos[0])
        raw = self._raw(dst)
        try:
            mtype = MessageType[pos[1].upper()]
        except KeyError:
            raise ScriptError(f"unknown message type {pos[1]!r}") from None
        values: dict[str, Any] = {"src": self._id(kw.pop("from")), "dst": dst,
                                  "term": raw.hard_state().term}
        fields = {f.name: f for f in dataclasses.fields(Message)}
        for key, text in kw.items():
            f = fields.get(key)
            if f is None or key in ("type", "src", "dst", "entries"):
                raise ScriptError(f"step cannot set {key!r}")
            default = field_default(f)
            values[key] = _parse_bool(text) if isinstance(default, bool) else _parse_int(text)
        m = Message(mtype, **values)
        self._emit(fmt_msg(m))
        with self._indented():
            raw.step(m)

    # -- crashes ---------------------------------------------------------------------------

    def _cmd_crash(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ScriptError("usage: crash N")
        node_id = self._id(args[0])
        self._crash(node_id)

    def _crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        raw = self._raw(node_id)
        self._emit(f"{node_id} crashed")
        with self._indented():
            lost = raw.raft.log.unstable_entries()
            if lost:
                self._emit(f"lost unpersisted entries: {fmt_entries(lost)}")
            if raw.hard_state() != node.storage.hard_state:
                self._emit(f"lost unpersisted hard state: {fmt_fields(raw.hard_state())} "
                           f"(durable: {fmt_fields(node.storage.hard_state)})")
            inbox = [m for m in self.queue if m.dst == node_id]
            self._take(inbox)
            for m in inbox:
                self._emit(f"lost queued message: {fmt_msg(m)}")
        self.staged = {k: v for k, v in self.staged.items() if k[0] != node_id}
        node.raw = None

    def _describe_start(self, node_id: str) -> None:
        raw = self._raw(node_id)
        log = raw.raft.log
        hs = raw.hard_state()
        self._emit(f"{node_id} restarted: {fmt_fields(hs)} applied={self.nodes[node_id].sm.applied}"
                   f" log={log.first_index()}..{log.last_index()}")

    def _cmd_restart(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ScriptError("usage: restart N")
        node_id = self._id(args[0])
        node = self.nodes[node_id]
        if node.raw is not None:
            raise ScriptError(f"{node_id} is running; crash it first")
        self._start(node)
        self._describe_start(node_id)

    def _cmd_resync(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ScriptError("usage: resync N")
        node_id = self._id(args[0])
        node = self.nodes[node_id]
        if node.raw is not None:
            self._crash(node_id)
        node.storage = MemoryStorage()
        node.sm = StateMachine()
        self._start(node, passive=True)
        self._emit(f"{node_id} wiped: restarts on an empty data dir, passive until a leader "
                   "reaches it")
        self._describe_start(node_id)

    def _cmd_compact(self, args: list[str]) -> None:
        if len(args) != 2:
            raise ScriptError("usage: compact N INDEX")
        node_id = self._id(args[0])
        node = self.nodes[node_id]
        index = _parse_int(args[1])
        if index > node.sm.applied:
            raise ScriptError(f"{node_id} has applied only {node.sm.applied}")
        node.storage.compact(index)
        snap = node.storage.snapshot
        self._emit(f"{node_id} compacted through {snap.index}/{snap.term}; log holds "
                   f"{node.storage.first_index()}..{node.storage.last_index()}")

    # -- views -----------------------------------------------------------------------------

    def _cmd_status(self, args: list[str]) -> None:
        for node_id in self._ids(args, default_all=True):
            print_status(self._out, node_id, self.nodes[node_id].raw)

    def _cmd_log(self, args: list[str]) -> None:
        for node_id in self._ids(args):
            node = self.nodes[node_id]
            print_log(self._out, node_id, node.storage, node.raw)

    def _cmd_applied(self, args: list[str]) -> None:
        for node_id in self._ids(args, default_all=True):
            sm = self.nodes[node_id].sm
            data = " ".join(fmt_data(d) for d in sm.data) or "(no data)"
            self._emit(f"{node_id} applied={sm.applied}: {data}")
