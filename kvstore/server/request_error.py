"""The one exception every request check raises: a gRPC status code, etcd's or kvstore's
message, and trailing metadata (leader hints). Its own module so that the KV rules and the
etcd request checks (mvcc_requests) can both raise it without importing each other."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request ends with this gRPC status (and trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata
