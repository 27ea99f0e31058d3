"""The master's HTTP API: PUT /create (the order of its checks: method, API key, rate limit,
body, expiry, longurl (links.validation, the blocklist included); each refusal is counted by
reason)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timezone as dt_timezone
from typing import TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, InterfaceError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from links import protection, publishing, ratelimit, services, validation
from runtime.metrics import CREATE_REFUSED, instrumented

logger = logging.getLogger(__name__)
T = TypeVar("T")


def max_body_bytes() -> int:
    """The largest request body /create reads: room for a longurl of SHORTENER_MAX_URL_LENGTH
    characters in any JSON escaping (at most 12 bytes a character: a character outside the BMP
    written as two \\uXXXX escapes), plus the object around it. So every longurl of up to that
    many characters is read and judged on its form as sent, whatever its escaping: 8,192 emoji
    get the same answer raw (4 bytes each) or escaped (12 bytes each)."""
    return settings.SHORTENER_MAX_URL_LENGTH * 12 + 4096


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive (it answers). Restart it if this fails."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to serve: PostgreSQL answers. (Kafka being down does not make the master unready:
    /create then answers 503 itself, and the admin still works.)"""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except (DatabaseError, InterfaceError) as exc:
        return JsonResponse({"status": "not ready", "reason": f"database unavailable: {exc}"},
                            status=503)
    return JsonResponse({"status": "ready"})


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status, headers=headers or None)


def _refuse(status: int, reason: str, message: str, **headers: str) -> JsonResponse:
    """A refusal: counted by reason (shortener_create_refused_total), answered with a message."""
    CREATE_REFUSED.labels(reason).inc()
    return _error(status, message, **headers)


def _db_retrying(fn: Callable[[], T]) -> T:
    """fn(), tried once more on a fresh connection if the kept one died (PostgreSQL restarted
    or dropped it since: connections are not health-checked before each request, to save a
    round trip). fn must be idempotent (a lookup, or link_create, which cannot make a second
    link). Raises what the second try raises (DatabaseError, InterfaceError: 503)."""
    try:
        return fn()
    except (DatabaseError, InterfaceError):
        # InterfaceError ("connection already closed") is not a DatabaseError in Django: a
        # connection that PostgreSQL closed and that an earlier query of this request (the rate
        # limiter's) already found broken.
        if connection.in_atomic_block or connection.is_usable():
            raise  # the database itself refused: no point retrying
        connection.close()
        return fn()


# A JSON API with no cookie authentication: CSRF protection guards cookie-authenticated forms
# and has nothing to protect here.
@csrf_exempt
@instrumented("create")
def create(request: HttpRequest) -> JsonResponse:
    try:
        return _create(request)
    except (DatabaseError, InterfaceError) as exc:
        # Any step that reads the database (an API key, the blocklist, the link) while
        # PostgreSQL is unreachable: the same answer as for the link itself.
        logger.error("database unavailable during /create: %s", exc)
        return _error(503, "the database is unavailable; retry shortly", **{"Retry-After": "5"})


def _create(request: HttpRequest) -> JsonResponse:
    if request.method != "PUT":
        return _refuse(405, "method", f"method {request.method} is not allowed; use PUT",
                       Allow="PUT")
    try:
        key = _db_retrying(lambda: protection.create_authenticate(
            authorization=request.headers.get("Authorization")))
    except protection.AuthMissing as exc:
        # RFC 6750 §3: a 401 names the scheme the client should use.
        return _refuse(401, "auth_missing", str(exc),
                       **{"WWW-Authenticate": 'Bearer realm="create"'})
    except protection.AuthRefused as exc:
        return _refuse(403, "auth_refused", str(exc))
    retry_after = ratelimit.create_rate_limit_hit(
        client=protection.client_identity(request=request, key=key))
    if retry_after is not None:
        return _refuse(429, "rate_limited", "too many /create requests from this client; retry "
                       f"in {retry_after:.0f} s", **{"Retry-After": f"{retry_after:.0f}"})

    limit = max_body_bytes()
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _refuse(400, "body", "invalid Content-Length")
    too_large = (f"request body is larger than {limit} bytes, more than a longurl of "
                 f"{settings.SHORTENER_MAX_URL_LENGTH} characters needs in any JSON escaping")
    if length > limit:
        return _refuse(400, "body", too_large)
    body = request.body
    if len(body) > limit:  # chunked bodies carry no Content-Length
        return _refuse(400, "body", too_large)
    if not body.strip():
        return _refuse(400, "body", 'request body is empty; send JSON {"longurl": "https://..."}')
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        return _refuse(400, "json", "request body is not UTF-8")
    except json.JSONDecodeError as exc:
        return _refuse(400, "json", f"request body is not valid JSON: {exc.msg}")
    except (ValueError, RecursionError) as exc:
        # Python's own limits on what it parses: integers of more than 4,300 digits
        # (ValueError, CVE-2020-10735) and nesting deeper than the recursion limit.
        return _refuse(400, "json", f"request body is not JSON this service accepts: {exc}"[:200])
    if not isinstance(payload, dict):
        return _refuse(400, "json",
                       'request body must be a JSON object: {"longurl": "https://..."}')
    if "longurl" not in payload:
        return _refuse(400, "json", "longurl is missing")
    try:
        # Optional; without it the answer is exactly the homework's.
        expires_at = services.expires_at_parse(payload.get("expires_at"))
    except ValidationError as exc:
        return _refuse(400, exc.error_list[0].code or "invalid", exc.messages[0])

    try:
        # link_create checks the longurl (links.validation.longurl_check) before anything else.
        result = _db_retrying(lambda: services.link_create(longurl=payload["longurl"],
                                                            expires_at=expires_at))
    except validation.LongurlRefused as exc:
        return _refuse(400, exc.code, exc.message)
    except services.LinkDisabled:
        # The same longurl asked for again after a takedown: not re-issued (under the old
        # tinyurl or a new one); an admin can put the link back.
        return _refuse(410, "taken_down", "this URL's link was taken down by an administrator")
    except services.LinkExpired as exc:
        # Its link is shared by everyone who shortened this URL, and it has ended; an admin can
        # give it a new expiry.
        return _refuse(410, "expired", f"this URL's link expired at {exc.link.expires_at.isoformat()}")
    except publishing.LinkPublishError:
        # The link is stored but Kafka has not acknowledged it, so the replicas may not know it.
        # Handing out its tinyurl now could give the user a link that 404s; instead ask for a
        # retry. The outbox publishes the link once Kafka is back, and a retry of the same
        # longurl gets the same tinyurl.
        return _error(
            503,
            "the link is stored but could not be sent to the redirect servers (Kafka is "
            "unavailable); retry shortly: you will get the same tinyurl",
            **{"Retry-After": "5"},
        )
    except (DatabaseError, InterfaceError) as exc:
        logger.error("database unavailable during /create: %s", exc)
        return _error(503, "the database is unavailable; retry shortly", **{"Retry-After": "5"})
    # The longurl in the form it was stored and is sent in (IDNA host, percent-encoded).
    body = {"longurl": result.link.longurl, "tinyurl": result.link.tinyurl}
    if result.link.expires_at is not None:
        # The link's own expiry, which for an existing link may differ from the one asked for.
        body["expires_at"] = result.link.expires_at.astimezone(dt_timezone.utc).isoformat()
    return JsonResponse(body, status=200)
