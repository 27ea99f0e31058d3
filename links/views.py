"""The master's HTTP API: PUT /create."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from links import services
from shortener_project.metrics import instrumented

logger = logging.getLogger(__name__)

# Room for the longest accepted longurl, escaped in JSON (up to 6 bytes a character for \\uXXXX),
# plus the object around it.
MAX_BODY_BYTES = settings.SHORTENER_MAX_URL_LENGTH * 6 + 1024


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive (it answers). Restart it if this fails."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to serve: PostgreSQL answers. (Kafka being down does not make the master unready:
    /create then answers 503 itself, and the admin still works.)"""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return JsonResponse({"status": "not ready", "reason": f"database unavailable: {exc}"},
                            status=503)
    return JsonResponse({"status": "ready"})


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status, headers=headers or None)


def _link_create_retrying(longurl: str, expires_at: datetime | None) -> services.LinkCreated:
    """link_create, tried once more on a fresh connection if the kept one died (PostgreSQL
    restarted since: connections are not health-checked before each request, to save a round
    trip). link_create is idempotent, so the second try cannot make a second link."""
    try:
        return services.link_create(longurl=longurl, expires_at=expires_at)
    except DatabaseError:
        if connection.in_atomic_block or connection.is_usable():
            raise  # the database itself refused: no point retrying
        connection.close()
        return services.link_create(longurl=longurl, expires_at=expires_at)


# A JSON API with no cookie authentication: CSRF protection guards cookie-authenticated forms
# and has nothing to protect here.
@csrf_exempt
@instrumented("create")
def create(request: HttpRequest) -> JsonResponse:
    if request.method != "PUT":
        return _error(405, f"method {request.method} is not allowed; use PUT", Allow="PUT")
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _error(400, "invalid Content-Length")
    if length > MAX_BODY_BYTES:
        return _error(400, f"request body is larger than {MAX_BODY_BYTES} bytes")
    body = request.body
    if len(body) > MAX_BODY_BYTES:  # chunked bodies carry no Content-Length
        return _error(400, f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return _error(400, 'request body is empty; send JSON {"longurl": "https://..."}')
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        return _error(400, "request body is not UTF-8")
    except json.JSONDecodeError as exc:
        return _error(400, f"request body is not valid JSON: {exc.msg}")
    if not isinstance(payload, dict):
        return _error(400, 'request body must be a JSON object: {"longurl": "https://..."}')
    if "longurl" not in payload:
        return _error(400, "longurl is missing")
    try:
        longurl = services.longurl_validate(payload["longurl"])
        # Optional; without it the answer is exactly the homework's.
        expires_at = services.expires_at_parse(payload.get("expires_at"))
    except ValidationError as exc:
        return _error(400, exc.messages[0])

    try:
        result = _link_create_retrying(longurl, expires_at)
    except services.LinkDisabled:
        # The same longurl asked for again after a takedown: not re-issued (under the old
        # tinyurl or a new one); an admin can put the link back.
        return _error(410, "this URL's link was taken down by an administrator")
    except services.LinkExpired as exc:
        # Its link is shared by everyone who shortened this URL, and it has ended; an admin can
        # give it a new expiry.
        return _error(410, f"this URL's link expired at {exc.link.expires_at.isoformat()}")
    except services.LinkPublishError:
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
    except DatabaseError as exc:
        logger.error("database unavailable during /create: %s", exc)
        return _error(503, "the database is unavailable; retry shortly", **{"Retry-After": "5"})
    body = {"longurl": result.link.longurl, "tinyurl": result.link.tinyurl}
    if result.link.expires_at is not None:
        # The link's own expiry, which for an existing link may differ from the one asked for.
        body["expires_at"] = result.link.expires_at.astimezone(dt_timezone.utc).isoformat()
    return JsonResponse(body, status=200)
