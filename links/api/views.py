"""The master's JSON API, /api/v1/ (django-ninja): links (create one or many, read, list,
change, take down, put back, clicks over time) and the replicas. The OpenAPI document is at
/api/v1/openapi.json and its interactive page at /api/v1/docs (served offline: django-ninja's
Swagger UI files are static files, which whitenoise serves). docs/api.md tells the whole API.

Thin handlers: every read is a links.selectors (or links.replicas) function, every change the
links.services function the admin calls, with the same validation, so a change made here is
published to the links topic exactly as the admin's is (its outbox included). Errors, the API
key and the rate limit: links/api/errors.py."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Literal

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import NinjaAPI, Query, Status

from links import bulk, publishing, replicas, selectors, services, validation
from links.api import schemas
from links.api.errors import (
    RETRY_AFTER,
    ApiError,
    ApiKeyAuth,
    ApiRouter,
    client_of,
    handlers_install,
    rate_limit,
)
from links.clicks_csv import clicks_csv
from links.create_checks import db_retrying
from links.models import Link
from links.passwords import PasswordRefused
from links.propagation_wait import link_propagation_now, link_wait_replicas
from links.tinyurls import AliasRefused
from topics import longurls

class _Api(NinjaAPI):
    def get_openapi_schema(self, **kwargs) -> dict:
        # The clicks' CSV beside their JSON (openapi_extra would replace the JSON's entry).
        schema = super().get_openapi_schema(**kwargs)
        responses = schema["paths"]["/api/v1/links/{tinyurl}/clicks"]["get"]["responses"]
        clicks = responses[200]  # django-ninja keys responses by int until they are rendered
        clicks["content"]["text/csv"] = {"schema": {"type": "string"}}
        return schema


api = _Api(
    title="shortener", version="1", urls_namespace="api-v1", auth=ApiKeyAuth(),
    description="Links and replicas of the URL shortener's master. Every operation needs an "
                "API key (the admin's API keys): `Authorization: Bearer <key>`.",
    default_router=ApiRouter())
handlers_install(api)

# The statuses every operation may answer besides its own: no or a bad key, the rate limit,
# a request ninja cannot read or validate, the database away.
COMMON = {400: schemas.Error, 401: schemas.Error, 422: schemas.Error, 429: schemas.Error,
          503: schemas.Error}
# What a tinyurl can be (generated: 7 of [A-Za-z0-9]; room for custom aliases): anything else
# names no link, and never reaches the database (PostgreSQL refuses a NUL in text).
TINYURL = re.compile(r"[A-Za-z0-9_-]{1,64}")
UNPUBLISHED = ("the change is stored but could not be sent to the redirect servers (Kafka is "
               "unavailable); the outbox sends it when Kafka is back; retry to confirm")


def _link(tinyurl: str) -> Link:
    link = db_retrying(lambda: selectors.link_get_by_tinyurl(tinyurl=tinyurl)) \
        if TINYURL.fullmatch(tinyurl) else None
    if link is None:
        raise ApiError(404, "not_found", f"no link {tinyurl!r}", "tinyurl")
    return link


def _link_out(link: Link, now: datetime | None = None) -> dict:
    return {"tinyurl": link.tinyurl, "alias": link.alias,
            "protected": link.password_hash is not None, "longurl": link.longurl,
            "state": selectors.link_state(link, now=now or timezone.now()),
            "created_at": link.created_at, "expires_at": link.expires_at,
            "disabled_at": link.disabled_at, "published": link.published_at is not None,
            "state_version": link.state_version, "clicks": link.clicks,
            "clicks_human": link.clicks - link.bot_clicks, "clicks_bot": link.bot_clicks}


def _waited(link: Link, status: int, wait: str | None, timeout: float | None):
    """The answer of a create or change: `status` with the link, or with wait="replicas" the
    link once every ready replica serves its new state, its propagation and the wait; 202 if
    the wait ended first (the timeout, or too many waits in flight: links/propagation_wait.py).
    The state is committed and acknowledged by Kafka before this (links.services)."""
    body = _link_out(link)
    if wait is None:
        return Status(status, body)
    outcome = link_wait_replicas(link=link, timeout=timeout)
    body = {**_link_out(link), "propagation": outcome.propagation.as_dict(), "wait": {
        "waited": outcome.waited, "seconds": round(outcome.seconds, 3),
        "refused": outcome.refused}}
    return Status(status if outcome.propagation.complete else 202, body)


def _expiry(value: str | None) -> datetime | None:
    try:
        return services.expires_at_parse(value)
    except ValidationError as exc:
        raise ApiError(400, "expires_at", exc.messages[0], "expires_at") from None


def _refusal(exc: validation.LongurlRefused) -> ApiError:
    return ApiError(400, exc.code, exc.message, "longurl")


# --- create ------------------------------------------------------------------------------------


@api.post("/links", response={200: schemas.LinkWaited, 201: schemas.LinkWaited,
                              202: schemas.LinkWaited, 409: schemas.Error, 410: schemas.Error,
                              **COMMON},
          auth=ApiKeyAuth(counted=False), operation_id="link_create", tags=["links"])
def link_create(request: HttpRequest, payload: schemas.LinkCreate):
    """Create the link of a longurl: 201 with it; 200 with the existing one (the same tinyurl,
    its own expiry) if the longurl has a link, as PUT /create. 410 if that link was taken down
    or has expired. Counted against the client's /create rate limit. With "wait": "replicas",
    answered once every ready replica serves the link, or 202 after wait_timeout."""
    item = services.CreateItem(longurl=payload.longurl, expires_at=_expiry(payload.expires_at),
                               alias=payload.alias, password=payload.password)
    rate_limit(request, request.auth, cost=1, scope="create")
    outcome = db_retrying(lambda: services.links_create_many([item])[0])
    if isinstance(outcome, services.LinkCreated):
        return _waited(outcome.link, 201 if outcome.created else 200, payload.wait,
                       payload.wait_timeout)
    if isinstance(outcome, validation.LongurlRefused):
        raise _refusal(outcome)
    if isinstance(outcome, AliasRefused):
        raise ApiError(outcome.status, outcome.code, outcome.message, "alias")
    if isinstance(outcome, PasswordRefused):  # 400 invalid, 409 conflict
        raise ApiError(outcome.status, outcome.code, outcome.message, "password")
    if isinstance(outcome, services.LinkDisabled):
        raise ApiError(410, "taken_down", "this URL's link was taken down by an administrator",
                       "longurl")
    if isinstance(outcome, services.LinkExpired):
        raise ApiError(410, "expired", "this URL's link expired at "
                       f"{outcome.link.expires_at.isoformat()}", "longurl")
    if isinstance(outcome, publishing.LinkPublishError):
        raise ApiError(503, "unpublished", bulk.UNPUBLISHED, headers=[RETRY_AFTER])
    raise outcome  # the database (503, errors.py), or a programming error


BULK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "array", "maxItems": 10_000,
    "items": {"type": "object", "required": ["longurl"], "properties": {
        "longurl": {"type": "string"},
        "expires_at": {"type": ["string", "null"]},
        "alias": {"type": ["string", "null"]},
        "password": {"type": ["string", "null"]}}}}}}}}


@api.post("/links/bulk", response={200: schemas.BulkAnswer, 413: schemas.Error, **COMMON},
          auth=ApiKeyAuth(counted=False), operation_id="links_create_bulk", tags=["links"],
          openapi_extra=BULK_BODY)
def links_create_bulk(request: HttpRequest):
    """Many creates in one call, exactly as PUT /create/bulk (links/bulk.py): an array of what
    POST /links accepts (at most SHORTENER_BULK_MAX_ITEMS, in SHORTENER_BULK_MAX_BODY_BYTES);
    one result per item in input order, its link or its error with the status POST /links
    would answer; an item's refusal never affects the others. Items past the client's rate
    limit are each answered 429."""
    # Read here, not by django-ninja: bulk's reader bounds the body and keeps a bad item its
    # own refusal (links/bulk.py).
    try:
        payload = bulk.bulk_items_read(request.META.get("CONTENT_LENGTH"), request.read)
    except bulk.BulkRefused as exc:
        raise ApiError(exc.status, exc.reason, str(exc)) from None
    results = bulk.bulk_results(payload, client=client_of(request, request.auth))
    return {"results": [r if "code" not in r else {
        "error": {"code": r["code"], "message": r["error"], "field": None},
        "status": r["status"], "retry_after": r.get("retry_after")} for r in results]}


# --- read --------------------------------------------------------------------------------------


@api.get("/links/{tinyurl}", response={200: schemas.LinkDetail, 404: schemas.Error, **COMMON},
         operation_id="link_get", tags=["links"])
def link_get(request: HttpRequest, tinyurl: str):
    """A link: its target, state, times, clicks (human and bot) in total and per replica, and
    where its current state is served ("live on N of M replicas", each replica's time)."""
    link = _link(tinyurl)
    return {**_link_out(link),
            "clicks_by_replica": selectors.link_clicks_by_node(link_id=link.id),
            "clicks_kinds_by_replica": selectors.link_clicks_get(link=link).as_dict()[
                "by_replica"],
            "propagation": link_propagation_now(link=link).as_dict()}


class ListFilters(schemas.Schema):
    cursor: str | None = None
    limit: int = schemas.Field(100, ge=1, le=1000)
    state: schemas.State | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    host: str | None = schemas.Field(None, max_length=300,
                                     description="The target's host (any spelling).")


def _cursor_encode(link_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{link_id}".encode()).decode().rstrip("=")


def _cursor_decode(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = text.partition(":")
        if version != "v1" or not value.isdigit() or len(value) > 19:
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "cursor", "not a cursor this API gave", "cursor") from None


def _aware(value: datetime | None, field: str) -> datetime | None:
    """`value` in UTC. PostgreSQL takes offsets only up to 15:59 (ISO 8601 and pydantic up to
    23:59): found by schemathesis, "-17:42" was a DataError."""
    if value is None:
        return None
    if timezone.is_naive(value):
        raise ApiError(400, "naive_time", f"{field} needs a UTC offset, e.g. "
                       "2030-01-31T18:00:00Z", field)
    try:
        return value.astimezone(dt_timezone.utc)
    except OverflowError:  # year 1 east of UTC, year 9999 west of it
        raise ApiError(400, "time_range", f"{field} is out of range", field) from None


@api.get("/links", response={200: schemas.LinkPage, **COMMON}, operation_id="links_list",
         tags=["links"])
def links_list(request: HttpRequest, filters: Query[ListFilters]):
    """Links, newest first, a page at a time: pass `next_cursor` as `cursor` for the next page
    (stable while links are created). Filters: state, created_after <= created_at <
    created_before, the target's host."""
    host = None
    if filters.host is not None:
        try:
            host = longurls.host_normalize(filters.host)
        except (longurls.LongurlError, ValueError) as exc:
            raise ApiError(400, "host", f"not a host: {exc}", "host") from None
    before = _cursor_decode(filters.cursor) if filters.cursor is not None else None
    links = db_retrying(lambda: selectors.links_page(
        before_id=before, limit=filters.limit + 1, state=filters.state, host=host,
        created_after=_aware(filters.created_after, "created_after"),
        created_before=_aware(filters.created_before, "created_before")))
    more = len(links) > filters.limit
    links = links[:filters.limit]
    now = timezone.now()
    return {"items": [_link_out(link, now) for link in links],
            "next_cursor": _cursor_encode(links[-1].id) if more else None}


# --- change ------------------------------------------------------------------------------------


def _change(link: Link, wait: str | None = None, wait_timeout: float | None = None,
            **changes):
    """services.link_update with the API's answers for its refusals; then _waited."""
    try:
        changed = services.link_update(link=link, **changes)
    except validation.LongurlRefused as exc:
        raise _refusal(exc) from None
    except PasswordRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message, "password") from None
    except ValidationError as exc:
        # Another generated link has this longurl (and password, or none), or the link is at
        # the largest state version.
        if getattr(exc, "code", None) == "password_required":
            raise ApiError(400, "password_required", exc.messages[0], "password") from None
        if getattr(exc, "code", None) == "password_conflict":
            raise ApiError(409, "password_conflict", exc.messages[0], "password") from None
        raise ApiError(409, "conflict", exc.messages[0],
                       "longurl" if "longurl" in exc.messages[0] else None) from None
    except publishing.LinkPublishError:
        raise ApiError(503, "unpublished", UNPUBLISHED, headers=[RETRY_AFTER]) from None
    return _waited(changed, 200, wait, wait_timeout)


CHANGE = {200: schemas.LinkWaited, 202: schemas.LinkWaited, 404: schemas.Error,
          409: schemas.Error, **COMMON}


@api.patch("/links/{tinyurl}", response=CHANGE, operation_id="link_change", tags=["links"])
def link_change(request: HttpRequest, tinyurl: str, payload: schemas.LinkChange):
    """Change the target, the expiry and/or the password (fields absent: unchanged; a password
    "" or null removes it); published to every
    replica as a new version of the link, as the admin's changes are. 409 if another link
    has the new longurl (a longurl has one tinyurl). With "wait": "replicas", answered once
    every ready replica serves the new state, or 202 after wait_timeout."""
    link = _link(tinyurl)
    sent = payload.model_fields_set
    changes: dict = {}
    if "longurl" in sent:
        if payload.longurl is None:
            raise ApiError(400, "longurl", "longurl cannot be null", "longurl")
        changes["longurl"] = payload.longurl
    if "expires_at" in sent:
        changes["expires_at"] = _expiry(payload.expires_at)
    if "password" in sent:
        changes["password"] = payload.password or ""  # "" or null: removed
    return _change(link, payload.wait, payload.wait_timeout, **changes)


def _state_operation(action: str, *, disabled: bool, what: str):
    """POST /links/{tinyurl}/<action>, operation link_<action>: take the link down (disabled)
    or put it back. One body for both; each keeps its own operation id and description."""

    def operation(request: HttpRequest, tinyurl: str, wait: Literal["replicas"] | None = None,
                  wait_timeout: float | None = Query(None, ge=0, le=3600)):
        return _change(_link(tinyurl), wait, wait_timeout, disabled=disabled)

    # django-ninja names the operation's summary after the function, and describes it with its
    # docstring.
    operation.__name__ = operation.__qualname__ = f"link_{action}"
    operation.__doc__ = (f"{what} Idempotent.\n"
                         "wait=replicas: answered once every ready replica serves the new state, "
                         "or 202 after\nwait_timeout seconds (as on create).")
    return api.post(f"/links/{{tinyurl}}/{action}", response=CHANGE,
                    operation_id=f"link_{action}", tags=["links"])(operation)


link_takedown = _state_operation("takedown", disabled=True,
                                 what="Take the link down: every replica answers 404 for it.")
link_restore = _state_operation("restore", disabled=False,
                                what="Put a taken-down link back: every replica redirects again.")


# --- clicks and replicas -----------------------------------------------------------------------

@api.get("/links/{tinyurl}/clicks", response={200: schemas.ClickSeries, 404: schemas.Error,
                                              **COMMON},
         operation_id="link_clicks", tags=["links"])
def link_clicks(request: HttpRequest, tinyurl: str, unit: Literal["hour", "day"] = "hour",
                format: Literal["json", "csv"] = "json",  # noqa: A002 - the query's name
                slots: int | None = Query(None, ge=1, le=3660)):
    """The link's clicks per hour (default: the last 168) or per day (the last 90), split by
    replica, UTC, as JSON or CSV (text/csv). Hours older than 7 days are rolled into their
    day, so `slots` is at most 168 for hours."""
    link = _link(tinyurl)
    if slots is None:
        slots = selectors.CHART_HOURS if unit == "hour" else selectors.CHART_DAYS
    if unit == "hour" and slots > selectors.CHART_HOURS:
        raise ApiError(400, "slots", f"at most {selectors.CHART_HOURS} hours (older hours are "
                       "rolled into days)", "slots")
    series = selectors.link_clicks_series(link_id=link.id, unit=unit, slots=slots)
    if format == "csv":
        response = HttpResponse(clicks_csv(series, unit=unit),
                                content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="clicks-{link.tinyurl}.csv"'
        return response
    totals = [sum(column) for column in zip(*series.by_node.values())] or [0] * len(series.slots)
    return {"unit": unit, "slots": series.slots, "total": totals, "by_replica": series.by_node}


@api.get("/replicas", response={200: schemas.Replicas, **COMMON}, operation_id="replicas",
         tags=["replicas"])
def replicas_list(request: HttpRequest):
    """Every replica's newest status (as the admin's Replicas page): 503 if Kafka, where the
    statuses are, does not answer."""
    view = replicas.replicas_view()
    if view.error is not None:
        raise ApiError(503, "kafka_unavailable", view.error, headers=[RETRY_AFTER])
    return {"clicks_since": view.clicks_since, "rejected": view.rejected, "replicas": [{
        "node": r.node, "state": r.state, "reason": r.status.reason, "last_seen": r.last_seen,
        "seen_seconds_ago": r.seen_seconds_ago, "lag": r.lag,
        "links_position": r.status.links_position, "links_end": r.status.links_end,
        "clicks_recent": r.clicks_recent, "redirects": r.status.redirects,
        "incarnation": r.status.incarnation, "version": r.status.version}
        for r in view.replicas]}


