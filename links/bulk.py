"""The master's PUT /create/bulk: many /create in one call (links.services.links_create_many).

Body: a JSON array of at most SHORTENER_BULK_MAX_ITEMS objects, each what PUT /create accepts
(`{"longurl": ..., "expires_at": ...optional}`) and optionally `"alias"`: the tinyurl to give the
link (3-64 characters of [A-Za-z0-9_-], links/tinyurls.py; refused 400 `alias_invalid`, 409
`alias_reserved` for a path the service answers itself, 409 `alias_taken` when another
longurl's link has it; the same longurl's link with it is answered again) and `"password"`: the
new link's password (links/passwords.py; 400 `password_invalid`, 409 `password_conflict`; at
most BULK_PASSWORDS_MAX items of a call, else 400 `passwords_too_many`), in at most
SHORTENER_BULK_MAX_BODY_BYTES.
Answer 200 `{"results": [...]}`, one entry per item in input order: what /create would answer
for it alone, its 200 body (`{"longurl", "tinyurl"(, "expires_at")}`) or
`{"error": message, "code": reason, "status": /create's status}` (a rate-limited item also
carries `retry_after`, in seconds). An item's refusal never affects the others.

The order of checks is /create's: method, API key, body (size, JSON, a list, its length); then
the rate limit, counted per item (links.ratelimit.create_rate_limit_take: the first items within
the client's budget go ahead, the rest are answered 429 each); then each item (its shape, its
expiry, its longurl with every rule of links.validation). An item holding an integer too long
for Python's parser is that item's refusal; one nested past the parser's recursion limit refuses
the call (links/bodies.py). A refusal of the whole call is a 4xx
`{"error"}` counted in shortener_create_refused_total by reason, as are per-item refusals.
PostgreSQL unreachable: 503 for the call (no item's answer is known; a retry is safe).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import timezone as dt_timezone

import msgspec
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, InterfaceError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from links import (bodies, passwords, protection, publishing, ratelimit, services, tinyurls,
                   validation)
from links.create_checks import db_retrying
from runtime.metrics import CREATE_REFUSED, instrumented

logger = logging.getLogger(__name__)

# What /create answers for such a body as a whole (400, "json"), said of the item.
ITEM_INTEGER_TOO_LONG = (f"the item holds an integer of more than {sys.get_int_max_str_digits()} "
                         "digits, more than this service parses")
# Items of one call that may carry a password: each costs the master about 0.18 s of CPU to hash
# (scrypt, topics/passwords.py; measured on a 2-core machine), so a call of 10,000
# would hold a worker for half an hour. Past it an item is refused (400 passwords_too_many).
BULK_PASSWORDS_MAX = 100
UNPUBLISHED = ("the link is stored but could not be sent to the redirect servers (Kafka is "
               "unavailable); retry shortly: you will get the same tinyurl")


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status, headers=headers or None)


def _refuse(status: int, reason: str, message: str, **headers: str) -> JsonResponse:
    """A refusal of the whole call, counted by reason like /create's."""
    CREATE_REFUSED.labels(reason).inc()
    return _error(status, message, **headers)


def _item_error(status: int, code: str, message: str) -> dict:
    return {"error": message, "code": code, "status": status}


@csrf_exempt  # a JSON API without cookie authentication, like /create
@instrumented("create_bulk")
def create_bulk(request: HttpRequest) -> HttpResponse:
    try:
        return _create_bulk(request)
    except (DatabaseError, InterfaceError) as exc:
        logger.error("database unavailable during /create/bulk: %s", exc)
        return _error(503, "the database is unavailable; retry shortly", **{"Retry-After": "5"})


class BulkRefused(Exception):
    """The refusal of a whole bulk call (counted by reason): its status and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def bulk_items_read(content_length: str | None, read: Callable[[int], bytes]) -> list:
    """The call's items (a JSON list), from the request's Content-Length (None if absent) and
    `read(n)` (at most n bytes of the body). Raises BulkRefused (counted in
    shortener_create_refused_total) for the whole call. An item holding an integer too long to
    parse is bodies.INTEGER_TOO_LONG, refused alone; nesting too deep refuses the call
    (links/bodies.py says why). Shared by PUT /create/bulk and the JSON API's bulk create."""
    limit = settings.SHORTENER_BULK_MAX_BODY_BYTES
    try:
        payload = bodies.json_body(
            content_length,
            # Read from the stream, not request.body: Django refuses bodies over
            # DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) there; this path has its own bound.
            lambda: read(limit + 1), limit=limit, too_large_status=413,
            too_large=f"request body is larger than {limit} bytes "
                      "(SHORTENER_BULK_MAX_BODY_BYTES); send fewer items per call",
            empty='request body is empty; send a JSON array: [{"longurl": "https://..."}, ...]',
            elements_most=settings.SHORTENER_BULK_MAX_ITEMS)
    except bodies.BodyRefused as exc:
        CREATE_REFUSED.labels(exc.reason).inc()
        raise BulkRefused(exc.status, exc.reason, str(exc)) from None
    if not isinstance(payload, list):
        CREATE_REFUSED.labels("json").inc()
        raise BulkRefused(400, "json", 'request body must be a JSON array of what /create '
                          'accepts: [{"longurl": "https://..."}, ...]')
    most = settings.SHORTENER_BULK_MAX_ITEMS
    if len(payload) > most:
        CREATE_REFUSED.labels("too_many_items").inc()
        raise BulkRefused(400, "too_many_items", f"{len(payload)} items; at most {most} a call "
                          "(SHORTENER_BULK_MAX_ITEMS)")
    return payload


