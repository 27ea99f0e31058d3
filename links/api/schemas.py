"""The JSON API's request and response bodies (pydantic, through django-ninja's Schema): the
OpenAPI document is generated from these, so it cannot drift from what the handlers answer."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ninja import Schema
from pydantic import ConfigDict, Field

State = Literal["active", "disabled", "expired"]


class ErrorBody(Schema):
    code: str = Field(description="What went wrong, for programs: e.g. auth_missing, not_found, "
                                  "rate_limited, or the longurl rule that refused the target.")
    message: str = Field(description="What went wrong, for people.")
    field: str | None = Field(description="The input field at fault (e.g. longurl, expires_at, "
                                          "cursor); null when the request as a whole is.")


class Error(Schema):
    """Every error of /api/v1/, whatever its status."""

    error: ErrorBody


class Waiting(Schema):
    """Read-your-writes across replicas (links/propagation_wait.py)."""

    # A field this API does not know is refused (422), not dropped: {"alias": ...} on a change
    # would otherwise answer 200 and change nothing.
    model_config = ConfigDict(extra="forbid")

    wait: Literal["replicas"] | None = Field(
        None, description="\"replicas\": answer only when every ready replica serves the "
                          "link's new state (then the link is answered as without it, with its "
                          "propagation), or, after wait_timeout, 202 with the per-replica "
                          "state. Absent: answer once Kafka acknowledged the state.")
    wait_timeout: float | None = Field(
        None, ge=0, le=3600,
        description="Seconds to wait at most (default SHORTENER_PROPAGATION_WAIT_SECONDS, 10; "
                    "capped at SHORTENER_PROPAGATION_WAIT_MAX_SECONDS, 30).")


class LinkCreate(Waiting):
    longurl: str = Field(description="The target, validated as PUT /create validates it.")
    alias: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{3,64}$",
        description="A custom alias: the tinyurl to give the link, 3-64 characters of "
                    "A-Za-z0-9_- (case-sensitive). 409 alias_reserved for a path the service "
                    "answers itself (admin, api, healthz, ..., in any case), 409 alias_taken "
                    "if another longurl's link has it; the same alias for the same longurl "
                    "answers that link (200). Absent: the longurl's generated tinyurl (7 "
                    "characters of a-zA-Z0-9).")
    expires_at: str | None = Field(
        None, description="ISO 8601 with a UTC offset, in the future, at most 100 years ahead; "
                          "null or absent: never expires. An existing link keeps its own.")
    password: str | None = Field(
        None, min_length=1, max_length=128,
        description="Protect the new link with this password: replicas answer a password form "
                    "instead of the redirect. Only a salted hash is kept; never echoed. 409 "
                    "password_conflict if the longurl (or alias) already has a link without "
                    "this password (choose an alias, or PATCH that link).")


class LinkChange(Waiting):
    """Only the fields sent change; expires_at null: never expires."""

    longurl: str | None = Field(None, description="A new target (validated as on create).")
    expires_at: str | None = Field(
        None, description="A new expiry as on create; null: never expires; absent: unchanged.")
    password: str | None = Field(
        None, max_length=128,
        description="A new password (cookies given for the old one end); \"\" or null: "
                    "remove it; absent: unchanged. Never echoed.")


class Link(Schema):
    tinyurl: str
    alias: bool = Field(description="The tinyurl is a custom alias (else generated).")
    protected: bool = Field(description="The link has a password: replicas answer a password "
                                        "form before the redirect.")
    longurl: str = Field(description="In the form it is stored and sent in Location.")
    state: State = Field(description="active: replicas redirect; disabled: taken down (404); "
                                     "expired: past expires_at (410).")
    created_at: datetime
    expires_at: datetime | None
    disabled_at: datetime | None
    published: bool = Field(description="Kafka acknowledged the link's current state (else "
                                        "the outbox sends it when Kafka is back).")
    state_version: int
    clicks: int = Field(description="Clicks in total, as the master last folded them.")
    clicks_human: int = Field(description="Of them, redirects of browsers (clicks - bot).")
    clicks_bot: int = Field(description="Of them, redirects whose User-Agent is a known "
                                        "crawler, preview bot or mail scanner, or is missing "
                                        "(docs/delivery-guarantees.md).")


class ReplicaPropagation(Schema):
    node: str
    ready: bool = Field(description="Counted in \"of M\": ready and heard from lately.")
    serves: bool = Field(description="Its applied position is past the link's current record.")
    reported_at: datetime | None = Field(
        description="The broker's time of its first status showing it serves the current state; "
                    "null while it does not (or that report was pruned).")
    seconds: float | None = Field(description="From the state's change to reported_at.")
    exact: bool = Field(description="False: reported_at is an upper bound (thinned samples).")


class Propagation(Schema):
    """Where the link's current state is served: \"live on N of M replicas\"."""

    summary: str
    live: int
    of: int
    complete: bool = Field(description="Every ready replica (at least one) serves it.")
    state_version: int
    changed_at: datetime = Field(description="When the current state was made.")
    partition: int | None = Field(description="The links-topic record of the current state; "
                                              "null while Kafka has not acknowledged it.")
    offset: int | None
    error: str | None = Field(description="Why the replicas' statuses could not be read.")
    replicas: list[ReplicaPropagation]


class WaitResult(Schema):
    waited: bool = Field(description="False: not waited, too many waits in flight (`refused`).")
    seconds: float = Field(description="How long the call waited.")
    refused: str | None


class ClickKinds(Schema):
    total: int
    human: int
    bot: int


class LinkDetail(Link):
    clicks_by_replica: dict[str, int] = Field(description="Clicks per replica (node label).")
    clicks_kinds_by_replica: dict[str, ClickKinds] = Field(
        description="Per replica, its clicks in total and how many were humans' and bots'.")
    propagation: Propagation


class LinkWaited(Link):
    """A created or changed link; with `propagation` and `wait` when the call waited."""

    propagation: Propagation | None = None
    wait: WaitResult | None = None


class LinkPage(Schema):
    items: list[Link]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: "
                                                "this was the last.")


class BulkLink(Schema):
    """An item's link: what PUT /create answers for it alone."""

    longurl: str
    tinyurl: str
    expires_at: datetime | None = None


class BulkError(Schema):
    """An item's refusal: the error, with the status PUT /create would have answered."""

    error: ErrorBody
    status: int
    retry_after: float | None = Field(None, description="Seconds, for status 429.")


class BulkAnswer(Schema):
    results: list[BulkLink | BulkError] = Field(description="One per item, in input order.")


class ClickSeries(Schema):
    unit: Literal["hour", "day"]
    slots: list[datetime] = Field(description="Each slot's start (UTC), oldest first.")
    total: list[int] = Field(description="Clicks per slot, every replica.")
    by_replica: dict[str, list[int]] = Field(description="Clicks per slot, per replica.")


class Replica(Schema):
    node: str
    state: Literal["ready", "not ready", "missing"]
    reason: str = Field(description="Why it is not ready; empty when ready.")
    last_seen: datetime = Field(description="The broker's time of its newest status.")
    seen_seconds_ago: float
    lag: int | None = Field(description="Links-topic records not applied yet; null: unknown.")
    links_position: int | None
    links_end: int | None
    clicks_recent: int = Field(description="Clicks reported since `clicks_since`.")
    redirects: int | None
    incarnation: str | None
    version: str


class Replicas(Schema):
    replicas: list[Replica]
    clicks_since: datetime
    rejected: int = Field(description="Records of the replicas topic no status can be read "
                                      "from (skipped).")
