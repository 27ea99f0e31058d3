"""Writes of the master: creating links and changing their state; each change is then published
to the links topic after its commit (links/publishing.py)."""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from links import selectors, validation
from links.models import BlockedHost, Link
from links.publishing import LinkPublishError, link_publish
from topics.links import VERSION_MAX
from topics.records import RESERVED_TINYURLS, TINYURL_ALPHABET, TINYURL_LENGTH

logger = logging.getLogger(__name__)

# 62^7 = 3.5e12 codes: at a billion links a random code collides with probability 3e-4, so a
# handful of attempts always finds a free one.
TINYURL_ATTEMPTS = 8


def tinyurl_generate() -> str:
    # Random, from the OS's CSPRNG: a code says nothing about the ones issued before it.
    while True:
        code = "".join(secrets.choice(TINYURL_ALPHABET) for _ in range(TINYURL_LENGTH))
        if code not in RESERVED_TINYURLS:
            return code


@dataclass(frozen=True)
class LinkCreated:
    link: Link
    created: bool


def link_create(*, longurl: str, expires_at: datetime | None = None) -> LinkCreated:
    """The link for `longurl`, created if new, and published to the links topic.

    `longurl` is checked first (links.validation.longurl_check, the stored form is what is kept
    and compared): LongurlRefused if it is not acceptable, and nothing is written.

    Returns only once Kafka has acknowledged the link (now or earlier), so a tinyurl handed out
    always reaches the replicas. Raises LinkPublishError if Kafka does not answer in time: the
    link is then committed but unpublished, the outbox re-sends it, and a retried /create for
    the same longurl returns the same tinyurl.

    expires_at (aware datetime, checked by expires_at_parse) applies to a link created now. An
    existing link is returned as it is, expiry included: its tinyurl is shared by everyone who
    shortened that longurl, so one caller must not end, or prolong, the others' link. Raises
    LinkDisabled if the existing link was taken down, LinkExpired if it has expired.
    """
    if expires_at is not None and timezone.is_naive(expires_at):
        raise ValueError("expires_at must be timezone-aware")
    longurl = validation.longurl_check(longurl)
    link = selectors.link_get_by_longurl(longurl=longurl)
    if link is not None:
        if link.disabled_at is not None:
            raise LinkDisabled(link)
        if link.expires_at is not None and link.expires_at <= timezone.now():
            raise LinkExpired(link)
        if link.published_at is None:
            link_publish(link=link)  # committed earlier, not acknowledged yet: try again now
        return LinkCreated(link=link, created=False)
    # durable: this must be the outermost transaction, so that "after commit" below really means
    # committed, not merely released into an enclosing transaction that could still roll back.
    with transaction.atomic(durable=True):
        link, created = _link_insert(longurl=longurl, expires_at=expires_at)
        # Publish only once the row is committed: a replica must never serve a link that the
        # master could still lose. An exception here (no ack) propagates out of this block
        # after the commit, and the row keeps its unpublished mark for the outbox.
        transaction.on_commit(lambda: link.published_at is None and link_publish(link=link))
    return LinkCreated(link=link, created=created)


def _link_insert(*, longurl: str, expires_at: datetime | None = None) -> tuple[Link, bool]:
    digest = selectors.longurl_digest(longurl)
    for _ in range(TINYURL_ATTEMPTS):
        tinyurl = tinyurl_generate()
        # INSERT ... ON CONFLICT DO NOTHING: a concurrent insert of the same longurl, or a
        # tinyurl that is already taken, ends as "no row inserted" instead of an error, with no
        # aborted transaction. Which of the two it was, the read below tells.
        Link.objects.bulk_create(
            [Link(tinyurl=tinyurl, longurl=longurl, longurl_sha256=digest,
                  expires_at=expires_at)],
            ignore_conflicts=True,
        )
        link = Link.objects.filter(longurl_sha256=digest).first()
        if link is not None:
            return link, link.tinyurl == tinyurl
    raise RuntimeError(f"no free tinyurl after {TINYURL_ATTEMPTS} attempts")


class LinkDisabled(Exception):
    """The longurl's link was taken down; /create does not hand it out again."""

    def __init__(self, link: Link) -> None:
        super().__init__(link.tinyurl)
        self.link = link


class LinkExpired(Exception):
    """The longurl's link has expired; /create does not hand it out again."""

    def __init__(self, link: Link) -> None:
        super().__init__(link.tinyurl)
        self.link = link


# The latest expiry accepted: far enough for any campaign, and well inside what every part
# stores (PostgreSQL timestamptz, milliseconds in the link record, Redis' TTL).
EXPIRES_AT_MAX_YEARS = 100


