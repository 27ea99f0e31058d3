"""Writes of the master: creating links and publishing them to the links topic."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from kafka.errors import KafkaError

from links import selectors
from links.models import Link
from shortener_project import bus
from shortener_project.messages import (
    RESERVED_TINYURLS,
    TINYURL_ALPHABET,
    TINYURL_LENGTH,
    link_record_encode,
)
from shortener_project.metrics import LINKS_PUBLISHED

logger = logging.getLogger(__name__)

# 62^7 = 3.5e12 codes: at a billion links a random code collides with probability 3e-4, so a
# handful of attempts always finds a free one.
TINYURL_ATTEMPTS = 8


class LinkPublishError(Exception):
    """Kafka did not acknowledge a link in time; the link stays marked unpublished."""


class _HttpUrlValidator(URLValidator):
    # Django's URL validation, with the project's length limit instead of its 2,048.
    max_length = settings.SHORTENER_MAX_URL_LENGTH


_url_validator = _HttpUrlValidator(schemes=["http", "https"])


def longurl_validate(value: object) -> str:
    """The longurl if it is acceptable; ValidationError saying what is wrong otherwise."""
    if not isinstance(value, str):
        raise ValidationError(f"longurl must be a string, not {type(value).__name__}")
    if not value:
        raise ValidationError("longurl is empty")
    limit = settings.SHORTENER_MAX_URL_LENGTH
    if len(value) > limit:
        raise ValidationError(f"longurl is longer than {limit} characters")
    if any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise ValidationError("longurl contains whitespace or control characters")
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in ("http", "https"):
        raise ValidationError("longurl must be an absolute http:// or https:// URL")
    try:
        _url_validator(value)
    except ValidationError:
        raise ValidationError("longurl is not a valid URL") from None
    return value


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


def link_create(*, longurl: str) -> LinkCreated:
    """The link for `longurl`, created if new, and published to the links topic.

    Returns only once Kafka has acknowledged the link (now or earlier), so a tinyurl handed out
    always reaches the replicas. Raises LinkPublishError if Kafka does not answer in time: the
    link is then committed but unpublished, the outbox re-sends it, and a retried /create for
    the same longurl returns the same tinyurl.
    """
    link = selectors.link_get_by_longurl(longurl=longurl)
    if link is not None:
        if link.disabled_at is not None:
            raise LinkDisabled(link)
        if link.published_at is None:
            link_publish(link=link)  # committed earlier, not acknowledged yet: try again now
        return LinkCreated(link=link, created=False)
    # durable: this must be the outermost transaction, so that "after commit" below really means
    # committed, not merely released into an enclosing transaction that could still roll back.
    with transaction.atomic(durable=True):
        link, created = _link_insert(longurl=longurl)
        # Publish only once the row is committed: a replica must never serve a link that the
        # master could still lose. An exception here (no ack) propagates out of this block
        # after the commit, and the row keeps its unpublished mark for the outbox.
        transaction.on_commit(lambda: link.published_at is None and link_publish(link=link))
    return LinkCreated(link=link, created=created)


def _link_insert(*, longurl: str) -> tuple[Link, bool]:
    digest = selectors.longurl_digest(longurl)
    for _ in range(TINYURL_ATTEMPTS):
        tinyurl = tinyurl_generate()
        # INSERT ... ON CONFLICT DO NOTHING: a concurrent insert of the same longurl, or a
        # tinyurl that is already taken, ends as "no row inserted" instead of an error, with no
        # aborted transaction. Which of the two it was, the read below tells.
        Link.objects.bulk_create(
            [Link(tinyurl=tinyurl, longurl=longurl, longurl_sha256=digest)],
            ignore_conflicts=True,
        )
        link = Link.objects.filter(longurl_sha256=digest).first()
        if link is not None:
            return link, link.tinyurl == tinyurl
    raise RuntimeError(f"no free tinyurl after {TINYURL_ATTEMPTS} attempts")


def _send(link: Link) -> Future:
    """Send the link's current state: its record, or a tombstone (value None) if disabled."""
    key, value = link_record_encode(
        tinyurl=link.tinyurl, version=link.state_version, longurl=link.longurl,
        created_at=link.created_at, disabled=link.disabled_at is not None,
    )
    return bus.producer_get().send(bus.links_topic(), key=key, value=value)


