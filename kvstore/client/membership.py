"""Cluster membership from a client: etcd's Cluster calls (MemberList, MemberAdd,
MemberRemove, MemberUpdate, MemberPromote) and Maintenance.MoveLeader, and the endpoint
refresh that lets a client follow membership changes.

Why etcd's API and not a native one: every node serves it on its client port (followers
forward changes to the leader), `etcdctl member ...` works on the same calls, and its
refusals already carry etcd's texts. The calls run through the client's etcd face (same
deadline, backoff and endpoint rotation as every other call). Two refusals are final
rather than retried: FAILED_PRECONDITION (e.g. "can only promote a learner member which is
in sync with leader": the caller decides whether to wait) and "etcdserver: unhealthy
cluster" (the change would cost the quorum; retrying would only delay the answer). A change
refused because another one is still being applied (UNAVAILABLE) is retried.

Members are named by etcd member ids (uint64); kvstore's node id is the member's name.

Following membership (``refresh_sync``/``refresh_async``): the shells ask for the member
list when the router says a refresh is due (after a failed attempt or a failover, or
every so often; see kvstore.client._core.Router) and replace the rotation with the
voters' client addresses. Best effort: a member list that cannot be had changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from kvstore.client._core import ClientCore, Operation
from kvstore.etcdpb import rpc_pb2 as pb

if TYPE_CHECKING:
    from kvstore.client.etcd_face import AsyncFace, SyncFace

CLUSTER, MAINTENANCE = "etcdserverpb.Cluster", "etcdserverpb.Maintenance"
MEMBER_LIST_PATH = f"/{CLUSTER}/MemberList"
# One member list refresh may take this long in all (it runs inside a caller's call).
REFRESH_SECONDS = 1.0
REFRESH_ATTEMPT_SECONDS = 0.5

# method name -> (wire path, request class, response class), for the etcd face.
METHODS: dict[str, tuple[str, type[Any], type[Any]]] = {
    "MemberList": (MEMBER_LIST_PATH, pb.MemberListRequest, pb.MemberListResponse),
    "MemberAdd": (f"/{CLUSTER}/MemberAdd", pb.MemberAddRequest, pb.MemberAddResponse),
    "MemberRemove": (f"/{CLUSTER}/MemberRemove", pb.MemberRemoveRequest,
                     pb.MemberRemoveResponse),
    "MemberUpdate": (f"/{CLUSTER}/MemberUpdate", pb.MemberUpdateRequest,
                     pb.MemberUpdateResponse),
    "MemberPromote": (f"/{CLUSTER}/MemberPromote", pb.MemberPromoteRequest,
                      pb.MemberPromoteResponse),
    "MoveLeader": (f"/{MAINTENANCE}/MoveLeader", pb.MoveLeaderRequest, pb.MoveLeaderResponse),
}


def url_address(url: str) -> str:
    """``HOST:PORT`` of ``http(s)://HOST:PORT[/]`` (a bare ``HOST:PORT`` stays as it is)."""
    scheme, sep, rest = url.partition("://")
    return (rest if sep else scheme).rstrip("/")


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member as etcd lists it: ``id`` is etcd's member id, ``name`` kvstore's node
    id; ``client_urls`` is empty for a member that has not started (or not been heard
    from yet)."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool

    @classmethod
    def from_proto(cls, m: pb.Member) -> MemberInfo:
        return cls(int(m.ID), m.name, tuple(m.peerURLs), tuple(m.clientURLs),
                   bool(m.isLearner))

    @property
    def hex_id(self) -> str:
        """The id as etcdctl prints it."""
        return f"{self.id:x}"

    @property
    def peer_address(self) -> str:
        return url_address(self.peer_urls[0]) if self.peer_urls else ""

    @property
    def client_address(self) -> str:
        return url_address(self.client_urls[0]) if self.client_urls else ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.hex_id, "name": self.name, "peer_urls": list(self.peer_urls),
                "client_urls": list(self.client_urls), "learner": self.learner}


def members_of(response: Any) -> list[MemberInfo]:
    return [MemberInfo.from_proto(m) for m in response.members]


def _op(name: str, method: str, request: Any, parse: Callable[[Any], Any],
        timeout: float | None) -> Operation[Any]:
    return Operation(name=name, method=method, build=lambda _wid: request, parse=parse,
                     timeout=timeout)


def member_list_op(timeout: float | None = None) -> Operation[list[MemberInfo]]:
    return _op("member list", "MemberList", pb.MemberListRequest(), members_of, timeout)


def member_add_op(peer_urls: Sequence[str], *, learner: bool = False, name: str = "",
                  timeout: float | None = None) -> Operation[MemberInfo]:
    """``name``: the new node's id (kvstore's extension field; without it the cluster
    makes one up, as for etcdctl)."""
    request = pb.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner, name=name)
    return _op("member add", "MemberAdd", request,
               lambda r: MemberInfo.from_proto(r.member), timeout)


def member_remove_op(member_id: int, timeout: float | None = None
                     ) -> Operation[list[MemberInfo]]:
    return _op("member remove", "MemberRemove", pb.MemberRemoveRequest(ID=member_id),
               members_of, timeout)


def member_promote_op(member_id: int, timeout: float | None = None
                      ) -> Operation[list[MemberInfo]]:
    return _op("member promote", "MemberPromote", pb.MemberPromoteRequest(ID=member_id),
               members_of, timeout)


