"""The replica's Django views: /healthz, /readyz, and GET/HEAD /<tinyurl> for `manage.py
runserver` (a served replica answers redirects in redirects/asgi.py, outside Django, with the
same functions and answers)."""

from __future__ import annotations

import logging

import redis as redis_lib
from django.http import HttpRequest, HttpResponse, JsonResponse

from redirects import answers, clicks, keys, selectors
from shortener_project.metrics import instrumented

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> HttpResponse:
    """The process is alive (it answers). Restart it if this fails."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    """Ready to serve: Redis answers and consume_links has caught up with the links topic as it
    stood when it (re)started. A load balancer keeps the replica out while this is 503."""
    try:
        ready = selectors.redis_get().get(keys.links_ready_key()) == b"1"
    except redis_lib.RedisError as exc:
        return JsonResponse({"status": "not ready", "reason": f"Redis unavailable: {exc}"},
                            status=503)
    if not ready:
        return JsonResponse({"status": "not ready",
                             "reason": "consume_links has not caught up with the links topic"},
                            status=503)
    return JsonResponse({"status": "ready"})


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return JsonResponse({"error": "no such link"}, status=404)


@instrumented("redirect")
def redirect(request: HttpRequest, tinyurl: str) -> HttpResponse:
    # The URL pattern admits only 7 characters of [a-zA-Z0-9]; anything else is a 404 from the
    # resolver without a Redis round trip.
    if request.method not in ("GET", "HEAD"):
        answer = answers.method_not_allowed(request.method)
    else:
        try:
            if request.method == "GET":
                outcome = clicks.link_click(redis=selectors.redis_get(), tinyurl=tinyurl)
            else:  # HEAD: answered, not counted (see redirects/asgi.py)
                outcome = selectors.link_target_get(tinyurl=tinyurl)
            answer = answers.redirect_answer(outcome)
        except redis_lib.RedisError as exc:
            logger.error("Redis unavailable: %r", exc)
            answer = answers.UNAVAILABLE
    status, headers, body = answer
    return HttpResponse(body, status=status,
                        headers={name.decode(): value.decode() for name, value in headers})
