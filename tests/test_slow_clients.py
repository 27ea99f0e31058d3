"""Slow and hostile HTTP clients against the master and a replica, each a real gunicorn server
started as deployed (gunicorn.conf.py, runtime/serving.py), on loopback:

- 500 connections that send nothing, 500 that send half a request and 500 that send a byte a
  second do not stop either server from answering (the master's PUT /create, admin login page
  and /readyz; a replica's redirect and /readyz);
- the idle and the half-sent connections are closed after the stated timeouts (the keep-alive
  time, and the request time from a request's first byte), waited for with an upper bound;
- a head over the limit gets 431 and a body over the limit 413, announced (Content-Length of
  300 MB) or chunked, on every path, including a replica's /healthz and redirect path, and the
  server answers before the body has been sent: it never reads one whole.
The timeouts are set short here (environment below) to keep each test to a few seconds; their
defaults are checked in test_limits_defaults.
"""

from __future__ import annotations

import resource
import select
import socket
import threading
import time

import pytest
import requests
from django.conf import settings

from runtime.serving import Limits
from testkit import MasterWeb, wait_until

KEEPALIVE = 3          # seconds: GUNICORN_KEEPALIVE of the servers below
REQUEST_TIMEOUT = 4    # seconds: SHORTENER_REQUEST_TIMEOUT of the servers below
SLACK = 6              # seconds beyond a timeout allowed to a loaded machine
ANSWER_WITHIN = 5.0    # seconds: a probe not answered by then fails (the issue: none in 5 s)
EACH = 500             # connections of each kind
LIMITS_ENV = {"GUNICORN_KEEPALIVE": str(KEEPALIVE),
              "SHORTENER_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT)}
HEAD_LIMIT = 16384     # SHORTENER_MAX_HEADER_BYTES' default
BODY_LIMIT = 131072    # SHORTENER_MAX_BODY_BYTES' default
BULK_BODY_LIMIT = 4 << 20  # SHORTENER_BULK_MAX_BODY_BYTES' default (the master's PUT /create/bulk)
TINYURL = "Slow001"


def fd_limit_raise(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


class Hostile:
    """EACH connections of each kind to 127.0.0.1:`port`: `idle` send nothing, `half` send half
    of `request` (every other one half its head, the rest its head and half its body), `trickle`
    send `request` a byte a second (one thread for all of them)."""

    KINDS = ("idle", "half", "trickle")

    def __init__(self, port: int, request: bytes) -> None:
        fd_limit_raise(3 * EACH + 512)
        head, _, body = request.partition(b"\r\n\r\n")
        self.request = request
        self.socks: dict[str, list[socket.socket]] = {kind: [] for kind in self.KINDS}
        self.closed: set[socket.socket] = set()
        for kind in self.KINDS:
            for i in range(EACH):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                if kind == "half":
                    sock.sendall(head[:len(head) // 2] if i % 2 == 0 or not body
                                 else head + b"\r\n\r\n" + body[:len(body) // 2])
                sock.setblocking(False)
                self.socks[kind].append(sock)
        self.opened_at = time.monotonic()
        self._stop = threading.Event()
        self._trickler = threading.Thread(target=self._trickle, daemon=True)
        self._trickler.start()

    def _trickle(self) -> None:
        position = 0
        while not self._stop.wait(1.0):
            byte = self.request[position:position + 1]
            position = (position + 1) % len(self.request)
            for sock in self.socks["trickle"]:
                if sock not in self.closed:
                    try:
                        sock.send(byte)
                    except OSError:
                        pass

    def open_count(self, kind: str) -> int:
        """Connections of `kind` the server has not closed (an answer, then end of stream or a
        reset, counts as closed)."""
        for sock in self.socks[kind]:
            if sock in self.closed:
                continue
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        self.closed.add(sock)
                        break
            except BlockingIOError:
                pass
            except OSError:  # reset
                self.closed.add(sock)
        return sum(sock not in self.closed for sock in self.socks[kind])

    def close(self) -> None:
        self._stop.set()
        self._trickler.join(5)
        for socks in self.socks.values():
            for sock in socks:
                sock.close()


def held_while_probed(port: int, request: bytes, probes) -> None:
    """Open the hostile connections, run every probe three times (each must answer within
    ANSWER_WITHIN), then wait for the idle and half-sent connections to be closed."""
    hostile = Hostile(port, request)
    try:
        for _ in range(3):
            for name, probe in probes.items():
                started = time.monotonic()
                try:
                    status = probe()
                except requests.RequestException as exc:
                    pytest.fail(f"{name}: no answer within {ANSWER_WITHIN} s with "
                                f"{3 * EACH} slow connections open ({exc!r})")
                assert status < 500 or name.endswith("/readyz"), (name, status)
                assert time.monotonic() - started < ANSWER_WITHIN
        if time.monotonic() - hostile.opened_at < KEEPALIVE - 0.5:
            # The probes ran while every hostile connection was still held.
            assert all(hostile.open_count(kind) == EACH for kind in Hostile.KINDS)
        for kind, timeout in (("idle", KEEPALIVE), ("half", REQUEST_TIMEOUT),
                              ("trickle", REQUEST_TIMEOUT)):
            left = hostile.opened_at + timeout + SLACK - time.monotonic()
            wait_until(lambda: hostile.open_count(kind) == 0, timeout=max(left, 0.1),
                       interval=0.2, what=f"the {kind} connections to be closed within "
                                          f"{timeout} s (+{SLACK} s)")
    finally:
        hostile.close()


def exchange(port: int, head: bytes, body_pieces=(), limit_sent: int = 4 << 20) -> tuple[int, int]:
    """Send `head`, then the pieces of `body_pieces` while the server has not answered; returns
    (the answer's status, bytes sent in all). Stops sending at `limit_sent` bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN)
    try:
        sock.sendall(head)
        sent = len(head)
        pieces = iter(body_pieces)
        while True:
            readable, _, _ = select.select([sock], [], [], 0 if sent < limit_sent else ANSWER_WITHIN)
            if readable:
                break
            piece = next(pieces, None)
            if piece is None:
                readable, _, _ = select.select([sock], [], [], ANSWER_WITHIN)
                assert readable, "no answer"
                break
            try:
                sock.sendall(piece)
            except OSError:
                break
            sent += len(piece)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 "), answer[:200]
        return int(answer.split(b" ", 2)[1]), sent
    finally:
        sock.close()


def endless(piece: bytes):
    while True:
        yield piece


def limits_checked(port: int, paths: list[tuple[str, str]]) -> None:
    """431 and 413 on each (method, path), before the body is sent or once past the limit."""
    for method, path in paths:
        line = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        # A head over the limit: one header of 20,000 bytes at once, or of 10 MB sent in
        # pieces (answered once the limit is passed, before the client is done: loopback's
        # socket buffers take a few MB before the answer is seen).
        status, _ = exchange(port, line + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert status == 431, (method, path, status)
        status, sent = exchange(port, line + b"X-Big: ",
                                (b"a" * 65536 for _ in range(160)))
        assert status == 431 and sent < 10 << 20, (method, path, status, sent)
        # A body over the limit, announced: answered from the head alone.
        head = line + b"Content-Length: 314572800\r\n\r\n"
        status, sent = exchange(port, head)
        assert status == 413 and sent == len(head), (method, path, status)
        # Chunked: answered once past the limit, long before 300 MB.
        chunk = b"%x\r\n" % 65536 + b"b" * 65536 + b"\r\n"
        status, sent = exchange(port, line + b"Transfer-Encoding: chunked\r\n\r\n",
                                endless(chunk), limit_sent=300 << 20)
        assert status == 413 and sent < 32 << 20, (method, path, status, sent)


# --- the master ------------------------------------------------------------------------------

@pytest.fixture
def master_web(transactional_db, test_data_dir):
    web = MasterWeb(test_data_dir, workers=2, **LIMITS_ENV)
    yield web
    web.close()


def test_master_answers_while_slow_clients_hold_1500_connections(master_web):
    session = requests.Session()
    n = iter(range(10**6))
    probes = {
        "PUT /create": lambda: session.put(f"{master_web.url}/create", timeout=ANSWER_WITHIN,
                                           json={"longurl": f"https://slow.example/{next(n)}"}
                                           ).status_code,
        "GET /admin/login/": lambda: session.get(f"{master_web.url}/admin/login/",
                                                 timeout=ANSWER_WITHIN).status_code,
        "GET /readyz": lambda: session.get(f"{master_web.url}/readyz",
                                           timeout=ANSWER_WITHIN).status_code,
    }
    body = b'{"longurl": "https://slow.example/held"}'
    request = (b"PUT /create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    held_while_probed(master_web.port, request, probes)
    # Still answering after they are gone, and /create did its work.
    assert probes["PUT /create"]() == 200


def test_master_bounds_heads_and_bodies_on_every_path(master_web):
    limits_checked(master_web.port, [("PUT", "/create"), ("POST", "/admin/login/"),
                                     ("GET", "/readyz"), ("POST", "/metrics")])
    # Below the limits, the same paths answer as before: a body near the limit reaches the
    # view (which refuses the longurl as too long: 400, not 413).
    url = f"{master_web.url}/create"
    long = requests.put(url, json={"longurl": "https://a.example/" + "x" * (BODY_LIMIT - 100)},
                        timeout=ANSWER_WITHIN)
    assert long.status_code == 400, long.status_code
    assert requests.get(f"{master_web.url}/readyz", headers={"X-Big": "a" * (HEAD_LIMIT - 1000)},
                        timeout=ANSWER_WITHIN).status_code == 200


def test_master_gives_put_create_bulk_alone_its_larger_body_bound(master_web):
    """PUT /create/bulk reads up to SHORTENER_BULK_MAX_BODY_BYTES (4 MiB): a 1 MB call reaches
    the view; past the bound, 413 before the body is sent (announced) or once past it
    (chunked). Every other request, on that path too, keeps the 128 KiB bound."""
    items = [{"longurl": f"https://bulk.example/{i}/" + "p" * 80} for i in range(10000)]
    call = requests.put(f"{master_web.url}/create/bulk", json=items, timeout=60)
    assert len(call.request.body) > 1_000_000
    assert call.status_code == 200 and len(call.json()["results"]) == 10000
    for method, path in (("PUT", "/create/bulk"), ("PUT", "/create"), ("POST", "/create/bulk"),
                         ("PUT", "/create/bulk/")):
        line = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        limit = BULK_BODY_LIMIT if (method, path) == ("PUT", "/create/bulk") else BODY_LIMIT
        head = line + b"Content-Length: %d\r\n\r\n" % (limit + 1)
        status, sent = exchange(master_web.port, head)
        assert status == 413 and sent == len(head), (method, path, status)
        if limit == BODY_LIMIT:  # 1 MB is refused everywhere but on PUT /create/bulk
            head = line + b"Content-Length: 1000000\r\n\r\n"
            assert exchange(master_web.port, head)[0] == 413, (method, path)
    chunk = b"%x\r\n" % 65536 + b"b" * 65536 + b"\r\n"
    status, sent = exchange(master_web.port, b"PUT /create/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n", endless(chunk),
                            limit_sent=300 << 20)
    assert status == 413 and sent < BULK_BODY_LIMIT + (32 << 20), (status, sent)


def test_master_sends_100_continue_before_the_body(master_web):
    """A client that asks to (Expect: 100-continue, as curl does for large bodies) gets 100 before
    it sends the body, though the application starts only with the whole body."""
    body = b'{"longurl": "https://slow.example/expect"}'
    sock = socket.create_connection(("127.0.0.1", master_web.port), timeout=ANSWER_WITHIN)
    try:
        sock.sendall(b"PUT /create HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.close()


def test_master_access_line_carries_the_time(master_web, test_data_dir):
    requests.get(f"{master_web.url}/readyz?probe=1", timeout=ANSWER_WITHIN)
    log = test_data_dir / f"master-web-{master_web.port}.log"
    wait_until(lambda: '"GET /readyz?probe=1 HTTP/1.1" 200 ' in log.read_text(), timeout=10,
               what="the access line")
    line = next(x for x in log.read_text().splitlines() if "/readyz?probe=1" in x)
    assert line.startswith("127.0.0.1 ") and line.endswith("us"), line


# --- a replica -------------------------------------------------------------------------------

@pytest.fixture
def replica(replica_factory):
    replica = replica_factory(start=False)
    replica.env.update(LIMITS_ENV)
    # The link as consume_links writes it (version 1, no expiry, active): no Kafka needed here.
    replica.redis.set(f"{settings.SHORTENER_USER}:link:{TINYURL}", "1||https://example.com/slow")
    replica.links_ready()  # and the marks it leaves once caught up
    replica.start_web(workers=1)
    return replica


def test_replica_answers_while_slow_clients_hold_1500_connections(replica):
    probes = {
        "GET /<tinyurl>": lambda: replica.http.get(f"{replica.url}/{TINYURL}", timeout=ANSWER_WITHIN,
                                                   allow_redirects=False).status_code,
        "GET /readyz": lambda: replica.http.get(f"{replica.url}/readyz",
                                                timeout=ANSWER_WITHIN).status_code,
    }
    request = f"GET /{TINYURL} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n".encode()
    held_while_probed(replica.http_port, request, probes)
    assert probes["GET /<tinyurl>"]() == 302


def test_replica_bounds_heads_and_bodies_on_every_path(replica):
    limits_checked(replica.http_port, [("POST", "/healthz"), ("GET", f"/{TINYURL}"),
                                       ("POST", f"/{TINYURL}"), ("GET", "/readyz"),
                                       ("PUT", "/create/bulk")])
    # A replica has no bulk path: no larger bound either.
    head = b"PUT /create/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"
    assert exchange(replica.http_port, head)[0] == 413
    assert replica.get(TINYURL).status_code == 302


def test_limits_defaults(monkeypatch):
    """The defaults gunicorn.conf.py's comments and the README state; a value that is not a
    positive number stops the worker with a clear error."""
    for name in ("SHORTENER_MAX_HEADER_BYTES", "SHORTENER_MAX_BODY_BYTES",
                 "SHORTENER_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SHORTENER_BULK_MAX_BODY_BYTES", raising=False)
    monkeypatch.setenv("SHORTENER_ROLE", "master")
    limits = Limits.from_environ(max_connections=2048)
    assert (limits.head_bytes, limits.body_bytes, limits.request_seconds) == (
        HEAD_LIMIT, BODY_LIMIT, 10)
    assert limits.bulk_body_bytes == BULK_BODY_LIMIT == settings.SHORTENER_BULK_MAX_BODY_BYTES
    monkeypatch.setenv("SHORTENER_ROLE", "replica")
    assert Limits.from_environ(max_connections=1).bulk_body_bytes == 0
    monkeypatch.setenv("SHORTENER_MAX_BODY_BYTES", "0")
    with pytest.raises(ValueError, match="SHORTENER_MAX_BODY_BYTES must be positive"):
        Limits.from_environ(max_connections=1)



def test_replica_past_its_connection_limit_closes_the_longest_waiting(replica_factory):
    """Past GUNICORN_WORKER_CONNECTIONS (50 here) a new connection makes room by closing the
    connection that has waited longest without a request: silent connections cannot lock out
    the next client."""
    replica = replica_factory(start=False)
    replica.env.update({"GUNICORN_WORKER_CONNECTIONS": "50", "GUNICORN_KEEPALIVE": "60"})
    replica.redis.set(f"{settings.SHORTENER_USER}:link:{TINYURL}", "1||https://example.com/slow")
    replica.links_ready()  # as consume_links leaves it once caught up
    replica.start_web(workers=1)
    silent = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", replica.http_port), timeout=10)
            silent.append(sock)
        for _ in range(3):
            with requests.Session() as fresh:  # a new connection each time
                assert fresh.get(f"{replica.url}/{TINYURL}", allow_redirects=False,
                                 timeout=ANSWER_WITHIN).status_code == 302

        def closed(sock: socket.socket) -> bool:
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        wait_until(lambda: closed(silent[0]), timeout=ANSWER_WITHIN, what="the oldest closed")
        assert not closed(silent[-1])
    finally:
        for sock in silent:
            sock.close()


UPGRADE = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_protocol_upgrades_are_refused_not_held(master_web, replica):
    """A request asking to upgrade the connection (WebSocket) got no answer and held its
    connection for ever, outside every timer and the connection limit: refused with 400."""
    for port, path in ((master_web.port, b"/readyz"), (replica.http_port, b"/readyz"),
                       (replica.http_port, f"/{TINYURL}".encode())):
        status, _ = exchange(port, UPGRADE % path)
        assert status == 400
