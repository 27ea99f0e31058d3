"""The answers of GET/HEAD /<tinyurl>, defined once: the ASGI path (redirects/asgi.py, what a
replica serves) sends them as they are, and the Django view (manage.py runserver) wraps them.

An answer is (status, headers, body): headers as ASGI wants them (lower-case byte names), body
bytes. The headers are the ones Django's response and SecurityMiddleware gave this endpoint.
"""

from __future__ import annotations

import html
import json

from django.conf import settings
from django.utils.encoding import iri_to_uri

from redirects.counting import GONE, LOADING, Protected
from topics.passwords import PASSWORD_MAX_LENGTH

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def _security_headers() -> list[tuple[bytes, bytes]]:
    # What django.middleware.security.SecurityMiddleware adds to every response of a replica.
    headers = []
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        if not isinstance(policy, str):
            policy = ",".join(policy)
        headers.append((b"referrer-policy", policy.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append((b"cross-origin-opener-policy",
                        settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()))
    return headers


_SECURITY = _security_headers()
_REDIRECT_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", b"0"),
    # Every click must reach us to be counted, and a disabled link must stop working at once:
    # browsers and proxies must not keep the redirect.
    (b"cache-control", b"no-store"),
    *_SECURITY,
]


def _json(status: int, payload: dict, *extra: tuple[bytes, bytes]) -> Answer:
    # json.dumps' default separators, as Django's JsonResponse writes them.
    body = json.dumps(payload).encode()
    return status, [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *extra, *_SECURITY], body


NOT_FOUND = _json(404, {"error": "no such link"})
# A 410 is cacheable by default (RFC 9110, 15.5.11: "heuristically cacheable"); like the
# redirect, it must come from the replica's current state each time, not from a cache.
EXPIRED = _json(410, {"error": "this link has expired"}, (b"cache-control", b"no-store"))
# Redis is away: the client may retry in a second (a restart, a failover).
UNAVAILABLE = _json(503, {"error": "temporarily unavailable"}, (b"retry-after", b"1"))
# A link this replica does not hold while it is not ready (counting.LOADING).
CATCHING_UP = _json(503, {"error": "this replica is catching up: try again, or another replica"},
                    (b"retry-after", b"1"))


# --- a password-protected link's page (redirects/protected.py) ------------------------------

_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Password required</title></head>
<body><main><h1>This link is protected</h1>{note}
<form method="post">
<p><label for="password">Password</label>
<input id="password" type="password" name="password" required autofocus maxlength="{max}"></p>
<p><button type="submit">Continue</button></p>
</form></main></body></html>
"""

_PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    # The form's answer depends on the cookie and on the link's current state: never cached.
    (b"cache-control", b"no-store"),
    # No script, style or frame: the page is a form and nothing else (and cannot be framed to
    # trick a visitor into typing a password).
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]


def _form_page(status: int, note: str = "", *extra: tuple[bytes, bytes]) -> Answer:
    # A browser's maxlength counts UTF-16 code units, the password's limit code points: an
    # emoji is two of the one and one of the other. Twice the limit lets every password the
    # master accepts be typed; a longer one is a wrong password (password_check).
    body = _FORM.format(note=note, max=2 * PASSWORD_MAX_LENGTH).encode()
    return status, [*_PAGE_HEADERS, (b"content-length", str(len(body)).encode()), *extra,
                    *_SECURITY], body


FORM = _form_page(200)
WRONG_PASSWORD = _form_page(401, '<p role="alert">Wrong password.</p>')


def too_many_passwords(retry_after: int) -> Answer:
    return _form_page(429, f'<p role="alert">Too many wrong passwords. Try again in '
                           f'{html.escape(str(retry_after))} seconds.</p>',
                      (b"retry-after", str(retry_after).encode()))


def redirect_answer(outcome: str | int | None) -> Answer:
    """The answer for a lookup's outcome (counting.click_outcome / selectors.link_target_parse):
    302 to the longurl, 410 for GONE, 404 for None, 503 for LOADING (a missing key while the
    replica is not ready), the password form for Protected.

    Location is the longurl as stored, passed through Django's iri_to_uri as HttpResponseRedirect
    does: an ASCII URL (percent-encodings, query, fragment) goes out byte for byte; characters
    that cannot appear in a header are percent-encoded.
    """
    if outcome is None:
        return NOT_FOUND
    if outcome == GONE and isinstance(outcome, int):
        return EXPIRED
    if outcome == LOADING and isinstance(outcome, int):
        return CATCHING_UP
    if outcome.__class__ is Protected:
        # Never the target of a protected link: its form (redirects/protected.py; here for
        # manage.py runserver's view, which checks no cookie and takes no POST).
        return FORM
    return 302, [(b"location", iri_to_uri(outcome).encode("ascii")), *_REDIRECT_HEADERS], b""


def method_not_allowed(method: str) -> Answer:
    return _json(405, {"error": f"method {method} is not allowed; use GET"},
                 (b"allow", b"GET, HEAD"))


def too_large() -> Answer:
    return _json(413, {"error": "request body too large"})