def _create_bulk(request: HttpRequest) -> HttpResponse:
    if request.method != "PUT":
        return _refuse(405, "method", f"method {request.method} is not allowed; use PUT",
                       Allow="PUT")
    try:
        key = db_retrying(lambda: protection.create_authenticate(
            authorization=request.headers.get("Authorization")))
    except protection.AuthMissing as exc:
        return _refuse(401, "auth_missing", str(exc),
                       **{"WWW-Authenticate": 'Bearer realm="create"'})
    except protection.AuthRefused as exc:
        return _refuse(403, "auth_refused", str(exc))
    try:
        payload = bulk_items_read(request.META.get("CONTENT_LENGTH"), request.read)
    except BulkRefused as exc:
        return _error(exc.status, str(exc))
    results = bulk_results(payload, client=protection.client_identity(request=request, key=key))
    # msgspec, not JsonResponse's json.dumps: 0.05 µs an item instead of 0.64 (the answers are
    # only strings and numbers, encoded the same).
    return HttpResponse(msgspec.json.encode({"results": results}), status=200,
                        content_type="application/json")


def bulk_results(payload: list, *, client: str) -> list[dict]:
    """Each item's answer, in input order (the module's docstring): the rate limit of `client`
    (protection.client_identity) counted per item, each item's shape and expiry checked, then
    links_create_many for the rest. Per-item refusals are counted by reason. Raises
    DatabaseError/InterfaceError if PostgreSQL is unavailable (no item's answer is known)."""
    granted, retry_after = ratelimit.create_rate_limit_take(client=client, cost=len(payload))
    results: list[dict | None] = [None] * len(payload)
    items: list[services.CreateItem] = []
    positions: list[int] = []  # the input position of each of `items`
    passwords_asked = 0
    for index, entry in enumerate(payload):
        if index >= granted:
            results[index] = {**_item_error(
                429, "rate_limited", "too many /create requests from this client; retry in "
                f"{retry_after:.0f} s"), "retry_after": retry_after}
        elif entry is bodies.INTEGER_TOO_LONG:
            results[index] = _item_error(400, "json", ITEM_INTEGER_TOO_LONG)
        elif not isinstance(entry, dict):
            results[index] = _item_error(
                400, "json", 'each item must be a JSON object: {"longurl": "https://..."}')
        elif "longurl" not in entry:
            results[index] = _item_error(400, "json", "longurl is missing")
        else:
            try:
                expires_at = services.expires_at_parse(entry.get("expires_at"))
            except ValidationError as exc:
                results[index] = _item_error(400, exc.error_list[0].code or "invalid",
                                             exc.messages[0])
            else:
                # "alias": the tinyurl the caller chooses (links/tinyurls.py has the rules);
                # absent or null: a generated one. Only here, not in PUT /create, whose body the
                # assignment defines.
                password = entry.get("password")
                if password is not None:
                    passwords_asked += 1
                    if passwords_asked > BULK_PASSWORDS_MAX:
                        results[index] = _item_error(
                            400, "passwords_too_many", f"at most {BULK_PASSWORDS_MAX} items of "
                            "a call may carry a password")
                        continue
                # "password": the new link's (links/passwords.py); absent or null: none.
                items.append(services.CreateItem(longurl=entry["longurl"],
                                                 expires_at=expires_at,
                                                 alias=entry.get("alias"), password=password))
                positions.append(index)
    # Idempotent, so retried once on a fresh connection like /create's link_create.
    outcomes = db_retrying(lambda: services.links_create_many(items)) if items else []
    for index, outcome in zip(positions, outcomes):
        results[index] = _outcome_answer(outcome)
    for result in results:
        if result is not None and "code" in result and result["status"] != 503:
            CREATE_REFUSED.labels(result["code"]).inc()
    return results  # type: ignore[return-value]


def _outcome_answer(outcome: services.CreateOutcome) -> dict:
    """An item's entry: /create's 200 body, or its error with /create's status and message."""
    if isinstance(outcome, services.LinkCreated):
        link = outcome.link
        body = {"longurl": link.longurl, "tinyurl": link.tinyurl}
        if link.expires_at is not None:
            body["expires_at"] = link.expires_at.astimezone(dt_timezone.utc).isoformat()
        return body
    if isinstance(outcome, validation.LongurlRefused):
        return _item_error(400, outcome.code, outcome.message)
    if isinstance(outcome, tinyurls.AliasRefused):  # 400 invalid, 409 reserved or taken
        return _item_error(outcome.status, outcome.code, outcome.message)
    if isinstance(outcome, passwords.PasswordRefused):  # 400 invalid, 409 conflict
        return _item_error(outcome.status, outcome.code, outcome.message)
    if isinstance(outcome, services.LinkDisabled):
        return _item_error(410, "taken_down", "this URL's link was taken down by an administrator")
    if isinstance(outcome, services.LinkExpired):
        return _item_error(410, "expired", "this URL's link expired at "
                           f"{outcome.link.expires_at.isoformat()}")
    if isinstance(outcome, publishing.LinkPublishError):
        return _item_error(503, "unpublished", UNPUBLISHED)
    raise outcome  # not an item's answer (a programming error): the call fails, 500
