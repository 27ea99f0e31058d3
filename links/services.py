"""Writes of the master: creating links, changing their state, and publishing them to the links
topic (every record the link's whole current state with its version, schema 2)."""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import RecordMetadata

from links import selectors, validation
from links.models import BlockedHost, Link
from runtime.metrics import LINKS_PUBLISHED
from topics.links import (
    VERSION_MAX,
    link_record_encode,
    links_topic,
    producer_get,
    producer_reset,
    publish_wait_seconds,
)
from topics.records import RESERVED_TINYURLS, TINYURL_ALPHABET, TINYURL_LENGTH

logger = logging.getLogger(__name__)

# 62^7 = 3.5e12 codes: at a billion links a random code collides with probability 3e-4, so a
# handful of attempts always finds a free one.
TINYURL_ATTEMPTS = 8


class LinkPublishError(Exception):
    """Kafka did not acknowledge a link in time; the link stays marked unpublished."""


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


def _record(link: Link) -> tuple[bytes, bytes]:
    """The (key, value) of the link's current state, schema 2 (topics/)."""
    return link_record_encode(
        tinyurl=link.tinyurl,
        version=link.state_version,
        longurl=link.longurl,
        created_at=link.created_at,
        disabled=link.disabled_at is not None,
        expires_at=link.expires_at,
    )


def _send(link: Link) -> tuple[KafkaProducer, Future]:
    """Send the link's current state as a record (a takedown too: "disabled", never a
    tombstone). Returns the producer used and the record's future. Raises KafkaError if Kafka
    cannot be reached or the topic's metadata is not found within the publish timeout."""
    key, value = _record(link)
    producer = producer_get()
    return producer, producer.send(links_topic(), key=key, value=value)


def _delivery_wait(producer: KafkaProducer, future: Future, *, timeout: float) -> RecordMetadata:
    """Wait up to `timeout` seconds for a record's acknowledgement; returns it (kafka-python's
    RecordMetadata: the partition and offset Kafka gave the record).

    Raises KafkaError if it did not come. If the producer itself failed the record (its
    delivery timeout, or an error it does not retry), the producer is discarded: one whose
    records expired during an outage does not always recover when Kafka comes back
    (kafka-python 3.0.12, idempotent producer; seen in the namespace fault tests, scenario 3).
    If only this wait ran out, the record is still in flight and the producer is kept: closing
    it would fail every other request's records in flight with it.
    """
    try:
        return future.get(timeout=timeout)
    except KafkaError:
        if future.is_done:
            producer_reset(producer)
        raise


def link_publish(*, link: Link) -> None:
    """Send the link's current state, wait for the acknowledgement, mark it published.

    Waits at most the producer's delivery timeout (SHORTENER_PUBLISH_TIMEOUT) plus a second
    (publish_wait_seconds); on a fresh producer, reaching Kafka and then the topic's
    metadata come first, each bounded by the same timeout. Raises LinkPublishError if Kafka did
    not acknowledge: the link then stays marked unpublished and the outbox relay sends it. The
    mark is set only if the version sent is still the link's current one.
    """
    version = link.state_version
    try:
        producer, future = _send(link)
        acked = _delivery_wait(producer, future, timeout=publish_wait_seconds())
    except KafkaError as exc:
        LINKS_PUBLISHED.labels("failed").inc()
        logger.warning("link %s (version %s) not acknowledged by Kafka: %r", link.tinyurl,
                       version, exc)
        raise LinkPublishError(str(exc) or type(exc).__name__) from exc
    LINKS_PUBLISHED.labels("acked").inc()
    _links_mark_published([(link.pk, version, acked.partition, acked.offset)])
    link.published_at = timezone.now()


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


def _links_mark_published(sent: list[tuple[int, int, int, int]]) -> None:
    """Mark links published: (pk, state_version that was sent, partition, offset of the
    acknowledged record) tuples. The partition and offset are kept with the mark for the links
    audit (Link.published_offset).

    Committed on its own: the mark must only ever follow the acknowledgement, never precede it.
    A link whose state changed since (another version) stays unpublished for the outbox. A
    link already marked keeps its published_at, and takes the newest acknowledged offset: after
    the topic is recreated and every link sent again (republish_links), the offsets must be
    the new topic's, not the old one's.
    """
    if not sent:
        return
    pks, versions, partitions, offsets = (list(column) for column in zip(*sent))
    with transaction.atomic(), connection.cursor() as cursor:
        # The mark need not wait for its own fsync: should PostgreSQL crash and lose it, the
        # outbox re-sends the link, which is harmless (replicas ignore a version they have).
        # That takes a disk flush off every /create; the link's row was committed durably.
        # One round trip for both statements (the ORM would send them apart), one UPDATE for
        # the whole chunk (unnest pairs the arrays row by row).
        cursor.execute(
            "SET LOCAL synchronous_commit = off; "
            "UPDATE links_link AS l SET published_at = COALESCE(l.published_at, %s), "
            "published_partition = s.partition, published_offset = s.record_offset "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::bigint[]) "
            "AS s(id, version, partition, record_offset) "
            "WHERE l.id = s.id AND l.state_version = s.version",
            [timezone.now(), pks, versions, partitions, offsets],
        )


def links_publish(*, links: Iterable[Link], batch: int = 2000) -> tuple[int, int]:
    """Send many links' current states, pipelined; mark the acknowledged ones published.

    Returns (sent, failed). A link counts as sent once Kafka acknowledged it; it is marked
    published only if the version sent is still current (see _links_mark_published).
    """
    sent = failed = 0
    chunk: list[tuple[Link, int, KafkaProducer, Future]] = []

    def drain() -> None:
        nonlocal sent, failed
        acked = []
        for link, version, producer, future in chunk:
            try:
                # All of the chunk is in flight at once: the first wait covers most of the rest.
                metadata = _delivery_wait(producer, future, timeout=publish_wait_seconds())
                acked.append((link.pk, version, metadata.partition, metadata.offset))
            except KafkaError as exc:
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
            chunk.append((link, link.state_version, *_send(link)))
        except KafkaError as exc:
            failed += 1
            logger.warning("link %s could not be sent: %r", link.tinyurl, exc)
        if len(chunk) >= batch:
            drain()
    drain()
    return sent, failed


def links_publish_pending(*, min_age: timedelta = timedelta(seconds=0)) -> tuple[int, int]:
    """The outbox relay: send every link that Kafka has not acknowledged yet.

    `min_age` leaves alone links whose /create is probably still waiting for its own ack;
    sending them too would only make a harmless duplicate.
    """
    created_before = timezone.now() - min_age if min_age else None
    return links_publish(links=selectors.links_unpublished(created_before=created_before))


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
