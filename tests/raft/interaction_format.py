"""How the interaction scripts print things (see tests/raft/interaction.py for the grammar).

Values, entries and messages print generically where they can: a message shows every field
that differs from its default, a Ready shows the fields this file knows in a fixed layout and
any other non-default field by name, so additions to the core show up in the output instead of
breaking the interpreter. `Output` collects a command's lines; nested steps are indented.
The views `print_status` and `print_log` read a few core fields directly (role, term,
progress, unstable entries), the only places that do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from kvstore.raft.rawnode import RawNode
from kvstore.raft.storage import MemoryStorage
from kvstore.raft.types import Entry, EntryType, Message, Ready, Role, SnapshotMeta

# -- values ----------------------------------------------------------------------------------


def fmt_data(data: bytes) -> str:
    """Printable ASCII without spaces as is; anything else quoted or as hex."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return "0x" + data.hex()
    if text and text.isprintable() and " " not in text and '"' not in text:
        return text
    if text.isprintable():
        return '"' + text.replace('"', '\\"') + '"'
    return "0x" + data.hex()


def fmt_entry(e: Entry) -> str:
    """`index/term` then the data; entries other than NORMAL name their type."""
    head = f"{e.index}/{e.term}"
    if e.type == EntryType.NORMAL:
        return f"{head} {fmt_data(e.data)}"
    if e.data:
        return f"{head} {e.type.name} {fmt_data(e.data)}"
    return f"{head} {e.type.name}"


def fmt_entries(entries: Iterable[Entry]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def snapshot_meta(snap: Any) -> SnapshotMeta:
    """A SnapshotMeta, or anything carrying one as `.meta` (a snapshot with its data)."""
    meta = getattr(snap, "meta", snap)
    assert isinstance(meta, SnapshotMeta), f"not a snapshot: {snap!r}"
    return meta


def fmt_value(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name.lower().replace("_", "-")
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, bytes):
        return fmt_data(value)
    if isinstance(value, Entry):
        return fmt_entry(value)
    if isinstance(value, tuple | list) and all(isinstance(v, Entry) for v in value):
        return fmt_entries(value)
    if isinstance(value, SnapshotMeta) or isinstance(getattr(value, "meta", None), SnapshotMeta):
        meta = snapshot_meta(value)
        return f"{meta.index}/{meta.term}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return str(value)


def field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def fmt_fields(obj: Any, skip: Iterable[str] = (), only_changed: bool = False) -> str:
    """`name=value` for each dataclass field; with only_changed, fields that differ from
    their default (fields without a default are always shown). True booleans print as
    their bare name."""
    parts = []
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if only_changed and value == field_default(f):
            continue
        if value is True and only_changed:
            parts.append(f.name)
        else:
            parts.append(f"{f.name}={fmt_value(value)}")
    return " ".join(parts)


def fmt_msg(m: Message) -> str:
    """`src->dst TYPE term=.. field=..`: every field that is not at its default."""
    rest = fmt_fields(m, skip=("type", "src", "dst"), only_changed=True)
    return f"{m.src}->{m.dst} {m.type.name} {rest}".rstrip()


# -- a command's output ----------------------------------------------------------------------


class Output:
    """The lines one command prints; lines emitted inside `indented()` are indented."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._indent = ""

    def emit(self, line: str) -> None:
        self.lines.append((self._indent + line).rstrip())

    @contextmanager
    def indented(self) -> Iterator[None]:
        saved = self._indent
        self._indent += "  "
        try:
            yield
        finally:
            self._indent = saved


def print_ready(out: Output, rd: Ready, blocked: Callable[[Message], str | None]) -> None:
    """Every part of `rd`; `blocked(m)` says why a message cannot travel now, or None."""
    if rd.soft_state is not None:
        out.emit(f"soft state: {fmt_fields(rd.soft_state)}")
    if rd.hard_state is not None:
        out.emit(f"hard state: {fmt_fields(rd.hard_state)}")
    if rd.snapshot is not None:
        out.emit(f"snapshot to install: {fmt_value(rd.snapshot)}")
    sections: list[tuple[str, tuple[Any, ...], Callable[[Any], str]]] = [
        ("entries to persist:", rd.entries, fmt_entry),
        ("committed:", rd.committed, fmt_entry),
        ("read states:", rd.read_states, fmt_fields),
    ]
    for title, items, fmt in sections:
        if items:
            out.emit(title)
            with out.indented():
                for item in items:
                    out.emit(fmt(item))
    if rd.dropped_reads:
        out.emit(f"dropped reads: {', '.join(str(r) for r in rd.dropped_reads)}")
    if rd.messages:
        when = "before" if rd.send_before_persist else "after"
        out.emit(f"messages (sent {when} persisting):")
        with out.indented():
            for m in rd.messages:
                why = blocked(m)
                out.emit(fmt_msg(m) + (f"  (dropped: {why})" if why else ""))
    known = {"soft_state", "hard_state", "snapshot", "entries", "committed", "read_states",
             "dropped_reads", "messages", "send_before_persist"}
    for f in dataclasses.fields(rd):
        value = getattr(rd, f.name)
        if f.name not in known and value != field_default(f):
            out.emit(f"{f.name}: {fmt_value(value)}")


# -- views of a node -------------------------------------------------------------------------


def print_status(out: Output, node_id: str, raw: RawNode | None) -> None:
    """Built from the core's fields directly, including the leader's own progress (its
    match moves only once its own entries are persisted)."""
    if raw is None:
        out.emit(f"{node_id}: down")
        return
    r = raw.raft
    hs = raw.hard_state()
    line = (f"{node_id}: {fmt_value(r.role)} term={hs.term} vote={fmt_value(hs.vote)} "
            f"leader={fmt_value(r.leader)} commit={hs.commit} applied={r.log.applied} "
            f"log={r.log.first_index()}..{r.log.last_index()}")
    if getattr(r, "passive", False):
        line += " passive"
    out.emit(line)
    if r.role != Role.LEADER:
        return
    with out.indented():
        for peer, pr in r.prs.items():
            if peer == node_id:  # only `match` means something for the leader itself
                out.emit(f"{peer}: match={pr.match} (self: counts once persisted)")
                continue
            text = f"{peer}: match={pr.match} next={pr.next} {fmt_value(pr.state)}"
            inflight = list(getattr(pr, "inflight", ()))
            if inflight:
                text += f" inflight={fmt_value(inflight)}"
            if pr.is_paused():
                text += " paused"
            out.emit(text)


def print_log(out: Output, node_id: str, st: MemoryStorage, raw: RawNode | None) -> None:
    """Durable hard state, snapshot, stable entries, and the unstable ones of a running node."""
    out.emit(f"{node_id} log:")
    with out.indented():
        out.emit(f"durable hard state: {fmt_fields(st.hard_state)}")
        if st.snapshot.index:
            out.emit(f"snapshot: {fmt_value(st.snapshot)}")
        unstable: tuple[Entry, ...] = ()
        if raw is not None:
            unstable = raw.raft.log.unstable_entries()
        shadow = unstable[0].index if unstable else st.last_index() + 1
        for e in st.entries(st.first_index(), st.last_index() + 1):
            note = "  (being replaced)" if e.index >= shadow else ""
            out.emit(fmt_entry(e) + note)
        for e in unstable:
            out.emit(f"{fmt_entry(e)}  (unstable)")
        if not unstable and st.last_index() < st.first_index():
            out.emit("no entries")
