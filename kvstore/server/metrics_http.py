"""The metrics port (`kvstore serve --listen-metrics http://HOST:PORT`): /metrics and /health.

A small HTTP/1.1 server on the node's own event loop (asyncio streams), not
prometheus_client's start_http_server, which runs a thread per request against the
global registry: here a scrape reads the driver's state on the thread that owns it, with
no locking, and serves the node's own registry. Every request is answered and the
connection closed (scrapers reconnect; one request per connection keeps this tiny).

  GET /metrics   the Prometheus text format (prometheus_client.generate_latest)
  GET /health    {"health": "true"|"false", "reason": "..."}: 200 healthy, 503 not
                 (etcd's endpoint and body; the rule is kvstore/server/health.py)

HEAD is answered like GET without a body; other methods get 405, other paths 404. A
request must arrive within REQUEST_TIMEOUT seconds and fit in MAX_REQUEST_BYTES.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("kvstore.server.metrics")

REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 16 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


class MetricsURLError(ValueError):
    """A --listen-metrics value that is not http://HOST:PORT; the message says why."""


def parse_metrics_url(url: str) -> tuple[str, int]:
    """(host, port) of ``http://HOST:PORT`` (an optional trailing "/"; IPv6 in brackets).
    Only plain http: the metrics carry no secrets and Prometheus scrapes it as etcd's."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MetricsURLError(f"{url!r} is not http://HOST:PORT ({exc})") from None
    if parts.scheme != "http":
        raise MetricsURLError(f"{url!r} is not http://HOST:PORT (only http is served)")
    if not parts.hostname or port is None or not 0 < port < 65536:
        raise MetricsURLError(f"{url!r} is not http://HOST:PORT (a host and a port 1-65535)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise MetricsURLError(f"{url!r} is not http://HOST:PORT (nothing after the port)")
    return parts.hostname, port


class MetricsServer:
    """Serves a registry and a health check on one address, on the running event loop."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], tuple[bool, str]]) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._health = health
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the port (useful with port 0). Raises OSError."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=MAX_REQUEST_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                    ConnectionError):
                return
            status, content_type, body, method = self._answer(head)
            await self._respond(writer, status, content_type, body, head_only=method == "HEAD")
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[int, str, bytes, str]:
        """(status, content type, body, method) for one request head."""
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain; charset=utf-8", b"bad request\n", ""
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/health"):
            return 404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n", method
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n", method
        if path == "/metrics":
            try:
                return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry), method
            except Exception:  # a collector's failure must not end the node
                log.exception("collecting metrics failed")
                return 500, "text/plain; charset=utf-8", b"collecting metrics failed\n", method
        healthy, reason = self._health()
        body = json.dumps({"health": "true" if healthy else "false", "reason": reason})
        return (200 if healthy else 503), "application/json", body.encode() + b"\n", method

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, content_type: str,
                       body: bytes, *, head_only: bool) -> None:
        header = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                  f"Content-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\n"
                  "Connection: close\r\n\r\n").encode("latin-1")
        writer.write(header if head_only else header + body)
        await writer.drain()
