"""Password-protected links on a replica: the form page, the password check, the signed cookie
and the limit on wrong passwords. Reached from redirects/asgi.py only when the click script
answered that a link is protected (counting.Protected), or for a POST to a tinyurl: the
redirect of an unprotected link never comes here.

Everything is answered from the replica's own Redis: the hash is in the link's value
(keys.LinkValue), the wrong-password counts in keys.password_failures_key. No database, no call
to the master.

  GET  protected link, no valid cookie   -> 200, the form (not counted)
  GET  with a valid cookie               -> 302 to the target (counted)
  HEAD                                   -> as GET, never counted (as every HEAD)
  POST right password                    -> 303 to the target (counted) and the cookie
  POST wrong password                    -> 401, the form again
  POST past SHORTENER_PASSWORD_TRIES     -> 429 (Retry-After), no check made
  POST while Redis refuses writes        -> 503: an attempt that cannot be counted is not checked

The cookie: `<expiry, Unix seconds>.<HMAC-SHA256>` over the tinyurl, the expiry and the link's
password hash, keyed with SHORTENER_LINK_COOKIE_SECRET; scoped to the tinyurl's path, HttpOnly,
SameSite=Lax, Secure when the request came over https. A new password (a new hash) ends every
cookie given for the old one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from django.conf import settings
from redis.exceptions import ResponseError

from redirects import answers, counting, keys, selectors
from redirects.pipelining import PipelinedRedis
from topics.passwords import password_check

logger = logging.getLogger(__name__)

COOKIE_NAME = "tinyurl_pass"
# A form's body holds one short field; anything much longer is no form of ours.
BODY_MAX_BYTES = 4096


# --- the cookie -----------------------------------------------------------------------------


def _key() -> bytes | None:
    secret = settings.SHORTENER_LINK_COOKIE_SECRET
    if not secret:
        return None
    # A key of its own, so the cookie's MAC never equals anything else made with the secret.
    return hmac.new(secret.encode(), b"shortener link cookie v1", hashlib.sha256).digest()


def _mac(key: bytes, tinyurl: str, expires: int, password_hash: str) -> str:
    mac = hmac.new(key, f"{tinyurl}|{expires}|{password_hash}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def cookie_value(tinyurl: str, password_hash: str, *, now: float | None = None) -> str | None:
    """The cookie's value for a browser that gave the right password; None without a secret."""
    key = _key()
    if key is None:
        return None
    expires = int(time.time() if now is None else now) + settings.SHORTENER_LINK_COOKIE_SECONDS
    return f"{expires}.{_mac(key, tinyurl, expires, password_hash)}"


def cookie_ok(value: str, tinyurl: str, password_hash: str, *, now: float | None = None) -> bool:
    """Whether `value` is a cookie this replica's secret made for this link and hash, unexpired.
    The expiry is inside the MAC, so a browser cannot prolong it."""
    key = _key()
    # The browser's bytes, as latin-1: a non-ASCII value is no cookie of ours, and would pass
    # str.isdigit() ("²") yet fail int(), or make hmac.compare_digest raise (a 500, not the form).
    if key is None or not value.isascii():
        return False
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or len(expires) > 12:
        return False
    if int(expires) <= (time.time() if now is None else now):
        return False
    return hmac.compare_digest(mac, _mac(key, tinyurl, int(expires), password_hash))


def cookie_header(tinyurl: str, value: str, *, secure: bool) -> tuple[bytes, bytes]:
    attributes = [f"{COOKIE_NAME}={value}", f"Max-Age={settings.SHORTENER_LINK_COOKIE_SECONDS}",
                  f"Path=/{tinyurl}", "HttpOnly", "SameSite=Lax"]
    if secure:
        attributes.append("Secure")
    return b"set-cookie", "; ".join(attributes).encode()


def request_cookie(scope: dict) -> str | None:
    """This link's cookie in the request's Cookie headers, if any (the path scoping sends only
    this tinyurl's)."""
    prefix = COOKIE_NAME.encode() + b"="
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix):].decode("latin-1")
    return None


def _secure(scope: dict) -> bool:
    return scope.get("scheme") == "https"


def client_address(scope: dict) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


# --- the answers ----------------------------------------------------------------------------


async def _let_through(redis: PipelinedRedis, tinyurl: str, password_hash: str, *, bot: bool,
                       status: int, extra: list[tuple[bytes, bytes]]) -> answers.Answer:
    """Count the click and answer the redirect, if the link still has this hash (the script
    checks it in the same step); else the form (the password changed meanwhile)."""
    try:
        outcome = await counting.link_click_async(redis=redis, tinyurl=tinyurl, bot=bot,
                                                  password_hash=password_hash)
    except ResponseError as exc:
        # Redis refuses writes but still reads: the redirect as for an unprotected link
        # (redirects/asgi.py), the click lost and counted as lost; any other error is raised
        # again (503). Found by a tester: a valid cookie was answered 503 on a full Redis.
        outcome = await _read_uncounted(redis, tinyurl, password_hash, exc)
    if isinstance(outcome, counting.Protected):
        return answers.FORM
    answer = answers.redirect_answer(outcome)
    if answer[0] != 302:
        return answer
    return status, [*answer[1], *extra], answer[2]


