"""What the master's two topic readers share: their position in a partition, kept in PostgreSQL
(ConsumerPosition) in the same transaction as what they wrote.

consume_clicks (links/clicks_consumer.py) and the links audit (links/audit.py) are both
topics.loop.Loop with PostgreSQL as the position store (PostgresPositionStore); the parts that do
not depend on what they apply are here, once.
"""

from __future__ import annotations

import logging

import psycopg2.errorcodes
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction

from links.models import ConsumerPosition
from topics.batching import CONTENT_ERRORS, content_error_label
from topics.positions import PositionMismatch

logger = logging.getLogger(__name__)


def position_lock(*, topic: str, partition: int, expected: int | None,
                  topic_id: str | None = None) -> ConsumerPosition:
    """Lock the partition's position row and check it is where the caller expects.

    Call inside the batch's transaction. Returns the row (unsaved, at offset 0, if the partition
    has none yet); the caller moves it and saves it with the batch. The row lock serialises
    every writer of the partition: a second process started by mistake waits here, then finds
    the position moved. Raises PositionMismatch (nothing written) if the stored position is not
    `expected` (None: no row). topic_id: the id of the topic the batch was read from (Kafka's
    metadata; None: unknown), stored with the position so that a recreated topic is noticed.
    """
    position = (ConsumerPosition.objects.select_for_update()
                .filter(topic=topic, partition=partition).first())
    stored = position.next_offset if position else None
    if stored != expected:
        raise PositionMismatch(partition, expected, stored)
    if position is None:
        position = ConsumerPosition(topic=topic, partition=partition, next_offset=0)
    if topic_id is not None:
        position.topic_id = topic_id
    return position


def positions_restart(*, topic: str) -> int:
    """Move every stored position of `topic` back to offset 0 and forget its topic id (the
    topic was recreated: read the new one from its start). Returns the rows changed."""
    with transaction.atomic():
        return ConsumerPosition.objects.filter(topic=topic).update(next_offset=0, topic_id="")


class PostgresPositionStore:
    """A topics.positions.PositionStore in the master's PostgreSQL (ConsumerPosition rows of
    `topic`), for the loop of the calling thread's database connection."""

    store_errors = (DatabaseError,)
    # PostgreSQL's refusals of a value (class 22, data exception: a number out of range, a
    # string too long or with a NUL, a date out of range) and of a row (class 23, integrity
    # constraint violation: a CHECK such as a positive version). They come from what the batch
    # carries; connection and server failures are OperationalError/InterfaceError instead.
    # Source: PostgreSQL's "Appendix A. PostgreSQL Error Codes".
    content_errors = (*CONTENT_ERRORS, DataError, IntegrityError)
    # A position before the partition's start is reported as records lost, then read on from
    # there: totals and audits stay right for every record still held.
    records_lost_tolerated = True

    def __init__(self, *, topic: str) -> None:
        self.topic = topic

    def positions_load(self) -> dict[int, int]:
        return dict(ConsumerPosition.objects.filter(topic=self.topic)
                    .values_list("partition", "next_offset"))

    def topic_id_load(self) -> str | None:
        ids = set(ConsumerPosition.objects.filter(topic=self.topic).exclude(topic_id="")
                  .values_list("topic_id", flat=True))
        if len(ids) > 1:  # partitions written under two topics: not this one's for sure
            return ",".join(sorted(ids))
        return ids.pop() if ids else None

    def content_error_reason(self, exc: Exception) -> str:
        # PostgreSQL's condition name (e.g. numeric_value_out_of_range): a fixed set.
        code = getattr(exc.__cause__, "pgcode", None) or getattr(exc, "pgcode", None)
        if code:
            return (psycopg2.errorcodes.lookup(code) or code).lower()
        return content_error_label(exc)

    def recreated_log(self, *, name: str, topic: str, reason: str) -> None:
        logger.error("%s: the topic %s was deleted and created again (%s): dropping the "
                     "positions held for the old topic and reading the new one from the start",
                     name, topic, reason)

    def topic_recreated(self) -> None:
        positions_restart(topic=self.topic)

    def store_error_after(self) -> None:
        # Drop the broken connection; Django opens a new one on the next query.
        connection.close()
