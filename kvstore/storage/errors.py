"""Errors raised by the node's durable storage.

Every storage failure is fatal to the node (fail-stop, like etcd's `lg.Fatal`): the runtime
must stop rather than keep serving from a store it can no longer trust. The subclasses exist
so the CLI can print one clear line saying what is wrong and what to do.
"""

from __future__ import annotations


class StorageError(Exception):
    """The store cannot be opened, read or written safely."""


class OutOfSpaceError(StorageError):
    """A write failed for lack of space (disk full, or the LMDB map full) and changed
    nothing. Not a reason to stop: the node keeps serving reads and retries the write until
    space is freed (or, for a full map, until a restart sizes the map above the data)."""


def is_out_of_space(exc: BaseException) -> bool:
    """Whether an LMDB/OS error means "no space" (ENOSPC, EDQUOT, or MDB_MAP_FULL)."""
    import errno

    text = str(exc)
    return (getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or "MDB_MAP_FULL" in text or "No space left" in text or "Disk quota" in text
            or type(exc).__name__ == "MapFullError")


class CorruptLogError(StorageError):
    """A log record failed its checksum or the log has a hole.

    The message names the index so an operator can tell which record is damaged; the node
    refuses to start (or to serve the record) rather than risk serving wrong data.
    """

    def __init__(
        self,
        index: int,
        path: str,
        reason: str = "checksum mismatch",
        action: str = "refusing to start",
    ) -> None:
        self.index = index
        self.path = path
        self.reason = reason
        super().__init__(f"log entry {index} is corrupt ({reason}) in {path}: {action}")


class ConfigMismatchError(StorageError):
    """The data directory was created with a different shard layout than requested.

    Shard count and virtual nodes per shard decide where every key lives; changing them on an
    existing data directory would make existing keys unreachable, so it is refused.
    """
