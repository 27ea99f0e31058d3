"""The master reads its own links topic and makes the newest record of every link its current state.

Versions make replicas that hold a newer state ignore an older record. But compaction keeps the
record with the highest *offset* of each key, not the highest version: if an older state lands
after the newest one (a slow republish, a /create that read the row before a takedown, a record
re-produced by hand), the topic ends up holding the older state, and a replica that reads the
topic from the start later (a new one, or one whose Redis was wiped) would apply it. So the
outbox relay (`republish_links --pending --follow`) also reads the topic, and for the newest
record of each link in a batch:
  * the link's current version, same state: nothing to do;
  * an older version, a tombstone or a record it cannot read, at an offset before the one where
    Kafka put the current state's record (Link.published_offset): nothing to do either. The
    link changed after this record was sent; its current state already follows it in the
    topic, and the audit will read it. (The audit fetches a batch and reads the rows a moment
    later: a change committed and published in between is no fault of the topic.) Likewise
    while the current state is not yet acknowledged: the relay sends it anyway, after every
    record already in the topic;
  * the same at a later offset (a stale copy that landed after the current state; a schema-1
    record from before the upgrade; garbage), or where the current state's offset is not
    known: the link is marked unpublished, so the relay sends its current state again, which
    lands after it;
  * a newer version than PostgreSQL holds, or the same version with another state (the
    database was restored from an older backup): the link's version is raised above the
    topic's and it is marked unpublished, so replicas, which ignore versions they have already
    passed, take the master's state again.
The position and these marks commit in one PostgreSQL transaction, as consume_clicks does.

If the links topic was deleted and created again (topics/loop.py notices it), it
holds none of the links' records: the audit says so (ERROR, shortener_consumer_topic_recreated_
total), marks every link unpublished, so that the relay sends every current state to the new
topic, and audits the new topic from its start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import msgspec
from django.db import transaction
from kafka import KafkaConsumer

from links.models import Link
from links.positions import PostgresPositionStore, position_lock, positions_restart
from links.publishing import link_record_of  # the encoding the master publishes
from runtime.metrics import LINKS_AUDITED, records_rejected_report
from topics.batching import Record
from topics.links import (
    VERSION_MAX,
    LinkRecord,
    link_record_decode,
    links_audit_consumer_make,
    links_topic,
)
from topics.loop import Loop
from topics.records import RESERVED_TINYURLS, MessageError, Rejected, tinyurl_ok

logger = logging.getLogger(__name__)

# What a record must agree on with the link's row to be its current state.
_STATE_FIELDS = ("version", "state", "longurl", "expires_at", "password_hash")


@dataclass(frozen=True)
class AuditResult:
    current: int  # links whose newest record in the batch is their current state, or one that
    # their current state's record follows in the topic
    resend: int  # links whose current state is (or was already) to be sent: the record was
    # older and after the current state's, or unreadable, or the current state is pending
    rebased: int  # links whose version was raised above the topic's (database restored)
    unknown: int  # keys that are no link of this master (skipped)
    next_offset: int


def _state(record: LinkRecord) -> tuple:
    return tuple(getattr(record, name) for name in _STATE_FIELDS)


def _current_state(link: Link) -> tuple | None:
    """The state fields of the record the master would publish for `link` now, as the same
    type as the topic's records, so that the two compare field by field. None if the master's
    own record would not pass the type (then no record in the topic can be its current state)."""
    try:
        return _state(msgspec.json.decode(link_record_of(link)[1], type=LinkRecord))
    except msgspec.ValidationError as exc:
        logger.error("links audit: the current state of %s does not pass the links record "
                     "type: %s", link.tinyurl, exc)
        return None


def _current_state_follows(link: Link, where: tuple[int, int]) -> bool:
    """Whether Kafka acknowledged the link's current state at an offset after `where`
    (partition, offset) in the same partition, so the topic's newest record of the link is
    already its current state. False if the current state is unacknowledged or its offset is not
    known (published_at is cleared on every change, so published_offset then belongs to an
    older state) or in another partition (offsets of two partitions do not compare)."""
    return (link.published_at is not None and link.published_offset is not None
            and link.published_partition == where[0] and link.published_offset > where[1])


def links_audit_batch(
    *, topic: str, partition: int, records: Sequence[Record], expected_position: int | None,
    topic_id: str | None = None, rejected: Collection[int] = (),
) -> AuditResult:
    """Audit one partition's batch of links-topic records (offset order); see the module's
    docstring. Raises PositionMismatch (and changes nothing) if the stored position is not
    `expected_position`. topic_id: the topic's id, stored with the position (None: unknown).
    rejected: offsets of records to step over (the audit loop found that they cannot be
    audited); counted as skipped_malformed."""
    if not records:
        raise ValueError("empty batch")
    next_offset = records[-1].offset + 1
    stepped_over = len(records)
    records = [rec for rec in records if rec.offset not in rejected]
    stepped_over -= len(records)
    newest: dict[str, LinkRecord | None] = {}  # tinyurl -> its newest record here (None:
    # unreadable or a tombstone: either way the link's current state is sent again)
    refused: list[Rejected] = []
    where: dict[str, tuple[int, int]] = {}  # tinyurl -> (partition, offset) of that record
    for rec in records:
        try:
            tinyurl = rec.key.decode() if rec.key is not None else ""
        except UnicodeDecodeError:
            tinyurl = ""
        if not tinyurl_ok(tinyurl):
            # Not a link's key (a reserved name neither: no link can have one): nothing a
            # replica could serve, no link to send again.
            refused.append(Rejected(
                topic=rec.topic, partition=rec.partition, offset=rec.offset,
                reason="reserved" if tinyurl in RESERVED_TINYURLS else "key",
                error="key is not a tinyurl"))
            continue
        try:
            newest[tinyurl] = link_record_decode(rec.key, rec.value)
        except MessageError as exc:
            # Logged and counted after the commit below; the link's state is sent again.
            refused.append(Rejected.of(rec, exc))
            newest[tinyurl] = None
        where[tinyurl] = (rec.partition, rec.offset)
    current = resend = rebased = 0

    with transaction.atomic(durable=True):
        position = position_lock(topic=topic, partition=partition, expected=expected_position,
                                 topic_id=topic_id)
        # Rows read after the batch was fetched: a record is only ever sent after its version
        # committed, so a row here is at least as new as any record the master sent for it.
        links = Link.objects.filter(tinyurl__in=list(newest)).order_by("pk").select_for_update()
        resend_ids: list[int] = []
        for link in links:
            record = newest[link.tinyurl]
            state = _current_state(link)
            if record is not None and state is not None and _state(record) == state:
                current += 1
            elif record is None or record.version < link.state_version:
                if _current_state_follows(link, where[link.tinyurl]):
                    current += 1  # the audit reads the current state's record further on
                    continue
                # A link still unpublished keeps its mark: the relay sends it after this record.
                resend_ids.append(link.pk)
                resend += 1
            elif record.version >= VERSION_MAX:
                # Only a forged record gets here (a state changed 2**53 times): no version can
                # follow it. Producing to the links topic must be kept to the master (Kafka ACLs).
                logger.error(
                    "links audit: the topic holds version %s of %s, the largest a record may "
                    "carry: no later state can override it; if it was not the master's, restrict "
                    "who may write to the links topic and take the link down by hand",
                    record.version, link.tinyurl)
            else:
                logger.warning(
                    "links audit: the topic holds version %s of %s, the database version %s with "
                    "another state (was the database restored from a backup?); raising the "
                    "version above the topic's so that replicas take the database's state",
                    record.version, link.tinyurl, link.state_version)
                Link.objects.filter(pk=link.pk).update(
                    state_version=record.version + 1, published_at=None)
                rebased += 1
        if resend_ids:
            Link.objects.filter(pk__in=resend_ids, published_at__isnull=False).update(
                published_at=None)
        unknown = len(newest) - current - resend - rebased
        position.next_offset = next_offset
        position.applied += len(records)
        position.skipped_unknown += unknown
        position.skipped_malformed += stepped_over
        position.save()
    records_rejected_report(refused, log=logger)
    if resend or rebased:
        logger.warning("links audit: offsets up to %s: %d link(s) to send again, %d rebased",
                       next_offset - 1, resend, rebased)
    return AuditResult(current=current, resend=resend, rebased=rebased, unknown=unknown,
                       next_offset=next_offset)


class LinksAuditStore(PostgresPositionStore):
    """The audit's positions: a recreated links topic holds none of the links' records, so every
    link is also marked for the outbox relay to send again, with the positions' restart."""

    def topic_recreated(self) -> None:
        with transaction.atomic():
            positions_restart(topic=self.topic)
            marked = Link.objects.filter(published_at__isnull=False).update(published_at=None)
        logger.error("links audit: the recreated links topic holds no record of the %d "
                     "published link(s): all are marked for the outbox relay to send again",
                     marked)


def links_audit_loop_make(
    *,
    stop: threading.Event,
    consumer_factory: Callable[[], KafkaConsumer] = links_audit_consumer_make,
) -> Loop:
    """The audit loop (topics.loop.Loop): positions in PostgreSQL. A record it cannot audit is
    rejected and stepped over (topics.batching.BatchIsolation); a recreated links topic is an
    ERROR, counted, and audited again from its start. Run it with `.run()`."""
    topic = links_topic()

    def write(*, partition: int, records: Sequence[Record], expected: int | None,
              rejected: Mapping[int, str], topic_id: str | None) -> int:
        result = links_audit_batch(topic=topic, partition=partition, records=records,
                                   expected_position=expected, topic_id=topic_id,
                                   rejected=rejected.keys())
        for outcome in ("current", "resend", "rebased", "unknown"):
            LINKS_AUDITED.labels(outcome).inc(getattr(result, outcome))
        return result.next_offset

    return Loop(name="links audit", topic=topic, stop=stop, consumer_factory=consumer_factory,
                store=LinksAuditStore(topic=topic), write=write)
