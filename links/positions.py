"""What the master's two topic readers share: their position in a partition, kept in PostgreSQL
(ConsumerPosition) in the same transaction as what they wrote.

consume_clicks (links/clicks.py) and the links audit (links/audit.py) both follow
shortener_project.consuming.PositionedConsumer with PostgreSQL as the store; the parts that do
not depend on what they apply are here, once.
"""

from __future__ import annotations

from django.db import DatabaseError, connection

from links.models import ConsumerPosition
from shortener_project.consuming import PositionedConsumer, PositionMismatch


def position_lock(*, topic: str, partition: int, expected: int | None) -> ConsumerPosition:
    """Lock the partition's position row and check it is where the caller expects.

    Call inside the batch's transaction. Returns the row (unsaved, at offset 0, if the partition
    has none yet); the caller moves it and saves it with the batch. The row lock serialises
    every writer of the partition: a second process started by mistake waits here, then finds
    the position moved. Raises PositionMismatch (nothing written) if the stored position is not
    `expected` (None: no row).
    """
    position = (ConsumerPosition.objects.select_for_update()
                .filter(topic=topic, partition=partition).first())
    stored = position.next_offset if position else None
    if stored != expected:
        raise PositionMismatch(partition, expected, stored)
    if position is None:
        position = ConsumerPosition(topic=topic, partition=partition, next_offset=0)
    return position


class PostgresPositionedConsumer(PositionedConsumer):
    """A PositionedConsumer whose store is the master's PostgreSQL (ConsumerPosition rows)."""

    store_errors = (DatabaseError,)

    def positions_load(self) -> dict[int, int]:
        return dict(ConsumerPosition.objects.filter(topic=self.topic)
                    .values_list("partition", "next_offset"))

    def on_store_error(self) -> None:
        # Drop the broken connection; Django opens a new one on the next query.
        connection.close()
