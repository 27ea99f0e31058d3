"""Benchmark: the CPU cost per request of the web servers' HTTP protocol, uvicorn's own
(httptools) against the bounded one both roles run (runtime/serving.py).

Usage: .local/venv/bin/python bench/protocol.py [--requests 200000] [--rounds 5]

In one process, no network: each protocol gets a fake transport and a keep-alive connection's
requests one read at a time (a redirect's GET, as wrk sends it), and a trivial ASGI application
answers each with a 302; the figure is the time per request of the protocol and the event loop
(uvloop), what the redirect path pays before and after redirects/asgi.py. The rounds alternate
the two protocols, so that a machine shared with other work slows both alike, and the time is
the process's CPU time; the summary gives each one's best round and the spread, and the median
of the differences within a round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop  # noqa: E402
from uvicorn.config import Config  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from runtime.serving import BoundedHttpToolsProtocol, Limits  # noqa: E402

REQUEST = b"GET /Bench01 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
HEADERS = [(b"location", b"https://example.com/benchmark"), (b"cache-control", b"no-store"),
           (b"content-length", b"0")]


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 302, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b""})


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def run(protocol_class: type, n: int) -> float:
    config = Config(app=app, http=protocol_class, log_config=None, access_log=False,
                    proxy_headers=False)
    config.load()
    config.shortener_limits = Limits.from_environ(max_connections=2048)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    tasks = protocol.tasks
    started = time.process_time()
    for _ in range(n):
        protocol.data_received(REQUEST)
        while tasks:  # the answer, as the loop runs it before the next read
            await asyncio.sleep(0)
    elapsed = time.process_time() - started
    assert transport.written >= n, transport.written
    protocol.connection_lost(None)
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"uvicorn": [], "bounded": []}
    for round_ in range(args.rounds):
        for name, cls in (("uvicorn", HttpToolsProtocol), ("bounded", BoundedHttpToolsProtocol)):
            us = uvloop.run(run(cls, args.requests))
            results[name].append(us)
            print(f"round {round_ + 1} {name:8} {us:6.2f} us/request", flush=True)
    for name, values in results.items():
        print(f"{name:8} best {min(values):.2f} us/request, median {statistics.median(values):.2f}"
              f" ({min(values):.2f}-{max(values):.2f})")
    differences = [b - u for b, u in zip(results["bounded"], results["uvicorn"])]
    print(f"added per request: {min(results['bounded']) - min(results['uvicorn']):+.2f} us "
          f"best against best, {statistics.median(differences):+.2f} us median within a round")


if __name__ == "__main__":
    main()
