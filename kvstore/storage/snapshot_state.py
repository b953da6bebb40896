"""Snapshot export and install checks shared by the LMDB and in-memory node stores.

A snapshot is the whole state machine (every database of ShardedStateMachine) at one applied
index. Both stores must write the same bytes for the same state and refuse the same damaged
or foreign snapshots, otherwise the simulator (MemoryNodeStore) would test a different
protocol than real nodes (LmdbNodeStore) run. So the record stream and every check made
before anything is replaced live here, written against KVTxn and plain bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from kvstore.raft.types import SnapshotMeta
from kvstore.state.machine import KVTxn, ShardedStateMachine
from kvstore.storage import snapshot_file
from kvstore.storage.errors import ConfigMismatchError, StorageError

# LMDB's default key limit. A snapshot holding a key LMDB cannot store is refused by both
# stores, so a snapshot the simulator accepts is one a real node accepts too.
MAX_KEY_SIZE = 511

Record = tuple[str, bytes, bytes]  # (db name, key, value)


def dump_state(
    out: BinaryIO, txn: KVTxn, machine: ShardedStateMachine, meta: SnapshotMeta
) -> None:
    """Write every database of `machine`, as seen by `txn`, as a snapshot covering `meta`.

    Records go out in db order, then ascending key order (KVTxn.items), so two stores with
    the same state write byte-identical snapshots.
    """
    names = tuple(machine.db_names)
    header = snapshot_file.SnapshotHeader(
        meta.index, meta.term, machine.ring.shards, machine.ring.vnodes, names
    )
    writer = snapshot_file.SnapshotWriter(out, header)
    for name in names:
        for key, value in txn.items(name):
            writer.add(name, bytes(key), bytes(value))
    writer.finish()


def open_snapshot(
    data: bytes, machine: ShardedStateMachine
) -> tuple[snapshot_file.SnapshotHeader, Iterator[Record]]:
    """Verify `data` and check it fits `machine`; return its header and records.

    Raises StorageError (ConfigMismatchError for another shard layout) before returning if
    the file is damaged or foreign. The records are parsed lazily, so a malformed record
    that still passed the CRC raises StorageError only while iterating: a store must consume
    them all before it commits anything.
    """
    try:
        header, records = snapshot_file.read(data)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise StorageError(f"snapshot header is malformed: {exc}") from None
    if (header.shards, header.vnodes) != (machine.ring.shards, machine.ring.vnodes):
        raise ConfigMismatchError(
            f"snapshot has shards={header.shards} vnodes={header.vnodes}; this node has "
            f"shards={machine.ring.shards} vnodes={machine.ring.vnodes}"
        )
    unknown = set(header.dbs) - set(machine.db_names)
    if unknown:
        raise StorageError(f"snapshot holds unknown databases {sorted(unknown)}")
    return header, _checked(records)


def _checked(records: Iterator[Record]) -> Iterator[Record]:
    """Turn a record stream's parse failures and unstorable keys into StorageError."""
    try:
        for name, key, value in records:
            if not 0 < len(key) <= MAX_KEY_SIZE:
                raise StorageError(f"snapshot holds a key of {len(key)} bytes in {name}")
            yield name, key, value
    except (struct.error, IndexError) as exc:
        raise StorageError(f"snapshot record is malformed: {exc}") from None
