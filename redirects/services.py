"""Writes of a replica: applying a batch of links-topic records to Redis, atomically."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis, WatchError

from redirects import keys
from shortener_project.consuming import PositionMismatch, Record
from shortener_project.messages import MessageError, link_record_decode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    applied: int  # links stored
    removed: int  # tombstones applied
    skipped: int  # malformed records, logged and counted
    next_offset: int  # the partition's stored position after this batch


def links_apply_batch(
    *, redis: Redis, partition: int, records: Sequence[Record], expected_position: int | None
) -> BatchResult:
    """Apply records of one links-topic partition, in offset order, as one Redis transaction.

    The links, the consumer's counters and the partition's new position are written together
    (MULTI/EXEC), so after a crash at any moment Redis holds either all of the batch or none of
    it, and the stored position says exactly where to resume: nothing skipped, nothing half-done.
    Re-applying a record is harmless (each is a full upsert), which is what makes the topic's
    at-least-once delivery enough.

    `expected_position` is where this consumer believes the partition stands in Redis (None:
    nothing stored yet). WATCH makes the check and the write one atomic step; a difference
    raises PositionMismatch and writes nothing.
    """
    if not records:
        raise ValueError("empty batch")
    sets: dict[str, str] = {}
    deletes: set[str] = set()
    skipped = 0
    for rec in records:
        try:
            record = link_record_decode(rec.key, rec.value)
        except MessageError as exc:
            skipped += 1
            logger.warning(
                "skipping malformed record topic=%s partition=%s offset=%s: %s",
                rec.topic, rec.partition, rec.offset, exc,
            )
            continue
        key = keys.link_key(rec.key.decode())  # type: ignore[union-attr]  # checked by decode
        if record is None or record["state"] == "disabled":  # removed or taken down
            sets.pop(key, None)
            deletes.add(key)
        else:
            deletes.discard(key)
            sets[key] = record["longurl"]
    next_offset = records[-1].offset + 1
    positions_key = keys.links_positions_key()
    stats_key = keys.links_stats_key()

    with redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(positions_key)
            raw = pipe.hget(positions_key, partition)
            stored = int(raw) if raw is not None else None
            if stored != expected_position:
                raise PositionMismatch(partition, expected_position, stored)
            pipe.multi()
            if sets:
                pipe.mset(sets)
            if deletes:
                pipe.delete(*deletes)
            if sets:
                pipe.hincrby(stats_key, "applied", len(sets))
            if deletes:
                pipe.hincrby(stats_key, "removed", len(deletes))
            if skipped:
                pipe.hincrby(stats_key, "skipped", skipped)
            pipe.hset(positions_key, partition, next_offset)
            pipe.execute()
        except WatchError:
            raw = redis.hget(positions_key, partition)
            raise PositionMismatch(
                partition, expected_position, int(raw) if raw is not None else None
            ) from None
    return BatchResult(
        applied=len(sets), removed=len(deletes), skipped=skipped, next_offset=next_offset
    )