async def _read_uncounted(redis: PipelinedRedis, tinyurl: str, password_hash: str,
                          error: ResponseError) -> str | int | None:
    """The outcome of a protected link's click that Redis refused to count (`error`): its
    longurl if it still has `password_hash`, counting.Protected if its hash changed (the form),
    else what a HEAD reads; the click recorded as lost (counting.click_uncounted). Raises
    `error` again unless it is a refusal of writes (counting.writes_refused)."""
    reason = counting.writes_refused(error)
    if reason is None:
        raise error
    got = await redis.execute("MGET", *selectors.link_target_keys(tinyurl))
    outcome = selectors.link_target_outcome(got, lambda: True)
    if isinstance(outcome, counting.Protected) and str(outcome) == password_hash:
        link = keys.link_value_parse(got[0])
        outcome = link.longurl if link is not None and link.longurl is not None else None
    counting.click_uncounted(reason=reason, outcome=outcome, error=error)
    return outcome


async def get_answer(*, redis: PipelinedRedis, tinyurl: str, password_hash: str, scope: dict,
                     bot: bool) -> answers.Answer:
    """A GET of a protected link: the redirect with a valid cookie, the form otherwise."""
    cookie = request_cookie(scope)
    if cookie is not None and cookie_ok(cookie, tinyurl, password_hash):
        return await _let_through(redis, tinyurl, password_hash, bot=bot, status=302, extra=[])
    return answers.FORM


def head_answer(*, raw: bytes | str, tinyurl: str, password_hash: str,
                scope: dict) -> answers.Answer:
    """A HEAD of a protected link (`raw`, its value as read, holds `password_hash`): what a GET
    of the same request answers, the redirect with a valid cookie and the form otherwise, but
    never counted, as no HEAD is (redirects/asgi.py)."""
    cookie = request_cookie(scope)
    if cookie is not None and cookie_ok(cookie, tinyurl, password_hash):
        link = keys.link_value_parse(raw)
        if link is not None and link.longurl is not None:
            return answers.redirect_answer(link.longurl)
    return answers.FORM


async def _body(receive: Callable) -> bytes | None:
    """The request's body, or None past BODY_MAX_BYTES."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# INCR the wrong-password count of (link, client) and start its window on the first: an attempt
# is counted before it is checked, so that parallel guesses cannot all pass a check made first.
# Returns the count and the window's remaining seconds.
TRY_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


async def post_answer(*, redis: PipelinedRedis, tinyurl: str, scope: dict, receive: Callable,
                      bot: bool) -> answers.Answer:
    """A POST of the form: 303 to the target with the cookie for the right password, 401 and the
    form for a wrong one, 429 past the limit; 405 for anything but a protected link; 503 where
    a GET is 503 (after a restart of Redis until consume_links has checked it, or for a link it
    lacks while not ready: it may be a protected link this replica has not read yet), and while
    Redis refuses writes (a wrong password could not be counted: the limit on guessing holds
    only if every attempt is counted).
    Raises RedisError (503) when Redis is away."""
    # The marks with the link, as a HEAD reads them: found by a tester, the bare GET of the
    # value answered a restored backup's older password.
    outcome = await selectors.link_target_get_async(redis=redis, tinyurl=tinyurl)
    if type(outcome) is int and outcome == counting.LOADING:
        return answers.CATCHING_UP
    if not isinstance(outcome, counting.Protected):
        # Unknown, disabled, expired or unprotected: 405, as every POST was before passwords.
        return answers.method_not_allowed("POST")
    password_hash = str(outcome)
    body = await _body(receive)
    if body is None:
        return answers.too_large()
    try:
        password = dict(parse_qsl(body.decode("utf-8", "replace"),
                                  max_num_fields=8)).get("password", "")
    except ValueError:  # more fields than any form of ours sends: a wrong password
        password = ""
    failures = keys.password_failures_key(tinyurl=tinyurl, client=client_address(scope))
    count, ttl = await redis.execute("EVAL", TRY_SCRIPT, 1, failures,
                                     settings.SHORTENER_PASSWORD_TRIES_SECONDS)
    if int(count) > settings.SHORTENER_PASSWORD_TRIES:
        return answers.too_many_passwords(max(1, int(ttl)))
    # scrypt takes about 0.18 s of CPU: in a thread, so the event loop keeps serving redirects.
    right = bool(password) and await asyncio.to_thread(password_check, password, password_hash)
    if not right:
        logger.info("wrong password for %s from %s (%d in the window)", tinyurl,
                    client_address(scope), int(count))
        return answers.WRONG_PASSWORD
    # The right password clears this link and client's count, its earlier failures with it: a
    # person who mistyped and then got in is not one mistake from the limit next time. One DEL
    # (atomic; no key, nothing done: unlike a DECR it never makes a count without a window).
    # An attempt past the limit never comes here (429 above), so a count over it stays.
    await redis.execute("DEL", failures)
    cookie = cookie_value(tinyurl, password_hash)
    extra = [] if cookie is None else [cookie_header(tinyurl, cookie, secure=_secure(scope))]
    return await _let_through(redis, tinyurl, password_hash, bot=bot, status=303, extra=extra)
