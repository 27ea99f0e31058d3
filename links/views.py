"""The master's HTTP API in Django: PUT /create (its checks and answers: links/create_checks.py;
under the deployed server, /create is answered by the lean path in front of Django,
links/asgi.py, and reaches this view only when that path hands it over), health and readiness."""

from __future__ import annotations

import logging

from django.db import DatabaseError, InterfaceError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from links import create_checks, services
from links.create_checks import DATABASE_UNAVAILABLE, Answer, db_retrying
from runtime.metrics import instrumented

logger = logging.getLogger(__name__)


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


def _response(answer: Answer) -> JsonResponse:
    return JsonResponse(answer.body, status=answer.status, headers=dict(answer.headers) or None)


# A JSON API with no cookie authentication: CSRF protection guards cookie-authenticated forms
# and has nothing to protect here.
@csrf_exempt
@instrumented("create")
def create(request: HttpRequest) -> JsonResponse:
    try:
        return _response(_create(request))
    except (DatabaseError, InterfaceError) as exc:
        # Any step that reads the database (an API key, the blocklist, the link) while
        # PostgreSQL is unreachable: the same answer as for the link itself.
        logger.error("database unavailable during /create: %s", exc)
        return _response(DATABASE_UNAVAILABLE)


def _create(request: HttpRequest) -> Answer:
    refusal = create_checks.method_refusal(request.method) or create_checks.admission_refusal(
        authorization=request.headers.get("Authorization"),
        remote_addr=request.META.get("REMOTE_ADDR", ""),
        forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR", ""))
    if refusal is not None:
        return refusal
    item = create_checks.item_parse(request.META.get("CONTENT_LENGTH"), lambda: request.body)
    if isinstance(item, Answer):
        return item
    # A batch of one, on this request's thread and connection.
    outcome = db_retrying(lambda: services.links_create_many([item])[0])
    return create_checks.outcome_answer(outcome)
