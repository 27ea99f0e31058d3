"""The master's web application: PUT /create answered here, on the event loop, before and outside
Django's request cycle, its link made in a batch with the creates that arrive with it
(links/batching.py); every other request (the admin, /healthz, /readyz, /metrics, /create/...)
handed to Django, on the thread pool (runtime/serving.py).

Why: under load a /create's CPU went to the request cycle (Django's middleware and request
objects, a2wsgi handing the request to a thread and its answer back to the event loop) as much as
to making the link (docs/performance.md, "/create"). Here a request is its headers read, its body
parsed and checked (links/create_checks.py, the view's own checks), an item handed to the
batcher, and an answer of known headers: what Django answers, header for header
(tests/links/test_create_paths.py sends the same requests to both and compares the bytes).

The checks that need the database before the body is read (an API key that is sent, the rate
limit) run on a small thread pool of their own, in the view's order. This path steps aside, and
Django answers /create as before, whenever it could not answer the same: a Host header that is
missing, repeated or not allowed (Django answers 400), and settings that change what Django's
middleware does (DEBUG, SSL redirects, HSTS, another MIDDLEWARE list): see _lean_blocker.

Built around Django's application by shortener_project/wsgi.py (`asgi_front`), which the
master's worker applies (runtime/serving.py).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connections
from django.http.request import split_domain_port, validate_host

from links import create_checks
from links.batching import BatcherClosed, CreateBatcher
from links.create_checks import DATABASE_UNAVAILABLE, Answer
from runtime.lifespan import lifespan_serve
from runtime.metrics import REQUESTS
from topics.links import publish_wait_seconds

logger = logging.getLogger(__name__)

# The collector's thresholds in the master's workers: a young collection every 50,000 container
# allocations instead of 700. A bulk call's 10,000 links hold several objects each (rows, Links,
# records, futures) that live until the call ends, so with the default every young collection
# walked them again, a batch's own objects over and over: links_create_many took 31-39 µs of
# CPU a link in-process with the default, 27-34 with this (docs/performance.md, "Bulk
# creates"). Cycles still go within 50,000 allocations (a few MB at most); a full collection
# comes after 10 x 10 young ones.
GC_THRESHOLDS = (50_000, 10, 10)

# Django logs every 4xx/5xx answer on this logger (django.utils.log.log_response); so does this
# path, in the same words.
request_logger = logging.getLogger("django.request")

# The middleware this path answers as: what it adds to a JSON answer of a view that uses no
# session, cookie or message is the headers of _middleware_headers. Any other list: Django.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# Threads for the checks that read the database before the body (API key, rate limit): one
# short query each, so a few threads keep up with the event loop; each holds a connection.
ADMISSION_THREADS = 4
# Host header values remembered as allowed (ALLOWED_HOSTS is checked once per value).
HOSTS_REMEMBERED = 64
SHUTTING_DOWN = Answer(503, {"error": "the server is shutting down; retry shortly"},
                       (create_checks.RETRY_AFTER,))
# Django's answer to an exception in a view (django.views.defaults.server_error, no 500.html).
SERVER_ERROR = (b'\n<!doctype html>\n<html lang="en">\n<head>\n'
                b'  <title>Server Error (500)</title>\n</head>\n<body>\n'
                b'  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n')
REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 405: "Method Not Allowed",
           410: "Gone", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}


def _lean_blocker() -> str | None:
    """Why this path cannot answer as Django would under the current settings; None if it can."""
    if settings.DEBUG:
        return "DEBUG is on"
    if list(settings.MIDDLEWARE) != MIDDLEWARE:
        return "MIDDLEWARE differs from the list links/asgi.py answers as"
    for name in ("SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_PROXY_SSL_HEADER",
                 "PREPEND_WWW", "DISALLOWED_USER_AGENTS", "USE_X_FORWARDED_HOST"):
        if getattr(settings, name):
            return f"{name} is set"
    return None


def _middleware_headers() -> list[tuple[bytes, bytes]]:
    """What Django's middleware adds to a /create answer after its Content-Length (which
    CommonMiddleware adds after XFrameOptionsMiddleware's header: responses pass the list from
    its end): SecurityMiddleware's, in its order."""
    headers = []
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    policy = settings.SECURE_REFERRER_POLICY
    if policy:
        # SecurityMiddleware's own spelling of the value.
        text = ",".join([v.strip() for v in policy.split(",")] if isinstance(policy, str)
                        else policy)
        headers.append((b"referrer-policy", text.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append((b"cross-origin-opener-policy",
                        settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()))
    return headers


class CreateApp:
    """ASGI application: PUT /create, and `fallback` (Django on the thread pool) for the rest.
    The batcher and the admission pool are started on the first /create (in the worker, after
    the fork) and closed at the lifespan's shutdown."""

    def __init__(self, fallback: Callable, *, batcher: CreateBatcher | None = None) -> None:
        self.fallback = fallback
        self.batcher = batcher or CreateBatcher()
        self.blocker = _lean_blocker()
        if self.blocker:
            logger.info("PUT /create is answered by Django's view: %s", self.blocker)
        self.frame_options = (b"x-frame-options", settings.X_FRAME_OPTIONS.upper().encode())
        self.after_length = _middleware_headers()
        self.hosts: dict[bytes, bool] = {}
        self.pool: DatabaseThreads | None = None
        self.started = False
        self.closed = False
        self._histograms: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/create" and self.blocker is None and self._host_allowed(scope):
                await self.create(scope, receive, send)
                return
        elif scope["type"] == "lifespan":
            await lifespan_serve(receive, send, close=self.close, gc_thresholds=GC_THRESHOLDS)
            return
        await self.fallback(scope, receive, send)

    def _host_allowed(self, scope: dict) -> bool:
        # CommonMiddleware's check (HttpRequest.get_host): one Host header, in ALLOWED_HOSTS.
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) != 1:
            return False
        allowed = self.hosts.get(hosts[0])
        if allowed is None:
            domain, _ = split_domain_port(hosts[0].decode("latin1"))
            allowed = bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)
            if len(self.hosts) < HOSTS_REMEMBERED:
                self.hosts[hosts[0]] = allowed
        return allowed

    async def create(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = time.perf_counter()
        method = scope["method"]
        status = 500
        try:
            try:
                answer = await self._answer(scope, receive)
            except Exception:
                # Logged as Django logs an exception in a view: once, with its traceback.
                request_logger.exception("Internal Server Error: /create")
                await self._send(send, 500, [(b"content-type", b"text/html; charset=utf-8")],
                                 SERVER_ERROR, logged=True)
                return
            status = answer.status
            await self._send(send, status, [(b"content-type", b"application/json")],
                             answer.content(), answer.headers)
        finally:
            self._observe(method, status, time.perf_counter() - started)

    async def _answer(self, scope: dict, receive: Callable) -> Answer:
        if not self.started:
            self._start()
        refusal = create_checks.method_refusal(scope["method"])
        if refusal is not None:
            return refusal
        if self.closed:
            return SHUTTING_DOWN
        fields: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in (b"authorization", b"content-length", b"x-forwarded-for"):
                # Repeated fields joined by ",", as the WSGI environ Django reads has them.
                text = value.decode("latin1")
                fields[name] = f"{fields[name]},{text}" if name in fields else text
        authorization = fields.get(b"authorization")
        client = scope.get("client")
        who = (authorization, client[0] if client else "", fields.get(b"x-forwarded-for", ""))
        if authorization or create_checks.admission_needs_database():
            refusal = await self.pool.run(_admitted, *who)
        else:
            # Nothing to look up (no key sent, no rate limit): a key-only server refuses at
            # once, an open one admits; no thread, no query.
            refusal = create_checks.admission_refusal(authorization=who[0], remote_addr=who[1],
                                                      forwarded_for=who[2])
        if refusal is not None:
            return refusal
        body = await _body(receive)
        # Django reads as many bytes as Content-Length says, and none without it (a chunked body
        # reads as empty there): the same here.
        content_length = fields.get(b"content-length")
        item = create_checks.item_parse(content_length,
                                        lambda: body if content_length is not None else b"")
        if isinstance(item, Answer):
            return item
        try:
            outcome = await self.batcher.create(item)
        except BatcherClosed:
            return SHUTTING_DOWN
        return create_checks.outcome_answer(outcome)

    async def _send(self, send: Callable, status: int, first: list[tuple[bytes, bytes]],
                    content: bytes, view_headers: tuple[tuple[str, str], ...] = (), *,
                    logged: bool = False) -> None:
        # In Django's order: the view's own headers, Content-Type, then the middleware's.
        headers = [(name.lower().encode(), value.encode()) for name, value in view_headers]
        headers += first
        headers.append(self.frame_options)
        headers.append((b"content-length", str(len(content)).encode()))
        headers += self.after_length
        if status >= 400 and not logged:
            log = request_logger.error if status >= 500 else request_logger.warning
            log("%s: %s", REASONS.get(status, "Error"), "/create")
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _observe(self, method: str, status: int, seconds: float) -> None:
        child = self._histograms.get((method, status))
        if child is None:
            child = self._histograms[(method, status)] = REQUESTS.labels(
                "create", method, str(status))
        child.observe(seconds)

    def _start(self) -> None:
        self.started = True
        self.pool = DatabaseThreads(ADMISSION_THREADS, name="create-admission")
        self.batcher.start()

    async def close(self) -> None:
        """Start no more batches: creates still queued are answered 503 (SHUTTING_DOWN), as is
        any later one; a batch running is waited for, at most its Kafka wait (its members are
        answered when it ends). The server calls this once its requests in progress had their
        time to finish (gunicorn's graceful timeout), so normally nothing is left."""
        self.closed = True
        if self.started:
            await asyncio.to_thread(self.batcher.close, timeout=publish_wait_seconds())
            self.pool.close()


def _admitted(authorization: str | None, remote_addr: str, forwarded_for: str) -> Answer | None:
    """create_checks.admission_refusal on a thread of the pool, with the connection handling of
    a Django request around it; the database unavailable is a 503, as in the view."""
    close_old_connections()
    try:
        return create_checks.admission_refusal(authorization=authorization,
                                               remote_addr=remote_addr, forwarded_for=forwarded_for)
    except (DatabaseError, InterfaceError) as exc:
        logger.error("database unavailable during /create: %s", exc)
        return DATABASE_UNAVAILABLE
    finally:
        close_old_connections()


async def _body(receive: Callable) -> bytes:
    # The server hands the application a request only once its body has arrived whole
    # (runtime/serving.py), in one message nearly always.
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    return body


class DatabaseThreads:
    """A few threads for short blocking work that uses the database (/create's admission: the
    API key, the rate limit), called from an event loop: `await run(fn, *args)`. Unlike
    concurrent.futures' pool, each thread closes its database connection when close() ends it
    (a connection left to the garbage collector outlives its thread)."""

    def __init__(self, count: int, *, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
                         for n in range(count)]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable, *args: object) -> object:
        """fn(*args) on one of the threads; its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        return await future

    def close(self) -> None:
        """End the threads once the jobs queued before are done; does not wait for them."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                fn, args, loop, future = job
                try:
                    outcome, failed = fn(*args), False
                except Exception as exc:  # noqa: BLE001 - handed to the awaiting request
                    outcome, failed = exc, True
                try:
                    loop.call_soon_threadsafe(_settle, future, outcome, failed)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass
        finally:
            connections.close_all()


def _settle(future: asyncio.Future, outcome: object, failed: bool) -> None:
    if not future.done():
        if failed:
            future.set_exception(outcome)  # type: ignore[arg-type]
        else:
            future.set_result(outcome)