def expires_at_parse(value: object, *, now: datetime | None = None) -> datetime | None:
    """An expiry from the API: an ISO 8601 date and time WITH its UTC offset ("Z" or "+02:00"),
    strictly in the future, at most EXPIRES_AT_MAX_YEARS ahead; None (JSON null) for none.

    A time without an offset is refused rather than guessed: a client that sends its local
    time would otherwise see its links end hours early or late. Returns an aware datetime in
    UTC. Raises ValidationError saying what is wrong.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"expires_at must be an ISO 8601 string, not {type(value).__name__}", code="expires_at")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError("expires_at is not an ISO 8601 date and time "
                              "(e.g. 2030-01-31T18:00:00Z)", code="expires_at") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValidationError("expires_at needs a UTC offset, e.g. 2030-01-31T18:00:00Z or "
                              "2030-01-31T19:00:00+01:00", code="expires_at")
    now = now or timezone.now()
    if parsed <= now:
        raise ValidationError("expires_at must be in the future", code="expires_at")
    if parsed > now + timedelta(days=365 * EXPIRES_AT_MAX_YEARS):
        raise ValidationError(f"expires_at is more than {EXPIRES_AT_MAX_YEARS} years ahead", code="expires_at")
    return parsed.astimezone(dt_timezone.utc)


class _Keep(enum.Enum):
    KEEP = "keep"


# link_update's "leave this as it is" (None means something for expires_at: never expires).
KEEP = _Keep.KEEP


def link_update(
    *,
    link: Link,
    disabled: bool | _Keep = KEEP,
    longurl: str | _Keep = KEEP,
    expires_at: datetime | None | _Keep = KEEP,
) -> Link:
    """Change what replicas must hold for a link, and publish the new state to every replica.

    The one path for every state change of an existing link (take down, put back, a new target,
    an expiry): the changes, a bumped state_version and a cleared outbox mark commit together
    (the row locked meanwhile); then the new state is published and the call waits for it as
    link_publish does. Nothing that equals the current value counts as a change; with no change
    nothing is bumped, and a link still unpublished is sent again.

    disabled: True takes the link down (replicas answer 404), False puts it back.
    longurl: a new target, checked by links.validation.longurl_check (LongurlRefused if it is not
        acceptable); ValidationError if another link already has it (a longurl has one
        tinyurl). Either way nothing is changed or published.
    expires_at: an aware datetime after which replicas answer 410 Gone; None: never.
    Returns the link as committed (`link` is refreshed too). Raises LinkPublishError if Kafka
    did not acknowledge: the change is committed, and the outbox relay sends it later, so it
    always reaches the replicas.
    """
    if isinstance(expires_at, datetime) and timezone.is_naive(expires_at):
        raise ValueError("expires_at must be timezone-aware")
    if longurl is not KEEP:
        longurl = validation.longurl_check(longurl)
    with transaction.atomic(durable=True):
        row = Link.objects.select_for_update().get(pk=link.pk)
        changed = []
        if disabled is not KEEP and (row.disabled_at is not None) != disabled:
            row.disabled_at = timezone.now() if disabled else None
            changed.append("disabled_at")
        if longurl is not KEEP and longurl != row.longurl:
            digest = selectors.longurl_digest(longurl)
            if Link.objects.filter(longurl_sha256=digest).exclude(pk=row.pk).exists():
                raise ValidationError("another link already has this longurl")
            row.longurl, row.longurl_sha256 = longurl, digest
            changed += ["longurl", "longurl_sha256"]
        if expires_at is not KEEP and expires_at != row.expires_at:
            row.expires_at = expires_at
            changed.append("expires_at")
        if changed:
            if row.state_version >= VERSION_MAX:
                # Only a forged record in the links topic gets a link here (the audit raised
                # the version above it): no later state could reach a replica, so the change is
                # refused rather than reported as made. Kafka ACLs on the topic are the remedy.
                raise ValidationError(
                    f"link {row.tinyurl} is at the largest state version ({VERSION_MAX}): no "
                    "change of it can reach the replicas; restrict who may write to the links "
                    "topic (a forged record put it there)")
            row.state_version += 1
            row.published_at = None
            row.save(update_fields=[*changed, "state_version", "published_at"])
    # Committed (durable: this is the outermost transaction). Publish only now, so a replica
    # never holds a state the master could still roll back.
    link.refresh_from_db()
    if changed or row.published_at is None:
        link_publish(link=row)
        link.published_at = row.published_at
    return row


def link_set_disabled(*, link: Link, disabled: bool) -> None:
    """Take a link down (disabled=True) or put it back, on every replica: link_update."""
    link_update(link=link, disabled=disabled)


@dataclass(frozen=True)
class TakedownResult:
    done: int  # taken down, and every replica told (Kafka acknowledged)
    pending: int  # taken down here; the outbox tells the replicas when Kafka is back


def links_take_down_blocked(*, blocked: Iterable[BlockedHost]) -> TakedownResult:
    """Take down every enabled link to a host of `blocked` or its subdomains, through the same
    versioned takedown as the admin's "Take down" (link_set_disabled)."""
    done = pending = 0
    for link in list(selectors.links_to_hosts(hosts=[b.host for b in blocked])):
        try:
            link_set_disabled(link=link, disabled=True)
            done += 1
        except LinkPublishError:
            pending += 1
    logger.info("took down %s link(s) to blocked hosts (%s left for the outbox)", done + pending,
                pending)
    return TakedownResult(done=done, pending=pending)