def link_publish(*, link: Link) -> None:
    """Send one link to the links topic, wait for the acknowledgement, mark it published."""
    try:
        _send(link).get(timeout=settings.SHORTENER_PUBLISH_TIMEOUT)
    except (KafkaError, TimeoutError) as exc:
        LINKS_PUBLISHED.labels("failed").inc()
        logger.warning("link %s not acknowledged by Kafka: %r", link.tinyurl, exc)
        # A producer whose records expired during an outage does not always recover when Kafka
        # comes back (kafka-python 3.0.12, idempotent producer: seen in the namespace fault
        # tests, scenario 3). Discard it; the next request makes a new one.
        bus.producer_reset()
        raise LinkPublishError(str(exc) or type(exc).__name__) from exc
    LINKS_PUBLISHED.labels("acked").inc()
    _links_mark_published([(link.pk, link.state_version)])
    link.published_at = timezone.now()


class LinkDisabled(Exception):
    """The longurl's link was taken down; /create does not hand it out again."""

    def __init__(self, link: Link) -> None:
        super().__init__(link.tinyurl)
        self.link = link


def link_set_disabled(*, link: Link, disabled: bool) -> None:
    """Take a link down (disabled=True) or put it back, on every replica.

    The new state and a cleared outbox mark commit together; then the state is published
    (tombstone or record). If Kafka does not acknowledge now, the outbox relay sends it later,
    so the change always reaches the replicas. Raises LinkPublishError in that case.
    """
    with transaction.atomic(durable=True):
        Link.objects.filter(pk=link.pk).update(
            disabled_at=timezone.now() if disabled else None, published_at=None,
            state_version=F("state_version") + 1)
        link.refresh_from_db()
        transaction.on_commit(lambda: link_publish(link=link))


def _links_mark_published(sent: list[tuple[int, int]]) -> None:
    """Mark links published: (pk, state_version that was sent) pairs.

    Committed on its own: the mark must only ever follow the acknowledgement, never precede it.
    A link whose state changed since (another version) stays unpublished for the outbox.
    """
    by_version: dict[int, list[int]] = {}
    for pk, version in sent:
        by_version.setdefault(version, []).append(pk)
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        for version, pks in by_version.items():
            # The mark need not wait for its own fsync: should PostgreSQL crash and lose it, the
            # outbox re-sends the link, which is harmless (a record is an idempotent upsert).
            # That takes a disk flush off every /create; the link's row was committed durably.
            # One round trip for both statements (the ORM would send them apart).
            cursor.execute(
                "SET LOCAL synchronous_commit = off; "
                "UPDATE links_link SET published_at = %s WHERE id = ANY(%s) "
                "AND state_version = %s AND published_at IS NULL",
                [now, pks, version],
            )


def links_publish(*, links: Iterable[Link], batch: int = 2000) -> tuple[int, int]:
    """Send many links, pipelined; mark the acknowledged ones. Returns (sent, failed)."""
    sent = failed = 0
    chunk: list[tuple[Link, Future]] = []

    def drain() -> None:
        nonlocal sent, failed
        acked = []
        for link, future in chunk:
            try:
                future.get(timeout=settings.SHORTENER_PUBLISH_TIMEOUT * 4)
                acked.append((link.pk, link.state_version))
            except (KafkaError, TimeoutError) as exc:
                failed += 1
                logger.warning("link %s not acknowledged by Kafka: %r", link.tinyurl, exc)
        if acked:
            _links_mark_published(acked)
        LINKS_PUBLISHED.labels("acked").inc(len(acked))
        LINKS_PUBLISHED.labels("failed").inc(len(chunk) - len(acked))
        sent += len(acked)
        chunk.clear()

    for link in links:
        try:
            chunk.append((link, _send(link)))
        except KafkaError as exc:
            failed += 1
            logger.warning("link %s could not be sent: %r", link.tinyurl, exc)
        if len(chunk) >= batch:
            drain()
    drain()
    if failed:
        bus.producer_reset()  # see link_publish: a producer that failed is not reused
    return sent, failed


def links_publish_pending(*, min_age: timedelta = timedelta(seconds=0)) -> tuple[int, int]:
    """The outbox relay: send every link that Kafka has not acknowledged yet.

    `min_age` leaves alone links whose /create is probably still waiting for its own ack;
    sending them too would only make a harmless duplicate.
    """
    created_before = timezone.now() - min_age if min_age else None
    return links_publish(links=selectors.links_unpublished(created_before=created_before))
