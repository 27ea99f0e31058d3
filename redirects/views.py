"""The replica's HTTP API: GET/HEAD /<tinyurl> -> 302 to the longurl, from Redis only."""

from __future__ import annotations

import logging

import redis as redis_lib
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse

from redirects import clicks, keys, selectors
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
        return JsonResponse(
            {"error": f"method {request.method} is not allowed; use GET"},
            status=405, headers={"Allow": "GET, HEAD"},
        )
    try:
        if request.method == "GET":
            # Lookup and count in one round trip; an unknown link counts nothing.
            target = clicks.link_click(redis=selectors.redis_get(), tinyurl=tinyurl)
        else:
            # HEAD is answered but not counted: link-preview bots and crawlers send HEAD to
            # see where a link goes, and they are not clicks.
            target = selectors.link_target_get(tinyurl=tinyurl)
    except redis_lib.RedisError as exc:
        logger.error("Redis unavailable: %r", exc)
        return JsonResponse({"error": "temporarily unavailable"}, status=503,
                            headers={"Retry-After": "1"})
    if target is None:
        return not_found(request)
    response = HttpResponseRedirect(target)
    # Every click must reach us to be counted, and a disabled link must stop working at once:
    # browsers and proxies must not keep the redirect.
    response["Cache-Control"] = "no-store"
    return response
