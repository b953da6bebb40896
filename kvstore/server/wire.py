"""Conversion between the core's dataclasses and the peer protocol's protobuf messages.

Decoding trusts nothing: proto3 enums are open, so a peer (a newer version, or a broken or
hostile one) can send a message or entry type we do not know. Such a message raises
WireError, for that message alone: the receiver logs it and goes on with the next message
of the stream, which must not end because of one message. What a decoded message says
(terms, indexes, senders) is checked by kvstore.server.peer_checks before the core sees it.
"""

from __future__ import annotations

from kvstore.raft.types import Entry, EntryType, Message, MessageType
from kvstore.v1 import raft_pb2


class WireError(ValueError):
    """One peer message that cannot be decoded; skip it, keep the stream."""


def entry_to_pb(e: Entry) -> raft_pb2.Entry:
    return raft_pb2.Entry(term=e.term, index=e.index, type=int(e.type), data=e.data)


def entry_from_pb(p: raft_pb2.Entry) -> Entry:
    """Raises WireError for an entry type we do not know."""
    try:
        etype = EntryType(p.type)
    except ValueError:
        raise WireError(f"entry {p.index}: unknown entry type {p.type}") from None
    return Entry(p.term, p.index, etype, p.data)


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
        needs_snapshot=m.needs_snapshot,
        **{"from": m.src},
    )


def message_from_pb(p: raft_pb2.Message) -> Message:
    """The core's Message for `p`. Raises WireError (a ValueError) when `p` names a message
    or entry type we do not know (MSG_UNKNOWN included): the caller skips that message and
    keeps reading its stream:

        try:
            msg = message_from_pb(pb)
        except WireError as err:
            log.warning("dropped a message from %s: %s", getattr(pb, "from"), err)
            continue
    """
    try:
        mtype = MessageType(p.type)
    except ValueError:
        raise WireError(f"unknown message type {p.type} from {getattr(p, 'from')!r}") from None
    return Message(
        type=mtype,
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
        needs_snapshot=p.needs_snapshot,
    )
