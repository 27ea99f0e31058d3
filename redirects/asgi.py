"""The replica's web application: GET/HEAD /<tinyurl> answered here, before and outside Django's
request cycle; every other request handed to Django's ASGI application.

A redirect is what a replica exists for, and Django's request cycle (middleware, URL resolver,
request and response objects) cost most of its time per redirect (docs/performance.md). Here a
redirect is a path check, one Redis command sent together with those of the other requests in
flight (redirects/pipelining.py), and a response of constant headers. What is answered, and how,
is exactly what the Django view answered (redirects/answers.py, shared with it): 302 with
Location and Cache-Control: no-store; HEAD answered as GET and not counted; 404 JSON for an
unknown or disabled code; 410 JSON with Cache-Control: no-store for an expired one; 405 for
other methods; 503 with Retry-After while Redis is away, recovering by itself (after a Redis
restart, through the counter incarnation check, run on every new connection before anything
else: incarnation.incarnation_check_on_connect). A Redis that refuses writes but still reads
(memory or disk full, a read-only replica) still redirects, unless it restarted since it was
last checked: the click is counted as lost instead (selectors.link_read_uncounted_async), on
that error only.
Malformed codes, /metrics, /healthz, /readyz and anything else go to Django, which answers them
as before (a malformed code is a 404 from its resolver, without a Redis round trip).

Served by gunicorn with uvicorn's worker (gunicorn.conf.py); `shortener_project/asgi.py` builds
it around Django's application.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError, ResponseError

from redirects import answers, bots, counting, incarnation, keys, protected, selectors
from redirects.pipelining import PipelinedRedis
from runtime.lifespan import lifespan_serve
from runtime.metrics import REQUESTS
from topics.records import (
    ALIAS_MAX_LENGTH,
    ALIAS_MIN_LENGTH,
    RESERVED_TINYURLS,
    tinyurl_chars_ok,
)

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]

# The path of a tinyurl: a slash and a tinyurl, generated or an alias (topics.records.tinyurl_ok:
# TINYURL_RE's shape, not a reserved name in any case, so /metrics, /healthz and /readyz always
# reach Django's views, whatever Redis holds). Checked with str methods and a set lookup, not a
# regex: this runs for every request a replica gets.
_PATH_MIN = 1 + ALIAS_MIN_LENGTH
_PATH_MAX = 1 + ALIAS_MAX_LENGTH


class RedirectApp:
    """ASGI application: the redirect path, and `fallback` (Django's ASGI application) for the
    rest. One PipelinedRedis per process, made on the first redirect (in the worker, after the
    fork) and closed at the lifespan's shutdown."""

    def __init__(self, fallback: ASGIApp, *, redis_url: str | None = None) -> None:
        self.fallback = fallback
        self.redis_url = redis_url or settings.REDIS_URL
        self.redis: PipelinedRedis | None = None
        # prometheus_client's labels() validates and looks up on every call; a redirect needs
        # only a handful of (method, status) children, kept here.
        self._histograms: dict[tuple[str, int], Any] = {}
        self._error_logged_at = float("-inf")
        self._errors_unlogged = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if _PATH_MIN <= len(path) <= _PATH_MAX:
                tinyurl = path[1:]
                if tinyurl_chars_ok(tinyurl) and tinyurl not in RESERVED_TINYURLS:
                    await self.redirect(scope["method"], tinyurl, send, scope, receive)
                    return
        elif scope["type"] == "lifespan":
            # Django's application does not speak the lifespan protocol; it is ours alone.
            await lifespan_serve(receive, send, close=self.close)
            return
        await self.fallback(scope, receive, send)

    async def redirect(self, method: str, tinyurl: str, send: Callable, scope: dict,
                       receive: Callable | None = None) -> None:
        started = time.perf_counter()
        status = 500
        try:
            redis = self.redis or self._redis_make()
            try:
                if method == "GET":
                    # Looked up and counted in one command; a link not answered with 302
                    # counts nothing. A bot's click (its User-Agent: redirects/bots.py, a
                    # bounded check) is redirected alike and counted apart.
                    bot = bots.scope_is_bot(scope)
                    try:
                        outcome = await counting.link_click_async(
                            redis=redis, tinyurl=tinyurl, bot=bot)
                    except ResponseError as exc:
                        # Redis refuses writes (memory or disk full, a read-only replica) but
                        # still reads: answered all the same, the click counted as lost. Any
                        # other error is raised again (503 below).
                        outcome = await selectors.link_read_uncounted_async(
                            redis=redis, tinyurl=tinyurl, error=exc)
                    if outcome.__class__ is counting.Protected:
                        # A password-protected link: nothing was counted; the form, or the
                        # redirect for a browser with a valid cookie (redirects/protected.py).
                        answer = await protected.get_answer(
                            redis=redis, tinyurl=tinyurl, password_hash=outcome, scope=scope,
                            bot=bot)
                    else:
                        answer = answers.redirect_answer(outcome)
                elif method == "POST" and receive is not None:
                    # The password form of a protected link (405 for any other link).
                    answer = await protected.post_answer(
                        redis=redis, tinyurl=tinyurl, scope=scope, receive=receive,
                        bot=bots.scope_is_bot(scope))
                elif method == "HEAD":
                    # Answered, not counted: link-preview bots and crawlers send HEAD to see
                    # where a link goes, and they are not clicks.
                    got = await redis.execute("MGET", *selectors.link_target_keys(tinyurl))
                    raw = got[0]
                    if raw is None and not got[1]:
                        ready = await redis.execute("EXISTS", keys.links_ready_key())
                        outcome = selectors.link_target_outcome(got, lambda: ready)
                    else:
                        outcome = selectors.link_target_outcome(got, lambda: True)
                    if outcome.__class__ is counting.Protected:
                        # As a GET of the same request: the redirect for a valid cookie, the
                        # form otherwise (redirects/protected.py); uncounted all the same.
                        answer = protected.head_answer(raw=raw, tinyurl=tinyurl,
                                                       password_hash=outcome, scope=scope)
                    else:
                        answer = answers.redirect_answer(outcome)
                else:
                    answer = answers.method_not_allowed(method)
            except RedisError as exc:
                self._redis_error_log(exc)
                answer = answers.UNAVAILABLE
            status, headers, body = answer
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self._observe(method, status, time.perf_counter() - started)

    def _redis_error_log(self, exc: RedisError) -> None:
        # At most a line a second: with Redis away, every redirect fails the same way, and a
        # line per redirect would bury the log (the metrics count each 503).
        now = time.monotonic()
        if now - self._error_logged_at >= 1.0:
            logger.error("Redis unavailable: %r (%d more 503s since the last line)",
                         exc, self._errors_unlogged)
            self._error_logged_at, self._errors_unlogged = now, 0
        else:
            self._errors_unlogged += 1

    def _observe(self, method: str, status: int, seconds: float) -> None:
        child = self._histograms.get((method, status))
        if child is None:
            child = self._histograms[(method, status)] = REQUESTS.labels(
                "redirect", method, str(status))
        child.observe(seconds)

    def _redis_make(self) -> PipelinedRedis:
        options = settings.CACHES["default"]["OPTIONS"]
        # The same limits as the Django side's connection (settings.CACHES): fail fast when
        # Redis is down, so a redirect answers 503 instead of hanging.
        self.redis = PipelinedRedis(self.redis_url,
                                    connect_timeout=options["SOCKET_CONNECT_TIMEOUT"],
                                    timeout=options["SOCKET_TIMEOUT"],
                                    on_connect=incarnation.incarnation_check_on_connect)
        return self.redis

    async def close(self) -> None:
        """At the lifespan's shutdown: the Redis connection closed, if one was made."""
        if self.redis is not None:
            await self.redis.aclose()
