"""What PUT /create checks and answers, written once for both of its paths: Django's view
(links/views.py) and the lean ASGI path in front of Django (links/asgi.py). No HTTP framework
here: a request is taken apart by the caller, and an answer is an Answer, which each path writes
out in its own way (the same status, JSON body and headers: tests/links/test_create_paths.py
compares them).

The order of the checks: method, API key, rate limit, body, expiry, longurl (the last inside
links.services.links_create_many, links.validation). Every refusal is counted by reason
(shortener_create_refused_total).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone as dt_timezone
from typing import TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, InterfaceError, connection

from links import bodies, protection, publishing, ratelimit, services, validation
from runtime.metrics import CREATE_REFUSED

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """One answer of /create: its status, its JSON body (a dict of strings) and the headers
    the view adds (name, value), before those every response of the master gets."""

    status: int
    body: dict
    headers: tuple[tuple[str, str], ...] = ()

    def content(self) -> bytes:
        """The body as Django's JsonResponse writes it (json.dumps' defaults: ASCII, ", ")."""
        return json.dumps(self.body).encode()


def refused(status: int, reason: str, message: str, *headers: tuple[str, str]) -> Answer:
    """A refusal: counted by reason (shortener_create_refused_total), answered with a message."""
    CREATE_REFUSED.labels(reason).inc()
    return Answer(status, {"error": message}, headers)


RETRY_AFTER = ("Retry-After", "5")
DATABASE_UNAVAILABLE = Answer(503, {"error": "the database is unavailable; retry shortly"},
                              (RETRY_AFTER,))
# The link is stored but Kafka has not acknowledged it, so the replicas may not know it. Handing
# out its tinyurl now could give the user a link that 404s; instead ask for a retry. The outbox
# publishes the link once Kafka is back, and a retry of the same longurl gets the same tinyurl.
PUBLISH_FAILED = Answer(
    503,
    {"error": "the link is stored but could not be sent to the redirect servers (Kafka is "
              "unavailable); retry shortly: you will get the same tinyurl"},
    (RETRY_AFTER,))


def max_body_bytes() -> int:
    """The largest request body /create reads: room for a longurl of SHORTENER_MAX_URL_LENGTH
    characters in any JSON escaping (at most 12 bytes a character: a character outside the BMP
    written as two \\uXXXX escapes), plus the object around it. So every longurl of up to that
    many characters is read and judged on its stored form (links.validation), whatever its
    escaping: 8,192 emoji get the same answer raw (4 bytes each) or escaped (12 bytes each)."""
    return settings.SHORTENER_MAX_URL_LENGTH * 12 + 4096


def db_retrying(fn: Callable[[], T]) -> T:
    """fn(), tried once more on a fresh connection if the kept one died (PostgreSQL restarted
    or dropped it since: connections are not health-checked before each use, to save a round
    trip). fn must be idempotent (a lookup, or links_create_many, which cannot make a second
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


def method_refusal(method: str) -> Answer | None:
    """405 for anything but PUT."""
    if method != "PUT":
        return refused(405, "method", f"method {method} is not allowed; use PUT", ("Allow", "PUT"))
    return None


def admission_refusal(*, authorization: str | None, remote_addr: str,
                      forwarded_for: str) -> Answer | None:
    """The API key (401 without usable credentials where one is needed, 403 for a key that is
    unknown or revoked), then the rate limit (429 with Retry-After); None: admitted. Reads the
    database (the key, the limiter's counter) on the calling thread's connection. Raises
    DatabaseError/InterfaceError if PostgreSQL is unavailable (after one retry on a fresh
    connection)."""
    try:
        key = db_retrying(lambda: protection.create_authenticate(authorization=authorization))
    except protection.AuthMissing as exc:
        # RFC 6750 §3: a 401 names the scheme the client should use.
        return refused(401, "auth_missing", str(exc), ("WWW-Authenticate", 'Bearer realm="create"'))
    except protection.AuthRefused as exc:
        return refused(403, "auth_refused", str(exc))
    retry_after = ratelimit.create_rate_limit_hit(client=protection.client_identity_of(
        remote_addr=remote_addr, forwarded_for=forwarded_for, key=key))
    if retry_after is not None:
        return refused(429, "rate_limited", "too many /create requests from this client; retry "
                       f"in {retry_after:.0f} s", ("Retry-After", f"{retry_after:.0f}"))
    return None


def admission_needs_database() -> bool:
    """Whether admission_refusal reads the database for a request that sends no key: only
    when a rate limit is configured."""
    return bool(settings.SHORTENER_CREATE_RATE_LIMIT.strip())


def item_parse(content_length: str | None,
               read_body: Callable[[], bytes]) -> services.CreateItem | Answer:
    """The link asked for, from the request's Content-Length header (None if absent) and its
    body (read_body(), called only if Content-Length does not already refuse it): 400 for a
    body too large, empty, not JSON, not an object, without longurl, or with an expiry
    expires_at_parse refuses. The longurl itself is checked later, in the batch."""
    limit = max_body_bytes()
    try:
        payload = bodies.json_body(
            content_length, read_body, limit=limit, too_large_status=400,
            too_large=f"request body is larger than {limit} bytes, more than a longurl of "
                      f"{settings.SHORTENER_MAX_URL_LENGTH} characters needs in any JSON escaping",
            empty='request body is empty; send JSON {"longurl": "https://..."}')
    except bodies.BodyRefused as exc:
        return refused(exc.status, exc.reason, str(exc))
    if not isinstance(payload, dict):
        return refused(400, "json", 'request body must be a JSON object: {"longurl": "https://..."}')
    if "longurl" not in payload:
        return refused(400, "json", "longurl is missing")
    if "password" in payload or "alias" in payload:
        # Ignored, they would answer a public link to a caller who believes it protected (or
        # named): refused, pointing to where they are taken. Other fields stay ignored, as the
        # homework's clients may send them.
        return refused(400, "field", 'PUT /create takes no "password" nor "alias" (it answers '
                       "the longurl's one public link); use POST /api/v1/links or "
                       "PUT /create/bulk")
    try:
        # Optional; without it the answer is exactly the homework's.
        expires_at = services.expires_at_parse(payload.get("expires_at"))
    except ValidationError as exc:
        return refused(400, exc.error_list[0].code or "invalid", exc.messages[0])
    return services.CreateItem(longurl=payload["longurl"], expires_at=expires_at)


def outcome_answer(outcome: services.CreateOutcome) -> Answer:
    """The answer for one item's outcome of links_create_many (or link_create): 200 with the
    link, 400 for a refused longurl, 410 for a link taken down or expired, 503 for a link Kafka
    did not acknowledge, or for the database. Anything else is re-raised (a 500)."""
    if isinstance(outcome, services.LinkCreated):
        link = outcome.link
        # The longurl in the form it was stored and is sent in (IDNA host, percent-encoded).
        body = {"longurl": link.longurl, "tinyurl": link.tinyurl}
        if link.expires_at is not None:
            # The link's own expiry, which for an existing link may differ from the one asked for.
            body["expires_at"] = link.expires_at.astimezone(dt_timezone.utc).isoformat()
        return Answer(200, body)
    if isinstance(outcome, validation.LongurlRefused):
        return refused(400, outcome.code, outcome.message)
    if isinstance(outcome, services.LinkDisabled):
        # The same longurl asked for again after a takedown: not re-issued (under the old
        # tinyurl or a new one); an admin can put the link back.
        return refused(410, "taken_down", "this URL's link was taken down by an administrator")
    if isinstance(outcome, services.LinkExpired):
        # Its link is shared by everyone who shortened this URL, and it has ended; an admin can
        # give it a new expiry.
        return refused(410, "expired",
                       f"this URL's link expired at {outcome.link.expires_at.isoformat()}")
    if isinstance(outcome, publishing.LinkPublishError):
        return PUBLISH_FAILED
    if isinstance(outcome, (DatabaseError, InterfaceError)):
        logger.error("database unavailable during /create: %s", outcome)
        return DATABASE_UNAVAILABLE
    raise outcome
