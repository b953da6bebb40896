"""The client-port multiplexer's cost on the gRPC path: `python -m bench.mux [--calls N]`.

A trivial unary gRPC method is called sequentially N times straight at a gRPC server's port
and N times through a PortMux in front of it (the splice threads), in one process, so the
difference is the multiplexer's hop alone.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from bench.stats import percentile
from kvstore.server.port_mux import PortMux


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _calls(port: int, n: int) -> list[float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/bench.Echo/Echo")
        for _ in range(200):
            call(b"x" * 16)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            call(b"x" * 16)
            out.append(time.perf_counter() - t)
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    loop = asyncio.new_event_loop()
    mux = PortMux("127.0.0.1:0", port, None, None)
    mux.bind()
    assert mux._sock is not None
    public = mux._sock.getsockname()[1]
    loop.call_soon_threadsafe(mux.start)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        for label, target in (("direct", port), ("via mux", public), ("direct", port),
                              ("via mux", public)):
            s = _calls(target, args.calls)
            print(f"{label:8} unary gRPC round trip: p50 {percentile(s, 50) * 1e3:.3f} ms, "
                  f"p99 {percentile(s, 99) * 1e3:.3f} ms")
    finally:
        server.stop(0)


if __name__ == "__main__":
    main()
