"""The snapshot file: a node's whole state machine at one applied index, as a byte stream.

Layout: MAGIC, a header (index, term, shards, vnodes, names of the databases), records
(db number, key, value), an end marker, and a CRC32 of everything before it. The leader writes
it from one LMDB read transaction (a consistent view, no lock on writers), streams it in chunks,
and the follower verifies the CRC over the whole file before installing anything.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from kvstore.storage.errors import StorageError

MAGIC = b"KVSNAP1\n"
_HEADER = struct.Struct(">QQII")  # index, term, shards, vnodes
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_RECORD = struct.Struct(">BII")  # db number, key length, value length
_END = 0xFF


@dataclass(frozen=True)
class SnapshotHeader:
    index: int
    term: int
    shards: int
    vnodes: int
    dbs: tuple[str, ...]


class SnapshotWriter:
    """Writes a snapshot file and its checksum as records are added."""

    def __init__(self, out: BinaryIO, header: SnapshotHeader) -> None:
        self._out = out
        self._crc = 0
        self._db_numbers = {name: i for i, name in enumerate(header.dbs)}
        parts = [MAGIC, _HEADER.pack(header.index, header.term, header.shards, header.vnodes),
                 _U16.pack(len(header.dbs))]
        for name in header.dbs:
            raw = name.encode()
            parts += [_U16.pack(len(raw)), raw]
        self._write(b"".join(parts))

    def _write(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._out.write(data)

    def add(self, db: str, key: bytes, value: bytes) -> None:
        self._write(_RECORD.pack(self._db_numbers[db], len(key), len(value)) + key + value)

    def finish(self) -> None:
        self._write(bytes([_END]))
        self._out.write(_U32.pack(self._crc))


def verify(data: bytes) -> None:
    """Raise StorageError unless `data` is a complete snapshot with a matching checksum."""
    if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
        raise StorageError("snapshot is truncated or not a kvstore snapshot")
    (crc,) = _U32.unpack_from(data, len(data) - 4)
    if zlib.crc32(memoryview(data)[:-4]) != crc:
        raise StorageError("snapshot checksum mismatch")


def read(data: bytes) -> tuple[SnapshotHeader, Iterator[tuple[str, bytes, bytes]]]:
    """Parse a verified snapshot: its header and an iterator over (db, key, value)."""
    verify(data)
    off = len(MAGIC)
    index, term, shards, vnodes = _HEADER.unpack_from(data, off)
    off += _HEADER.size
    (n,) = _U16.unpack_from(data, off)
    off += _U16.size
    names = []
    for _ in range(n):
        (length,) = _U16.unpack_from(data, off)
        off += _U16.size
        names.append(bytes(data[off : off + length]).decode())
        off += length
    header = SnapshotHeader(index, term, shards, vnodes, tuple(names))
    end = len(data) - 4

    def records(off: int = off) -> Iterator[tuple[str, bytes, bytes]]:
        while True:
            if off >= end:
                raise StorageError("snapshot ends without its end marker")
            if data[off] == _END:
                return
            db, klen, vlen = _RECORD.unpack_from(data, off)
            off += _RECORD.size
            key = bytes(data[off : off + klen])
            off += klen
            value = bytes(data[off : off + vlen])
            off += vlen
            yield names[db], key, value

    return header, records()
