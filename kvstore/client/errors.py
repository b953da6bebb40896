"""Exceptions raised by the kvstore clients.

Every exception derives from :class:`KVError`. What matters most to a caller that
wrote something is whether the write *may* have been applied, so each class says so
in its docstring, and every instance carries it as ``maybe_applied``:

- "definitely not applied": :class:`InvalidArgument`, and :class:`NotLeader` as
  raised by a server before it proposed anything; :class:`NoSpace` and
  :class:`CorruptCluster` unless an earlier attempt of the same call may have been.
- "outcome unknown": :class:`Unavailable` and :class:`Timeout` for a write. The
  write may have been committed (e.g. the leader crashed after appending it but
  before answering). Retrying the same logical operation with a *new* call is
  not idempotent; the client's own retries inside one call are, because they
  reuse the write id.
- "may have been applied, result lost": :class:`StaleWrite`, :class:`SessionExpired`.
- "refused by the data model": :class:`Compacted`, :class:`FutureRevision` (a revision
  the store cannot serve); definitely not applied.
- leases and the recipes built on them: :class:`LeaseNotFound` (not applied),
  :class:`LeaseExpired` (a lock or election lost its lease: the key is gone, so the lock or
  leadership is not held), :class:`NotElected` (a proclaim by a campaigner that is not
  the leader: not applied).

Reads never change state, so for them ``maybe_applied`` is always False.
"""

from __future__ import annotations


class KVError(Exception):
    """Base class of every kvstore client error.

    ``maybe_applied`` is True when the failed call was a write whose effect may
    already be (or later become) visible in the store; False when it certainly
    had no effect. It is also raised as-is for unexpected server status codes
    (e.g. INTERNAL), which the client does not retry.
    """

    def __init__(self, message: str, *, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.maybe_applied = maybe_applied

    def __str__(self) -> str:
        return self.message


class NotLeader(KVError):
    """The contacted node is not the leader; the request was NOT applied.

    The server answers this before proposing anything, so the request had no
    effect. ``leader_id`` / ``leader_address`` name the leader when the node knows
    it ("" otherwise). The clients follow this hint themselves; callers normally
    only see it from low-level helpers.
    """

    def __init__(
        self,
        message: str,
        *,
        leader_id: str = "",
        leader_address: str = "",
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message, maybe_applied=maybe_applied)
        self.leader_id = leader_id
        self.leader_address = leader_address


class Unavailable(KVError):
    """No node could serve the request before the deadline: outcome UNKNOWN for a write.

    Raised when the last failure was unavailability (no quorum, leadership lost
    mid-request, connection refused/reset). A write may have been applied; a read
    had no effect.
    """


class InvalidArgument(KVError):
    """The request was rejected as malformed (bad key or value): definitely NOT applied.

    Never retried: sending the same request again cannot succeed.
    """


class NoSpace(KVError):
    """A put or compare-and-swap was refused because the cluster's NOSPACE alarm is raised
    (a member's database passed ``--quota-backend-bytes``; etcd's "database space
    exceeded"). This attempt was NOT applied; ``maybe_applied`` is True only when an
    earlier attempt of the same call may have been.

    Never retried: writes stay refused until an operator frees space (deletes and reads
    keep working) and disarms the alarm (:meth:`KVClient.disarm`, ``kvstore alarm disarm``).
    """


class CorruptCluster(KVError):
    """A put or compare-and-swap was refused because the CORRUPT alarm is raised (members'
    state hashes differ). This attempt was NOT applied; ``maybe_applied`` is True only when
    an earlier attempt of the same call may have been.

    Never retried: writes stay refused until an operator rebuilds the named member
    (``kvstore cluster resync``) and disarms the alarm.
    """


class StaleWrite(KVError):
    """The server no longer remembers this write id's outcome: it may have been applied.

    The cluster's session for this client has moved past the write id (its recorded
    result was already forgotten), so the server refuses to apply it again rather than
    risk applying it twice. An earlier attempt may have taken effect, hence
    ``maybe_applied`` is True. Never retried: the same write id gets the same answer.
    """

    def __init__(self, message: str, *, maybe_applied: bool = True) -> None:
        super().__init__(message, maybe_applied=maybe_applied)


class SessionExpired(KVError):
    """The cluster evicted this client's session while a write was in flight, and an
    earlier attempt of that write may have been applied.

    Without the session the cluster cannot tell a retry from a first attempt, so it
    refuses the write id rather than risk applying it twice; ``maybe_applied`` is True.
    (When no attempt can have been applied, the client opens a new session and sends the
    write again by itself: callers never see this error for it.) The client's next writes
    run in a new session.
    """

    def __init__(self, message: str, *, maybe_applied: bool = True) -> None:
        super().__init__(message, maybe_applied=maybe_applied)


class Timeout(KVError):
    """The call's overall deadline passed: outcome UNKNOWN for a write.

    A write that timed out may have been applied (``maybe_applied`` tells whether
    any attempt got far enough for that to be possible).
    """


class Compacted(KVError):
    """A read at, or a compaction to, a revision whose history a compaction has already
    removed ("etcdserver: mvcc: required revision has been compacted"): definitely NOT
    applied. Never retried: read at a later revision (or the latest, revision 0).

    A compaction that the client retried after an attempt the cluster had applied also ends
    here (the second attempt finds the history gone); ``maybe_applied`` then says so.

    A watch whose start (or resume) revision was compacted raises it too, with
    ``compact_revision`` set: events between the watch's revision and that one are gone, so
    a watcher must read the current state again rather than trust its view.
    """

    compact_revision: int = 0


class FutureRevision(KVError):
    """A read at, or a compaction to, a revision the store has not reached yet ("mvcc:
    required revision is a future revision"): definitely NOT applied; never retried."""


class LeaseNotFound(InvalidArgument):
    """The lease named does not exist (never granted, expired or revoked; etcd's
    "requested lease not found"): definitely NOT applied; never retried."""


class LeaseExpired(KVError):
    """The lease under a lock or election key expired or was revoked, so the cluster has
    deleted (or will delete) the key: the lock or leadership is NOT held. Raised by an
    acquire or campaign that finds its own key gone, and reported (not raised) by a holder's
    keep-alive through ``Lease.lost`` and its ``on_lost`` callback."""


class NotElected(KVError):
    """Proclaim (or resign) by a campaigner that is not the leader (never elected, resigned,
    or its key was deleted behind it; etcd's ErrElectionNotLeader): NOT applied."""
