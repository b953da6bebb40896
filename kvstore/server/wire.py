"""Conversion between the core's dataclasses and the peer protocol's protobuf messages."""

from __future__ import annotations

from kvstore.raft.types import Entry, EntryType, Message, MessageType
from kvstore.v1 import raft_pb2


def entry_to_pb(e: Entry) -> raft_pb2.Entry:
    return raft_pb2.Entry(term=e.term, index=e.index, type=int(e.type), data=e.data)


def entry_from_pb(p: raft_pb2.Entry) -> Entry:
    return Entry(p.term, p.index, EntryType(p.type), p.data)


def message_to_pb(m: Message) -> raft_pb2.Message:
    return raft_pb2.Message(
        type=int(m.type),
        to=m.dst,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        entries=[entry_to_pb(e) for e in m.entries],
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        hint_term=m.hint_term,
        context=m.context,
        rebuilding=m.rebuilding,
        **{"from": m.src},
    )


def message_from_pb(p: raft_pb2.Message) -> Message:
    return Message(
        type=MessageType(p.type),
        src=getattr(p, "from"),
        dst=p.to,
        term=p.term,
        log_term=p.log_term,
        index=p.index,
        entries=tuple(entry_from_pb(e) for e in p.entries),
        commit=p.commit,
        reject=p.reject,
        reject_hint=p.reject_hint,
        hint_term=p.hint_term,
        context=p.context,
        rebuilding=p.rebuilding,
    )