def member_update_op(member_id: int, peer_urls: Sequence[str],
                     timeout: float | None = None) -> Operation[list[MemberInfo]]:
    request = pb.MemberUpdateRequest(ID=member_id, peerURLs=list(peer_urls))
    return _op("member update", "MemberUpdate", request, members_of, timeout)


def move_leader_op(member_id: int, timeout: float | None = None) -> Operation[None]:
    return _op("move-leader", "MoveLeader", pb.MoveLeaderRequest(targetID=member_id),
               lambda _r: None, timeout)


class SyncMembership:
    """KVClient's membership methods (mixin over the client's etcd face)."""

    _face: SyncFace

    def member_list(self, *, timeout: float | None = None) -> list[MemberInfo]:
        """The members, sorted by member id (etcd's order)."""
        return self._face.run(member_list_op(timeout))

    def member_add(self, peer_urls: Sequence[str], *, learner: bool = False, name: str = "",
                   timeout: float | None = None) -> MemberInfo:
        """Add a member (a learner with ``learner``) at ``peer_urls``; start it afterwards
        with `kvstore serve --join`. Returns the new member."""
        return self._face.run(member_add_op(peer_urls, learner=learner, name=name,
                                            timeout=timeout))

    def member_remove(self, member_id: int, *, timeout: float | None = None
                      ) -> list[MemberInfo]:
        """Remove a member; returns the members left. Its id is never admitted again."""
        return self._face.run(member_remove_op(member_id, timeout))

    def member_promote(self, member_id: int, *, timeout: float | None = None
                       ) -> list[MemberInfo]:
        """Make a learner a voter (refused until it holds 90% of the leader's log)."""
        return self._face.run(member_promote_op(member_id, timeout))

    def member_update(self, member_id: int, peer_urls: Sequence[str], *,
                      timeout: float | None = None) -> list[MemberInfo]:
        """Change where the other members reach a member's peer port."""
        return self._face.run(member_update_op(member_id, peer_urls, timeout))

    def move_leader(self, member_id: int, *, timeout: float | None = None) -> None:
        """Hand leadership to the voter ``member_id``."""
        self._face.run(move_leader_op(member_id, timeout))


class AsyncMembership:
    """AsyncKVClient's membership methods (the same, awaited)."""

    _face: AsyncFace

    async def member_list(self, *, timeout: float | None = None) -> list[MemberInfo]:
        return await self._face.run(member_list_op(timeout))

    async def member_add(self, peer_urls: Sequence[str], *, learner: bool = False,
                         name: str = "", timeout: float | None = None) -> MemberInfo:
        return await self._face.run(member_add_op(peer_urls, learner=learner, name=name,
                                                  timeout=timeout))

    async def member_remove(self, member_id: int, *, timeout: float | None = None
                            ) -> list[MemberInfo]:
        return await self._face.run(member_remove_op(member_id, timeout))

    async def member_promote(self, member_id: int, *, timeout: float | None = None
                             ) -> list[MemberInfo]:
        return await self._face.run(member_promote_op(member_id, timeout))

    async def member_update(self, member_id: int, peer_urls: Sequence[str], *,
                            timeout: float | None = None) -> list[MemberInfo]:
        return await self._face.run(member_update_op(member_id, peer_urls, timeout))

    async def move_leader(self, member_id: int, *, timeout: float | None = None) -> None:
        await self._face.run(move_leader_op(member_id, timeout))


# --------------------------------------------------------------------------- following


def voter_addresses(members: Iterable[MemberInfo]) -> tuple[list[str], bool]:
    """The voters' client addresses, and whether every voter has one."""
    voters = [m for m in members if not m.learner]
    addresses = [m.client_address for m in voters if m.client_address]
    return addresses, bool(voters) and len(addresses) == len(voters)


def adopt(cores: Iterable[ClientCore], response: Any) -> None:
    addresses, complete = voter_addresses(members_of(response))
    for core in cores:
        core.router.adopt_members(addresses, complete)


def _member_list_rpc(channel: Any) -> Any:
    return channel.unary_unary(MEMBER_LIST_PATH,
                               request_serializer=pb.MemberListRequest.SerializeToString,
                               response_deserializer=pb.MemberListResponse.FromString)


def refresh_sync(core: ClientCore, face: SyncFace, channel: Callable[[str], Any]) -> None:
    """If a refresh is due, ask the members for the member list (leader first) and adopt
    the first answer into both routers (native calls and the etcd face)."""
    now = time.monotonic()
    if not core.router.refresh_due(now):
        return
    deadline = now + REFRESH_SECONDS
    for endpoint in core.router.refresh_targets():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            response = _member_list_rpc(channel(endpoint))(
                pb.MemberListRequest(), timeout=min(left, REFRESH_ATTEMPT_SECONDS))
        except grpc.RpcError:
            continue
        adopt((core, face.core), response)
        return


async def refresh_async(core: ClientCore, face: AsyncFace,
                        channel: Callable[[str], Any]) -> None:
    """refresh_sync for AsyncKVClient."""
    now = time.monotonic()
    if not core.router.refresh_due(now):
        return
    deadline = now + REFRESH_SECONDS
    for endpoint in core.router.refresh_targets():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            response = await _member_list_rpc(channel(endpoint))(
                pb.MemberListRequest(), timeout=min(left, REFRESH_ATTEMPT_SECONDS))
        except grpc.RpcError:
            continue
        adopt((core, face.core), response)
        return


__all__ = ["AsyncMembership", "MemberInfo", "SyncMembership", "refresh_async",
           "refresh_sync", "url_address", "voter_addresses"]
