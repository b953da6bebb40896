"""Decoding peer messages: one message or entry type we do not know raises WireError for that
message alone, so the receiver can skip it and keep the stream (it used to raise a bare
ValueError out of the stream handler, which ended the whole peer stream)."""

from __future__ import annotations

import pytest

from kvstore.raft.types import Entry, EntryType, Message, MessageType
from kvstore.server import wire
from kvstore.server.wire import WireError, message_from_pb, message_to_pb
from kvstore.v1 import raft_pb2


def _pb(**fields: object) -> raft_pb2.Message:
    base = message_to_pb(Message(MessageType.HEARTBEAT, "n1", "n2", 3, commit=1))
    for name, value in fields.items():
        setattr(base, name, value)
    return base


@pytest.mark.parametrize("mtype", [0, 11, 42, 2**31 - 1, -1])
def test_an_unknown_message_type_raises_wire_error(mtype: int) -> None:
    with pytest.raises(WireError, match=f"unknown message type {mtype} from 'n1'"):
        message_from_pb(_pb(type=mtype))


@pytest.mark.parametrize("etype", [3, 99, -5])
def test_an_unknown_entry_type_raises_wire_error(etype: int) -> None:
    m = Message(MessageType.APP, "n1", "n2", 3, entries=(Entry(3, 1), Entry(3, 2)))
    pb = message_to_pb(m)
    pb.entries[1].type = etype
    with pytest.raises(WireError, match=f"entry 2: unknown entry type {etype}"):
        message_from_pb(pb)


def test_wire_error_is_a_value_error() -> None:
    """Callers that catch ValueError (the old contract) still do."""
    assert issubclass(WireError, ValueError)


def test_a_stream_skips_the_bad_message_and_keeps_the_rest() -> None:
    """The loop the transport runs over one MessageBatch."""
    good = [Message(MessageType.HEARTBEAT, "n1", "n2", 3, commit=i) for i in range(3)]
    batch = raft_pb2.MessageBatch(messages=[message_to_pb(good[0]), _pb(type=77),
                                            message_to_pb(good[1]), message_to_pb(good[2])])
    batch.messages.add().CopyFrom(message_to_pb(
        Message(MessageType.APP, "n1", "n2", 3, entries=(Entry(3, 1),))))
    batch.messages[-1].entries[0].type = 9
    received, skipped = [], []
    for pb in raft_pb2.MessageBatch.FromString(batch.SerializeToString()).messages:
        try:
            received.append(message_from_pb(pb))
        except WireError as err:
            skipped.append(str(err))
            continue
    assert received == good
    assert len(skipped) == 2


def test_known_types_round_trip() -> None:
    for mtype in MessageType:
        m = Message(mtype, "n1", "n2", 2**62, log_term=1, index=2, commit=3, reject=True,
                    reject_hint=4, hint_term=5, context=6, rebuilding=True,
                    entries=tuple(Entry(1, 3 + i, etype, b"d")
                                  for i, etype in enumerate(EntryType)))
        assert wire.message_from_pb(wire.message_to_pb(m)) == m
