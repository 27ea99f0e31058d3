"""The JSON API's errors, all in one shape, `{"error": {"code", "message", "field"}}`, and its
authentication (the API keys of PUT /create) and rate limit (links/ratelimit.py's limiter).

Every path to an error answer goes through here: our own refusals (ApiError), django-ninja's
(its request validation: 422; an unreadable body: 400; a method an operation does not have:
405), PostgreSQL unavailable (503), and any other path under /api/v1/ (404)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Router
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.operation import PathView
from ninja.security import HttpBearer

from links import protection, ratelimit
from links.create_checks import db_retrying
from links.models import ApiKey

logger = logging.getLogger(__name__)

RETRY_AFTER = ("Retry-After", "5")
# RFC 6750 §3: a 401 names the scheme; "invalid_token" for a key that was sent and refused.
CHALLENGE = ("WWW-Authenticate", 'Bearer realm="api"')
CHALLENGE_INVALID = ("WWW-Authenticate", 'Bearer realm="api", error="invalid_token"')


class ApiError(Exception):
    """An error answer: status, code, message, the field at fault (None: the request)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = tuple(headers)


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: Iterable[tuple[str, str]] = ()) -> JsonResponse:
    return JsonResponse(error_body(code, message, field), status=status,
                        headers=dict(headers) or None)


def not_found(request: HttpRequest, *args: object, **kwargs: object) -> JsonResponse:
    """Any path under /api/v1/ that is no operation (the URLconf's last pattern there)."""
    return error_response(404, "no_such_path", f"no operation at {request.path}; see "
                          "/api/v1/docs")


# --- authentication and rate limits ----------------------------------------------------------


class ApiKeyAuth(HttpBearer):
    """A valid API key (the admin's "API keys"), required on every operation whatever
    SHORTENER_CREATE_AUTH says: the API reads and changes every link, not only creates.
    Missing, malformed, unknown or revoked: 401 (RFC 6750: invalid_token is a 401).

    counted: one request of the key against the rate limit's "api" budget; creates are counted
    per link in the "create" budget by their handlers instead (so the same limit as PUT
    /create holds whichever path makes the links)."""

    def __init__(self, *, counted: bool = True) -> None:
        super().__init__()
        self.counted = counted

    def __call__(self, request: HttpRequest) -> ApiKey:
        authorization = request.headers.get("Authorization")
        if not authorization:
            raise ApiError(401, "auth_missing", "an API key is required: send "
                           "'Authorization: Bearer <key>'", headers=[CHALLENGE])
        try:
            key = db_retrying(lambda: protection.create_authenticate(authorization=authorization))
        except protection.AuthMissing as exc:
            raise ApiError(401, "auth_missing", str(exc), headers=[CHALLENGE]) from None
        except protection.AuthRefused as exc:
            raise ApiError(401, "auth_refused", str(exc), headers=[CHALLENGE_INVALID]) from None
        assert key is not None  # a header was sent: a key, or one of the refusals above
        if self.counted:
            rate_limit(request, key, cost=1, scope="api")
        return key

    def authenticate(self, request: HttpRequest, token: str) -> None:  # pragma: no cover
        raise NotImplementedError  # __call__ does it all


def client_of(request: HttpRequest, key: ApiKey) -> str:
    return protection.client_identity(request=request, key=key)


def rate_limit(request: HttpRequest, key: ApiKey, *, cost: int, scope: str) -> None:
    """Count `cost` requests of the key's client; ApiError 429 (Retry-After) past its limit."""
    if cost == 1:
        retry_after = ratelimit.create_rate_limit_hit(client=client_of(request, key), scope=scope)
    else:
        granted, retry_after = ratelimit.create_rate_limit_take(
            client=client_of(request, key), cost=cost, scope=scope)
        retry_after = None if granted == cost else retry_after
    if retry_after is not None:
        raise ApiError(429, "rate_limited", f"too many requests from this client; retry in "
                       f"{retry_after:.0f} s", headers=[("Retry-After", f"{retry_after:.0f}")])


# --- handlers ----------------------------------------------------------------------------------


def _validation_field(loc: Iterable[object]) -> str | None:
    # ("body", "payload", "longurl") or ("query", "unit"): the field's own name, as sent.
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "payload", "filters")]
    return ".".join(parts) or None


def handlers_install(api: NinjaAPI) -> None:
    """Every error of `api` in the one shape."""

    def api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    def validation(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
        first = exc.errors[0] if exc.errors else {}
        field = _validation_field(first.get("loc", ()))
        message = str(first.get("msg", "invalid input"))
        return error_response(422, "invalid", f"{field}: {message}" if field else message, field)

    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        # django-ninja's own: a body it cannot parse (400), an unauthenticated call (401).
        if isinstance(exc, AuthenticationError):
            return error_response(401, "auth_missing", "an API key is required: send "
                                  "'Authorization: Bearer <key>'", headers=[CHALLENGE])
        code = "json" if exc.status_code == 400 else "http_error"
        return error_response(exc.status_code, code, str(exc.message))

    def http404(request: HttpRequest, exc: Http404) -> HttpResponse:
        return error_response(404, "not_found", str(exc) or "not found")

    def database(request: HttpRequest, exc: Exception) -> HttpResponse:
        logger.error("database unavailable during %s %s: %s", request.method, request.path, exc)
        return error_response(503, "database_unavailable",
                              "the database is unavailable; retry shortly", headers=[RETRY_AFTER])

    api.add_exception_handler(ApiError, api_error)
    api.add_exception_handler(NinjaValidationError, validation)
    api.add_exception_handler(HttpError, http_error)
    api.add_exception_handler(Http404, http404)
    # PostgreSQL unreachable or gone away: OperationalError (psycopg2's for a lost connection),
    # InterfaceError (a connection already closed). Not every DatabaseError: a DataError or an
    # IntegrityError is a request this code let through that it should have refused, a bug to
    # see as a 500, not an outage to retry.
    api.add_exception_handler(OperationalError, database)
    api.add_exception_handler(InterfaceError, database)


class _PathView(PathView):
    def clone(self) -> PathView:
        # django-ninja binds a copy of each path to the API, made as a plain PathView.
        cloned = super().clone()
        cloned.__class__ = _PathView
        return cloned

    def _not_allowed(self) -> HttpResponse:
        allowed = sorted({m for op in self.operations for m in op.methods})
        return error_response(405, "method_not_allowed", "this path answers only "
                              + ", ".join(allowed), headers=[("Allow", ", ".join(allowed))])


class ApiRouter(Router):
    """A Router whose paths answer a method they lack (405) in the API's error shape."""

    def add_api_operation(self, path: str, methods: list[str], view_func, **kwargs) -> None:
        self.path_operations.setdefault(path, _PathView())
        super().add_api_operation(path, methods, view_func, **kwargs)
