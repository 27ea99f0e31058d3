"""The replica's Django views: /healthz, /readyz, and GET/HEAD /<tinyurl> for `manage.py
runserver` (a served replica answers redirects in redirects/asgi.py, outside Django, with the
same functions and answers)."""

from __future__ import annotations

import logging

import redis as redis_lib
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from redirects import answers, bots, counting, selectors
from runtime.metrics import instrumented
from topics.records import RESERVED_TINYURLS

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> HttpResponse:
    """The process is alive (it answers). Restart it if this fails."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    """Ready to serve: Redis answers and accepts writes, consume_links runs (its heartbeat is
    at most SHORTENER_READY_STALE_SECONDS old) and has caught up with the links topic. A load
    balancer keeps the replica out while this is 503 (a Redis that refuses writes: see
    selectors.readiness_get; its redirects are still answered). Records consume_links could not apply are shown
    (`rejected`, `rejected_last`); Kafka being unreachable is a `note`, not a reason: every
    replica would otherwise leave service at once while each still serves what it holds."""
    try:
        state = selectors.readiness_get(redis=selectors.redis_get(),
                                        stale_seconds=settings.SHORTENER_READY_STALE_SECONDS)
    except redis_lib.RedisError as exc:
        return JsonResponse({"status": "not ready", "reason": f"Redis unavailable: {exc}"},
                            status=503)
    body: dict[str, object] = {"status": "ready" if state.ready else "not ready"}
    if state.reason:
        body["reason"] = state.reason
    if state.notes:
        body["note"] = "; ".join(state.notes)
    if state.rejected:
        body["rejected"] = state.rejected
        body["rejected_last"] = state.rejected_last
    return JsonResponse(body, status=200 if state.ready else 503)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return JsonResponse({"error": "no such link"}, status=404)


@instrumented("redirect")
def redirect(request: HttpRequest, tinyurl: str) -> HttpResponse:
    # The URL pattern admits only TINYURL_RE's shape; anything else is a 404 from the resolver
    # without a Redis round trip. A reserved name in another case (/Healthz) is no tinyurl
    # either: 404 here too, as on the ASGI path.
    if tinyurl in RESERVED_TINYURLS:
        return not_found(request)
    if request.method not in ("GET", "HEAD"):
        answer = answers.method_not_allowed(request.method)
    else:
        try:
            if request.method == "GET":
                # Lookup and count in one round trip; a link not answered with 302 counts
                # nothing.
                redis = selectors.redis_get()
                try:
                    ua = request.META.get("HTTP_USER_AGENT")
                    outcome = counting.click_call(
                        redis=redis, tinyurl=tinyurl,
                        bot=bots.user_agent_is_bot(None if ua is None else ua.encode("latin-1")))
                except redis_lib.ResponseError as exc:
                    # Redis refuses writes but reads: answered, the click counted as lost
                    # (see redirects/asgi.py).
                    outcome = selectors.link_read_uncounted(redis=redis, tinyurl=tinyurl, error=exc)
            else:  # HEAD: answered, not counted (see redirects/asgi.py)
                outcome = selectors.link_target_get(tinyurl=tinyurl)
            answer = answers.redirect_answer(outcome)
        except redis_lib.RedisError as exc:
            logger.error("Redis unavailable: %r", exc)
            answer = answers.UNAVAILABLE
    status, headers, body = answer
    return HttpResponse(body, status=status,
                        headers={name.decode(): value.decode() for name, value in headers})
