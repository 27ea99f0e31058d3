"""The web server of both roles: gunicorn's arbiter, uvicorn's worker (uvloop's event loop,
httptools' parser), and a protocol that bounds what one client can hold.

Why not gunicorn's threaded worker (the master's before): it hands a connection to a thread as
soon as it is readable, and the thread then reads the rest of the request with no time limit,
so as many connections as threads, each sending half a request, hold every thread of the
master (2 x 16), and nothing else is answered (tests/test_slow_clients.py on the former
worker: PUT /create not answered within 5 s). Here every connection is a few objects on an event loop until its
request (head and body) has arrived whole; only then does the application run. The master's
Django (WSGI) runs on a2wsgi's thread pool (as many threads as gunicorn's `threads`), so a
thread is only ever given to a request that is complete.

What uvicorn 0.54 does not bound by itself, and this protocol does (each a subclass hook below):
- a connection that never sends a byte: uvicorn arms its keep-alive timer only after a
  response, so such a connection stayed open for ever; here the same timer (gunicorn's
  `keepalive`) runs from the accept;
- the time to receive a request: uvicorn has none (its keep-alive timer stops at the first
  byte); here a request's head and body must arrive within `request_seconds` of its first
  byte, else 408 and the connection is closed;
- the size of the head: httptools (llhttp) buffers a header of any size, and uvicorn's
  `h11_max_incomplete_event_size` applies to h11 only; here the request line and header fields
  are bounded, else 431 (RFC 6585 §5);
- the size of the body: uvicorn hands any body to the application, and Django's ASGI handler
  spools it all to a temporary file before a view runs; here a body over `body_bytes` is
  refused with 413 (RFC 9110 §15.5.14) as soon as its Content-Length announces it, or as soon
  as a chunked body passes the limit, and the application never starts. One request has a
  larger bound of its own: the master's PUT /create/bulk (`bulk_body_bytes`; every other
  request of the same connection keeps `body_bytes`), under the same time limit;
- the number of connections: uvicorn accepts until the process runs out of file descriptors;
  here, past `max_connections` in a worker, the connection that has waited longest without a
  request in progress is closed to make room (or the new one, if every connection is busy).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn_worker import UvicornWorker

logger = logging.getLogger(__name__)

# After a refusal (408, 413, 431) the connection is closed this long after the answer, reading
# and dropping what the client still sends meanwhile (at most LINGER_BYTES, then reading
# stops): closing a socket with unread data makes the kernel send a reset, which can destroy
# the answer before the client reads it (nginx's lingering_close exists for the same reason:
# https://nginx.org/en/docs/http/ngx_http_core_module.html#lingering_close).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20

# Descriptors a worker uses besides its client connections (listening socket, event loop,
# PostgreSQL connections, one a thread; Kafka and Redis connections, metrics files, logs): a
# generous allowance, so that LimitNOFILE = worker_connections + this never runs short.
DESCRIPTORS_BESIDES_CONNECTIONS = 1024

# The master's access line, as it was under gunicorn's threaded worker: client, request line,
# status, body bytes and the request's time in microseconds.
ACCESS_LINE = '%s "%s %s HTTP/%s" %d %d %dus'

# The paths with a larger body bound, and the method each is for (links/bulk.py; the JSON API's
# bulk create, links/api/views.py, reads its body with the same reader).
BULK_PATHS = {b"/create/bulk": b"PUT", b"/api/v1/links/bulk": b"POST"}


@dataclass(frozen=True)
class Limits:
    """What one client may hold. Sizes in bytes, times in seconds."""

    head_bytes: int        # request line + header fields, else 431
    body_bytes: int        # request body, else 413
    bulk_body_bytes: int   # the body of the master's PUT /create/bulk, else 413 (0: no such path)
    request_seconds: float  # first byte to complete request, else 408
    max_connections: int   # per worker process

    @classmethod
    def from_environ(cls, *, max_connections: int) -> Limits:
        """From SHORTENER_MAX_HEADER_BYTES (16,384), SHORTENER_MAX_BODY_BYTES (131,072),
        SHORTENER_BULK_MAX_BODY_BYTES (4 MiB, only with SHORTENER_ROLE=master: a replica has no
        such path) and SHORTENER_REQUEST_TIMEOUT (10 s); `max_connections` is gunicorn's
        worker_connections. Raises ValueError for a value that is not a positive number."""
        def positive(name: str, default: str, kind: type) -> Any:
            value = kind(os.environ.get(name) or default)
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            return value

        return cls(
            # Browsers send 1-2 KB of headers (the admin's cookies included); 16 KiB is twice
            # the largest single field gunicorn accepts by default (limit_request_field_size).
            head_bytes=positive("SHORTENER_MAX_HEADER_BYTES", "16384", int),
            # The largest body this service needs: /create's JSON or the admin's form with a
            # longurl at its longest (16,384 characters, longurls.SERVABLE_MAX_LENGTH), even if
            # every character were written as a 6-character JSON escape (98,304 bytes).
            body_bytes=positive("SHORTENER_MAX_BODY_BYTES", "131072", int),
            # PUT /create/bulk's 10,000 items (SHORTENER_BULK_MAX_ITEMS) of a typical URL (a few
            # hundred bytes with its JSON): 4 MiB is 419 bytes an item. It arrives within
            # request_seconds at 420 KB/s, any server's uplink. Read as shortener_project's
            # settings reads it, for the view's own check.
            bulk_body_bytes=(positive("SHORTENER_BULK_MAX_BODY_BYTES", str(4 << 20), int)
                             if os.environ.get("SHORTENER_ROLE", "").strip().lower() == "master"
                             else 0),
            # A request is one or two packets: milliseconds. 10 s leaves a slow mobile client
            # 13 KB/s for the largest body, and frees a slow client's slot within 10 s.
            request_seconds=positive("SHORTENER_REQUEST_TIMEOUT", "10", float),
            max_connections=max_connections,
        )


class _Refuse(Exception):
    """Raised inside a parser callback to stop parsing: httptools hands it back as the
    __context__ of its HttpParserCallbackError (httptools/parser/parser.pyx, feed_data)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of the module's docstring.

    A subclass, not a fork: uvicorn has no hooks for these bounds. The methods that replace
    uvicorn's (data_received, on_header, on_body) keep its behaviour (uvicorn 0.54.0,
    uvicorn/protocols/http/httptools_impl.py) and add the checks; uvicorn is pinned."""

    def __init__(self, config: Any, server_state: Any, app_state: dict, _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: Limits = config.shortener_limits
        # Read on every request: kept as attributes of their own (one lookup, not two).
        self.head_limit = self.limits.head_bytes
        self.body_limit = self.limits.body_bytes  # the current request's
        # Connections without a request in progress, oldest first: the ones closed to make
        # room past max_connections. One dict per worker, on the server's shared state.
        waiting = getattr(server_state, "shortener_waiting", None)
        if waiting is None:
            waiting = server_state.shortener_waiting = {}
        self.waiting: dict[BoundedHttpToolsProtocol, None] = waiting
        self.awaiting_head = True   # no head begun, or one begun and not complete
        self.head_received = 0      # bytes received while awaiting a head
        self.head_size = 0          # the current head's field bytes, from the callbacks
        self.content_length: bytes | None = None
        self.chunked = False        # the current head has a Transfer-Encoding
        self.body_expected = False  # the current request has a body (RFC 9112 §6.3)
        self.responding = False     # the application runs for a request of this connection
        self.held: tuple[Any, Any] | None = None  # (cycle, app) waiting for its body
        self.request_timer: asyncio.TimerHandle | None = None
        self.refused = False
        self.dropped = 0  # bytes dropped after a refusal

    # --- connections ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.waiting[self] = None
        if len(self.connections) > self.limits.max_connections:
            oldest = next(iter(self.waiting))
            logger.warning("%d connections, over the limit of %d: closing the one waiting "
                           "longest for a request", len(self.connections),
                           self.limits.max_connections)
            oldest.transport.abort()
            if oldest is self:
                return
        # uvicorn arms this timer only after a response: without it, a connection that never
        # sends a byte would stay open for ever.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None
        self.held = None
        super().connection_lost(exc)

    # --- reading -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.timeout_keep_alive_task is not None:  # uvicorn's _unset_keepalive_if_required
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        if self.refused:  # answered already: dropped until the connection closes
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self.transport.pause_reading()
            return
        if self.awaiting_head:
            self.head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Nothing here speaks another protocol (no WebSocket). uvicorn warns and ignores the
            # request: the connection then waited for ever with no request, no timer and no
            # place among those the connection limit evicts, so a few thousand of them locked
            # everyone else out. Refused like any request this server will not take.
            self.refuse(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refuse):
                self.refuse(exc.__context__.status, str(exc.__context__))
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        # A request begun and incomplete (a head in part, or a head whose body is still to
        # come) gets a timer; a request that arrives in one read (nearly all) never costs one.
        # (Bytes of a pipelined head that came in the read that completed the previous
        # request are not counted: its timer starts at its next read.)
        if self.awaiting_head:
            if self.head_received:
                if self.head_received > self.head_limit:
                    self.refuse(431, "request head too large")
                elif self.request_timer is None:
                    self.request_timer = self.loop.call_later(self.limits.request_seconds,
                                                              self.request_timeout)
        elif self.held is not None and self.request_timer is None:
            self.request_timer = self.loop.call_later(self.limits.request_seconds,
                                                      self.request_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        elif name == b"content-length":
            self.content_length = value
        elif name == b"transfer-encoding":
            self.chunked = True
        self.headers.append((name, value))
        self.head_size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        self.awaiting_head = False
        self.head_received = 0
        self.waiting.pop(self, None)
        head_size, content_length, chunked = self.head_size, self.content_length, self.chunked
        self.head_size, self.content_length, self.chunked = 0, None, False  # for the next one
        if head_size + len(self.url) > self.head_limit:
            raise _Refuse(431, "request head too large")
        self.body_limit = self.limits.body_bytes
        if (self.limits.bulk_body_bytes and self.parser.get_method()
                == BULK_PATHS.get(self.url.partition(b"?")[0])):
            self.body_limit = self.limits.bulk_body_bytes
        if content_length is not None:
            length = int(content_length)
            if length > self.body_limit:
                raise _Refuse(413, "request body too large")
            self.body_expected = length > 0 or chunked
        else:
            self.body_expected = chunked
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        # uvicorn pauses reading past 64 KiB until the application reads; here the
        # application starts only once the body is complete, and the limit bounds it.
        if self.cycle.response_complete:
            return
        self.cycle.body += body
        if len(self.cycle.body) > self.body_limit:
            raise _Refuse(413, "request body too large")

    def on_message_complete(self) -> None:
        self.awaiting_head = True
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None
        super().on_message_complete()
        held = self.held
        if held is not None and held[0] is self.cycle:
            self.held = None
            self.responding = True
            HttpToolsProtocol._start_asgi_task(self, *held)

    # --- the application -----------------------------------------------------------------

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # Called by uvicorn when a request's head is complete (or when a pipelined one comes
        # up): the application waits for the whole body, so that no thread or task is ever
        # held by a client that sends slowly. A request without a body (a redirect's GET)
        # starts at once, as in uvicorn. (A pipelined request that comes up later has its
        # more_body cleared already if it is complete: the parser reads in order.)
        if cycle.more_body and self.body_expected:
            self.held = (cycle, app)
            if cycle.waiting_for_100_continue and not self.transport.is_closing():
                # The client waits for this before it sends the body (RFC 9110 §10.1.1);
                # uvicorn would send it on the application's first read, which comes later.
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                cycle.waiting_for_100_continue = False
            return
        self.responding = True
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        self.responding = False
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle: no pipelined request follows
            self.waiting[self] = None

    # --- timeouts and refusals -----------------------------------------------------------

    def request_timeout(self) -> None:
        self.request_timer = None
        self.refuse(408, "request not received in time")

    def refuse(self, status: int, reason: str) -> None:
        """Answer `status` with Connection: close, then drop what the client still sends and
        close after LINGER_SECONDS. With a response in progress on this connection (an earlier
        pipelined request), the answer cannot be written: the connection is closed at once."""
        if self.refused or self.transport.is_closing():
            return
        self.refused = True
        self.held = None
        self.waiting.pop(self, None)
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None
        self.logger.info("%s from %s: %s", status, self.client and self.client[0], reason)
        if self.responding:
            self.transport.abort()
            return
        body = reason.encode()
        self.transport.write(b"".join([
            STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.abort)


def _is_asgi(app: Any) -> bool:
    """An ASGI 3 application is a coroutine function, or an object whose __call__ is one; this
    project has no ASGI 2 application, so anything else is WSGI."""
    call = app if inspect.isfunction(app) else getattr(type(app), "__call__", None)
    return inspect.iscoroutinefunction(call)


class AccessLog:
    """ASGI middleware: one access line per request (ACCESS_LINE) on gunicorn's access log,
    with the request's time; for the master, whose lines carried it under the threaded worker
    (uvicorn's own line has no time)."""

    def __init__(self, app: Any, log: logging.Logger) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0

        async def send_counted(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            path = scope["path"] + ("?" + scope["query_string"].decode("latin1")
                                    if scope["query_string"] else "")
            client = scope.get("client")
            self.log.info(ACCESS_LINE, client[0] if client else "-", scope["method"], path,
                          scope["http_version"], status, sent,
                          (time.perf_counter() - started) * 1e6)


class Worker(UvicornWorker):
    """gunicorn worker for both roles: uvicorn's, with BoundedHttpToolsProtocol. A WSGI
    application (the master's `shortener_project.wsgi`) runs on a2wsgi's thread pool with
    gunicorn's `threads` threads, so the master's command line stays
    `gunicorn shortener_project.wsgi`; if it names an `asgi_front` (a callable taking that
    ASGI application and returning the one to serve), the front is served, before it."""

    CONFIG_KWARGS = {"loop": "auto", "http": BoundedHttpToolsProtocol}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.shortener_limits = Limits.from_environ(
            max_connections=self.cfg.worker_connections)

    async def _serve(self) -> None:
        if not _is_asgi(self.wsgi):
            from a2wsgi import WSGIMiddleware

            # The pool's threads: gunicorn's `threads` (the master: 16, gunicorn.conf.py).
            app: Any = WSGIMiddleware(self.wsgi, workers=self.cfg.threads)
            front = getattr(self.wsgi, "asgi_front", None)
            if front is not None:
                # An ASGI application that answers some requests itself, on the event loop,
                # and hands the others to the WSGI application on the pool: the master's
                # PUT /create (links/asgi.py, named by shortener_project/wsgi.py).
                app = front(app)
            access = self.log.access_log
            if access.handlers:
                app = AccessLog(app, access)
                # One line per request, ours (with the time): not uvicorn's too.
                logging.getLogger("uvicorn.access").handlers = []
            self.wsgi = app
        await super()._serve()
